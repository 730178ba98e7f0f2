"""What the second new user tripped on (issue 31): the CLI's small promises, each checked
as the user met it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DEMO_CHECKPOINT, DEMO_TEST_IMAGES, run_cli

IMAGES = sorted(DEMO_TEST_IMAGES.glob("*/*.png"))[:2]


def test_export_refuses_an_engine_name_as_build_does(tmp_path, capsys):
    for name, hint in (("out.engine", "name it out.onnx; `vitedge build out.onnx` makes the "
                                      ".engine"),
                       ("out.ov.xml", "name it out.onnx; `vitedge build out.onnx` makes the "
                                      ".ov.xml")):
        out = tmp_path / name
        code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(out)], capsys)
        assert code == 1
        assert err.strip().splitlines() == [f"error: -o {name} names a "
                                            f"{'tensorrt or tensorrt-rtx' if 'engine' in name else 'openvino'} "
                                            f"artifact ({out.suffix if 'engine' in name else '.ov.xml'}), "
                                            f"but export writes an ONNX model ({hint})"]
        assert not list(tmp_path.iterdir())


def test_explain_skips_a_corrupt_image_and_names_it(demo_fp32, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, src in enumerate(IMAGES):
        shutil.copy(src, images / f"good{i}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "ex"
    code, stdout, err = run_cli(["explain", str(demo_fp32), str(images), "-o", str(out), "--json"],
                                capsys)
    assert code == 0, err
    result = json.loads(stdout)
    assert [s["image"] for s in result["skipped"]] == [str(images / "broken.png")]
    assert sorted(p.name for p in out.glob("*.png")) == ["good0.cls.png", "good1.cls.png"]
    assert f"warning: skipped {images / 'broken.png'}: " in err


def hf_vit_folder(tmp_path: Path, labels: list[str]) -> tuple[Path, Any, Any]:
    """A small Hugging Face ViT classifier saved as a folder (config.json with id2label,
    model.safetensors), random weights; the transformers module and the model's config."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=96, image_size=32, patch_size=8,
                                    num_labels=len(labels), id2label=dict(enumerate(labels)))
    folder = tmp_path / "hf_vit"
    transformers.ViTForImageClassification(config).eval().save_pretrained(folder)
    return folder, transformers, config


def test_export_of_the_weights_file_in_a_hugging_face_folder_reads_its_config(tmp_path, capsys):
    labels = ["cat", "dog", "owl"]
    folder, transformers, config = hf_vit_folder(tmp_path, labels)
    out = tmp_path / "m.onnx"
    code, _, err = run_cli(["export", str(folder / "model.safetensors"), "-o", str(out), "--json"],
                           capsys)
    assert code == 0, err
    from vitedge.manifest import manifest_from_file

    manifest = manifest_from_file(out)
    assert manifest.labels == labels and manifest.architecture.num_heads == 4
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(folder / "model.safetensors", alone / "weights.safetensors")
    code, _, err = run_cli(["export", str(alone / "weights.safetensors"), "-o",
                            str(tmp_path / "n.onnx")], capsys)
    assert code == 1
    assert "config.json" in err and "--arch" not in err and "vit_" not in err, err


def _options(command):
    import click

    return [p for p in command.params if isinstance(p, click.Option)]


def test_every_flag_of_every_command_has_help():
    from vitedge.cli import cli

    missing = [f"{name} {p.opts[0]}" for name, command in cli.commands.items()
               for p in _options(command) if not (p.help or "").strip()]
    assert missing == []


def test_flag_help_says_what_build_auto_and_each_batch_do():
    from vitedge.cli import cli

    def help_of(command, flag):
        return next(p.help for p in _options(cli.commands[command]) if flag in p.opts)

    assert "measures them here and keeps the fastest" in help_of("build", "--backend")
    assert ".ov.xml" in help_of("build", "-o")
    batches = {name: help_of(name, "--batch") for name, command in cli.commands.items()
               if any("--batch" in p.opts for p in _options(command))}
    meanings = {k: batches[k] for k in ("export", "calibrate", "build", "embed", "run", "bench",
                                        "eval")}
    assert len(set(meanings.values())) == len(meanings), meanings  # each says its own
    assert batches["quantize"] == batches["calibrate"]
    assert "calibration" in batches["calibrate"].lower()
    assert "optimization-profile" in batches["build"]
    assert "exported model's batch dimension" in batches["export"]


def test_click_s_errors_begin_as_vitedge_s_do(capsys):
    code, _, err = run_cli(["build", "x.onnx", "--no-such-flag"], capsys)
    assert code == 2
    assert err.strip().splitlines() == ["error: no such option '--no-such-flag' (`vitedge build "
                                        "--help` lists what it takes)"]
    code, _, err = run_cli(["build", "missing.onnx"], capsys)
    assert code == 1 and err.strip().startswith("error: ")


def test_build_without_precision_says_the_profile_chose_int8(tmp_path, capsys):
    ckpt = tmp_path / "fm.safetensors"
    shutil.copy(DEMO_CHECKPOINT, ckpt)
    code, _, err = run_cli(["build", str(ckpt), "--backend", "onnxruntime"], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        "error: profile cpu builds INT8 when no --precision is given, and that needs activation "
        "ranges from images (give --data IMAGES (or --calib TABLE), or choose --precision fp16 "
        "or fp32)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fm.safetensors"]  # no export first


def test_building_an_int8_model_names_the_artifact_once(demo_fp32, tmp_path, capsys):
    from tests.conftest import DEMO_CALIBRATION

    int8 = tmp_path / "fm.int8.onnx"
    code, _, err = run_cli(["quantize", str(demo_fp32), "--precision", "int8", "--data",
                            str(DEMO_CALIBRATION), "--num-images", "32", "-o", str(int8)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["build", str(int8), "--backend", "onnxruntime"], capsys)
    assert code == 0, err
    assert (tmp_path / "fm.int8.ort.onnx").is_file()
    assert not (tmp_path / "fm.int8.int8.ort.onnx").exists()


def test_calibrate_counts_the_unreadable_image_it_skipped(demo_fp32, tmp_path, capsys):
    from tests.conftest import DEMO_CALIBRATION

    data = tmp_path / "data"
    data.mkdir()
    for f in sorted(DEMO_CALIBRATION.rglob("*.png"))[:9]:
        shutil.copy(f, data / f.name)
    (data / "zz_broken.png").write_bytes(b"not a png")
    code, out, err = run_cli(["calibrate", str(demo_fp32), "--data", str(data), "-o",
                              str(tmp_path / "t.calib.json")], capsys)
    assert code == 0, err
    assert "10 images from folder" in out
    assert "9 of the 10 images read in " in out and ", 1 unreadable skipped" in out


def test_an_image_is_an_image(tmp_path):
    import pytest

    from vitedge.errors import VitedgeError
    from vitedge.inputs import require_regular_file

    with pytest.raises(VitedgeError) as info:
        require_regular_file(tmp_path, "image")
    assert str(info.value) == f"{tmp_path} is a folder, not an image"
    with pytest.raises(VitedgeError) as info:
        require_regular_file(tmp_path, "model file")
    assert str(info.value) == f"{tmp_path} is a folder, not a model file"


def test_build_summary_and_inspect_lead_with_the_same_agreement():
    from vitedge.describe import verification_line
    from vitedge.verification import verification_lines

    a = {"images": 256, "decided": 200, "top1_agreement": 0.9922, "decided_agreement": 1.0,
         "mean_kl": 1e-4, "cosine": 0.999, "cosine_min": 0.99}
    v = {"data": "128 held-out images", "backend": "onnxruntime", "device": "CPU",
         "graph": "fm.int8.onnx", "vs_graph": a, "vs_fp32": a, "vs_tensorrt_graph": None,
         "min_agreement": 0.99, "min_fp32_agreement": 0.98, "judged": True, "classifier": True}
    summary = verification_lines(v)[1]
    assert summary.startswith("  vs fm.int8.onnx: top-1 agreement 99.22% of all inputs (100.00% "
                              "of the 200 decided ones, which is judged, at least 99%)"), summary
    assert "top-1 agreement vs fm.int8.onnx 99.22% of all (100.00% of the 200 decided)" in \
        verification_line(v), verification_line(v)


def test_bench_table_keeps_the_artifact_names_whole_at_150_columns(demo_fp32, tmp_path, capsys,
                                                                   monkeypatch):
    from vitedge.cli import common

    longer = tmp_path / "fashion_mnist_vit.int8.ort.onnx"
    shutil.copy(demo_fp32, longer)
    monkeypatch.setattr(common.out, "width", 150)
    code, out, err = run_cli(["bench", str(longer), str(demo_fp32), "--iterations", "3",
                              "--warmup", "1"], capsys)
    assert code == 0, err
    assert "fashion_mnist_vit.int8.ort.onnx" in out and "fmnist.onnx" in out


def test_the_cpu_profile_and_the_readme_quote_the_same_int8_speed_up():
    import re

    from tests.conftest import ROOT

    notes = (ROOT / "vitedge" / "profiles" / "cpu.toml").read_text()
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    (profile,) = re.findall(r"INT8 artifact vitedge builds (\d\.\d\d)x faster", notes)
    (said,) = re.findall(r"the built INT8 artifact runs (\d\.\d\d)x faster", readme)
    assert profile == said
    newest = results.split("## INT8 on ONNX Runtime CPU")[1].split("### Earlier runs")[0]
    assert f"(vitedge build) | 24.8 MB | 20.8 ms | {said}x |" in newest


def test_the_readme_says_how_to_bring_timm_in_with_the_versions_the_fixtures_use():
    import re

    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    fixture = (ROOT / "tests" / "fixtures" / "make_reference_fixtures.py").read_text()
    torch = re.search(r"(?m)^torch==([\d.]+)", (ROOT / "constraints.txt").read_text()).group(1)
    for pin in re.findall(r"(timm==[\d.]+|torchvision==[\d.]+)", fixture):
        assert pin in readme, pin
    assert "pip install --no-deps timm==" in readme and f"# for torch {torch}" in readme


def test_inspect_a_checkpoint_before_export(tmp_path, capsys):
    labels = ["cat", "dog", "owl"]
    folder, transformers, config = hf_vit_folder(tmp_path, labels)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.1, 0.2, 0.3],
                                   image_std=[0.4, 0.5, 0.6]).save_pretrained(folder)
    code, out, err = run_cli(["inspect", str(folder), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    a, p = info["manifest"]["architecture"], info["manifest"]["preprocess"]
    assert info["format"] == "hf" and info["family"].startswith("Hugging Face ViT")
    assert (a["depth"], a["embed_dim"], a["num_heads"], a["patch_size"], a["img_size"]) == \
        (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
         config.patch_size, [32, 32])
    assert info["manifest"]["labels"] == labels
    assert p["mean"] == pytest.approx([0.1, 0.2, 0.3]) and p["std"] == pytest.approx([0.4, 0.5, 0.6])
    assert info["next"] == f"vitedge export {folder} -o hf_vit.onnx"
    code, out, err = run_cli(["inspect", str(DEMO_CHECKPOINT)], capsys)
    assert code == 0, err
    assert "a checkpoint" in out and "not yet exported" in out and "vitedge export" in out


def test_inspect_of_a_file_that_is_not_onnx_says_so_once(tmp_path, capsys):
    bogus = tmp_path / "x.onnx"
    bogus.write_bytes(DEMO_CHECKPOINT.read_bytes()[:4096])
    code, _, err = run_cli(["inspect", str(bogus)], capsys)
    assert code == 1
    assert err.count("not an ONNX model") == 1, err
