"""calibrate / quantize / eval from the command line: table reuse, broken images, and bad
inputs ending in one line, exit code 1 and no output file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, run_cli, without_manifest
from vitedge.export import ExportOptions, export_onnx

PHOTOS = Path(__file__).parents[1] / "vitedge" / "data" / "photos"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "vit.onnx"
    export_onnx(FIXTURES / "vit_tiny_hub", out, ExportOptions(verify=False))
    return out


def assert_one_line_failure(code: int, err: str, expected: str, folder: Path) -> None:
    assert code == 1, err
    assert expected in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not list(folder.glob("out*")) and not list(folder.glob(".out*"))


def photos_with_broken(tmp_path: Path, good: int, broken: int) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:good]:
        shutil.copy(p, folder)
    for i in range(broken):
        (folder / f"broken{i}.png").write_bytes(b"not a png at all")
    return folder


def test_calibrate_writes_table_and_cache_then_reuses_them(model, tmp_path, capsys):
    table = tmp_path / "t.calib.json"
    args = ["calibrate", str(model), "--data", str(PHOTOS), "--batch", "2", "-o", str(table), "--json"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["reused"] is False
    stored = json.loads(table.read_text())
    # every Linear input, both attention matmuls' inputs and the residual stream
    assert {"images", "blocks.1.norm2", "blocks.1.mlp.act", "pool", "blocks.0.attn.softmax",
            "blocks.0.attn.v.heads", "blocks.1.residual1"} <= set(stored["tensors"])
    assert Path(first["tensorrt_cache"]).read_text().startswith("TRT-")
    assert stored["model_sha256"] and stored["data"]["fingerprint"] and stored["data"]["count"] == 4
    code, out, _ = run_cli(args, capsys)
    assert json.loads(out)["reused"] is True
    code, out, _ = run_cli([*args[:-1], "--method", "minmax", "--json"], capsys)
    assert json.loads(out)["reused"] is False  # other options: calibrated again


def test_calibrate_skips_a_few_broken_images(model, tmp_path, capsys):
    data = photos_with_broken(tmp_path, good=4, broken=1)
    code, out, err = run_cli(["calibrate", str(model), "--data", str(data), "--batch", "2",
                              "-o", str(tmp_path / "t.json")], capsys)
    assert code == 0, err
    assert "skipped" in err and "broken0.png" in err
    assert json.loads((tmp_path / "t.json").read_text())["stats"]["images"] == 4


def test_calibrate_fails_when_too_many_images_are_broken(model, tmp_path, capsys):
    data = photos_with_broken(tmp_path, good=1, broken=5)
    code, _, err = run_cli(["calibrate", str(model), "--data", str(data), "--batch", "2",
                            "-o", str(tmp_path / "out.json")], capsys)
    assert code == 1
    assert "cannot be read" in err.strip().splitlines()[-1]
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("case, expected", [
    ("empty", "holds no images"),
    ("nomanifest", "has no vitedge manifest"),
    ("missing", "no such file or folder"),
    ("array", "this model takes (3, 224, 224)"),
])
def test_calibrate_bad_inputs(model, tmp_path, capsys, case, expected):
    import numpy as np

    data, target = str(PHOTOS), str(model)
    if case == "empty":
        (tmp_path / "empty").mkdir()
        data = str(tmp_path / "empty")
    elif case == "nomanifest":
        target = without_manifest(model, tmp_path / "plain.onnx")
    elif case == "missing":
        data = str(tmp_path / "nowhere")
    elif case == "array":
        data = str(tmp_path / "x.npy")
        np.save(data, np.zeros((8, 3, 32, 32), np.float32))
    code, _, err = run_cli(["calibrate", target, "--data", data, "--batch", "2",
                            "-o", str(tmp_path / "out.json")], capsys)
    assert_one_line_failure(code, err, expected, tmp_path)


def test_calibrate_accepts_preprocessed_arrays_and_image_lists(model, tmp_path, capsys):
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32))
    (tmp_path / "list.txt").write_text("# photos\n" + "\n".join(str(p) for p in PHOTOS.glob("*.jpg")))
    for data in ("x.npy", "list.txt"):
        code, out, err = run_cli(["calibrate", str(model), "--data", str(tmp_path / data), "--batch",
                                  "2", "-o", str(tmp_path / f"{data}.json"), "--json"], capsys)
        assert code == 0, err
        assert json.loads(out)["data"]["count"] == 4


def test_quantize_refuses_a_table_made_for_another_model(model, tmp_path, capsys):
    table = tmp_path / "t.calib.json"
    assert run_cli(["calibrate", str(model), "--data", str(PHOTOS), "--batch", "2", "-o",
                    str(table)], capsys)[0] == 0
    other = tmp_path / "other.onnx"
    export_onnx(FIXTURES / "vit_tiny_hub", other, ExportOptions(verify=False, batch=1))
    code, _, err = run_cli(["quantize", str(other), "--precision", "int8", "--calib", str(table),
                            "-o", str(tmp_path / "out.onnx")], capsys)
    assert_one_line_failure(code, err, "made for another model", tmp_path)


def test_quantize_bad_inputs(model, tmp_path, capsys):
    code, _, err = run_cli(["quantize", str(model), "--precision", "int8", "-o",
                            str(tmp_path / "out.onnx")], capsys)
    assert_one_line_failure(code, err, "give --calib TABLE or --data SOURCE", tmp_path)
    (tmp_path / "bad.json").write_text("{\"format\": \"something else\"}")
    code, _, err = run_cli(["quantize", str(model), "--precision", "int8", "--calib",
                            str(tmp_path / "bad.json"), "-o", str(tmp_path / "out.onnx")], capsys)
    assert_one_line_failure(code, err, "not a vitedge calibration table", tmp_path)
    code, _, err = run_cli(["quantize", str(model), "--precision", "int8", "--calib",
                            str(tmp_path / "bad.json"), "--sensitivity", "2",
                            "-o", str(tmp_path / "out.onnx")], capsys)
    assert_one_line_failure(code, err, "--sensitivity needs --data", tmp_path)


def test_quantize_refuses_an_already_quantized_model(model, tmp_path, capsys):
    fp16 = tmp_path / "fp16.onnx"
    assert run_cli(["quantize", str(model), "--precision", "fp16", "-o", str(fp16)], capsys)[0] == 0
    code, _, err = run_cli(["quantize", str(fp16), "--precision", "int8", "--data", str(PHOTOS),
                            "-o", str(tmp_path / "out.onnx")], capsys)
    assert_one_line_failure(code, err, "is already fp16", tmp_path)


def test_eval_bad_folders(model, tmp_path, capsys):
    (tmp_path / "data" / "not-a-label").mkdir(parents=True)
    code, _, err = run_cli(["eval", str(model), "--data", str(tmp_path / "data")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "match none of the model's" in err or "has no labels" in err


def test_calibrate_on_frames_spread_over_a_video(model, tmp_path, capsys):
    import cv2
    import numpy as np

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (256, 256))
    for p in sorted(PHOTOS.glob("*.jpg")) * 3:
        frame = cv2.resize(cv2.imread(str(p)), (256, 256))
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    code, out, err = run_cli(["calibrate", str(model), "--data", str(path), "--batch", "2",
                              "--num-images", "6", "-o", str(tmp_path / "v.json"), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["data"]["kind"] == "video" and info["data"]["count"] == 6
    assert info["stats"]["images"] == 6


def test_static_batch_model_calibrates_every_image_once(tmp_path, capsys):
    """A batch-3 export fed 4 images: one full chunk and one padded chunk of which only
    the real image counts, so the ranges equal those of the dynamic-batch model."""
    static, dynamic = tmp_path / "static.onnx", tmp_path / "dynamic.onnx"
    export_onnx(FIXTURES / "vit_tiny_hub", static, ExportOptions(verify=False, batch=3))
    export_onnx(FIXTURES / "vit_tiny_hub", dynamic, ExportOptions(verify=False))
    tables = []
    for m in (static, dynamic):
        out = tmp_path / f"{m.stem}.json"
        code, _, err = run_cli(["calibrate", str(m), "--data", str(PHOTOS), "--batch", "4",
                                "--method", "minmax", "--smooth", "0", "-o", str(out)], capsys)
        assert code == 0, err
        tables.append(json.loads(out.read_text())["tensors"])
    for name, r in tables[1].items():
        assert tables[0][name]["absmax"] == pytest.approx(r["absmax"], rel=1e-5), name
