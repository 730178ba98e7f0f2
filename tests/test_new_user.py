"""What a new user tripped on, reading the README top to bottom and trying each command
(issue 26): each case fails on the code before the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO_CALIBRATION, DEMO_TEST_IMAGES, ROOT, run_cli
from vitedge.errors import VitedgeError

PHOTOS = ROOT / "vitedge" / "data" / "photos"  # four photographs: fewer than a calibration batch
IMAGE = DEMO_TEST_IMAGES / "sneaker" / "test-00036.png"


@pytest.fixture
def fm(demo_fp32, tmp_path) -> Path:
    model = tmp_path / "fm.onnx"
    shutil.copy(demo_fp32, model)
    return model


# 1. a profile or -o that names a GPU backend never falls back to another ---------------------

def test_a_gpu_profile_with_an_engine_name_is_refused_and_writes_nothing(fm, tmp_path, capsys):
    table = tmp_path / "fm.calib.json"
    assert run_cli(["calibrate", str(fm), "--data", str(DEMO_CALIBRATION), "--num-images", "64",
                    "-o", str(table)], capsys)[0] == 0
    out = tmp_path / "drtx" / "fm.engine"
    code, _, err = run_cli(["build", str(fm), "--profile", "desktop-rtx", "--calib", str(table),
                            "-o", str(out)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "profile desktop-rtx builds for TensorRT, which cannot build here" in err
    assert "profiles that build on this machine" in err and "rtx-portable" in err
    assert not out.exists() and not (tmp_path / "fm.int8.onnx").exists()


def test_an_engine_name_for_an_onnx_runtime_build_is_refused(fm, tmp_path, capsys):
    out = tmp_path / "fm.engine"
    code, _, err = run_cli(["build", str(fm), "--precision", "fp32", "--profile", "cpu",
                            "-o", str(out)], capsys)
    assert code == 1 and "-o fm.engine names a tensorrt or tensorrt-rtx artifact" in err, err
    assert "name it fm.ort.onnx" in err and "--backend tensorrt-rtx builds it here" in err
    assert not out.exists()


def test_profiles_say_what_each_builds_for(capsys):
    code, out, _ = run_cli(["profiles", "desktop-rtx"], capsys)
    assert code == 0 and "tensorrt / int8" in out
    code, out, _ = run_cli(["profiles", "rtx-portable"], capsys)
    assert "tensorrt-rtx" in out and "compute capabilities 8.6, 8.9, 12.0" in out
    assert "DLA off" not in out and "hardware compatibility none" not in out  # TensorRT's only


# 2. intermediates never replace the user's files ----------------------------------------------

def test_build_never_replaces_the_users_table_cache_or_quantized_model(fm, tmp_path, capsys):
    mine = {}
    assert run_cli(["calibrate", str(fm), "--data", str(DEMO_CALIBRATION), "--num-images",
                    "256"], capsys)[0] == 0  # other than the build's (the same is reused)
    assert run_cli(["quantize", str(fm), "--precision", "int8", "--calib",
                    str(tmp_path / "fm.calib.json"), "-o", str(tmp_path / "fm.int8.onnx")],
                   capsys)[0] == 0
    for name in ("fm.calib.json", "fm.trt-calib.cache", "fm.int8.onnx"):
        mine[name] = (tmp_path / name).read_bytes()
    code, out, err = run_cli(["build", str(fm), "--data", str(DEMO_CALIBRATION), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    for name, data in mine.items():
        assert (tmp_path / name).read_bytes() == data, f"{name} was replaced"
    written = [Path(p).name for p in result["intermediate"]]
    assert len(written) == 3 and all(p.startswith("fm.") for p in written), written
    assert all((tmp_path / p).is_file() for p in written)
    assert {p for p in written if p.endswith(".cache")}  # the TensorRT cache is listed too
    code, out, _ = run_cli(["build", str(fm), "--data", str(DEMO_CALIBRATION), "--json"], capsys)
    again = json.loads(out)
    assert again["intermediate"] == [] and sorted(again["reused"]) == sorted(result["intermediate"])
    assert "quantize" not in again["steps"]  # the quantized model it made is reused as it is


# 3. the API takes a list of frames -------------------------------------------------------------

def test_batches_take_a_list_of_frames_and_refuse_one_frame_as_a_batch(fm):
    import vitedge

    frame = np.random.default_rng(0).integers(0, 256, (213, 320, 3), dtype=np.uint8)
    with vitedge.open(fm) as pipe:
        assert [len(b) for b in pipe.batches([frame, frame])] == [1, 1]
        assert [len(b) for b in pipe.batches([[frame, frame], [frame]])] == [2, 1]
        assert len(pipe.batch(np.stack([frame, frame]))) == 2
        with pytest.raises(VitedgeError, match="not one frame of shape"):
            pipe.batch(frame)
        with pytest.raises(VitedgeError, match="neither one frame"):
            list(pipe.batches([np.zeros((2, 3, 4, 5, 6), np.uint8)]))


# 4, 8. few images, a table given: --batch is the engine's, verification uses all of --data ----

def test_a_few_images_calibrate_and_verify(fm, tmp_path, capsys):
    code, out, err = run_cli(["build", str(fm), "--precision", "int8", "--data", str(PHOTOS),
                              "--json"], capsys)
    assert code == 0, err  # four photos: fewer than the calibration batch of 8, still fine
    table = tmp_path / "t.json"
    assert run_cli(["calibrate", str(fm), "--data", str(DEMO_CALIBRATION), "--num-images", "64",
                    "-o", str(table)], capsys)[0] == 0
    code, out, err = run_cli(["build", str(fm), "--precision", "int8", "--calib", str(table),
                              "--data", str(PHOTOS), "-o", str(tmp_path / "b.ort.onnx"),
                              "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    v = result["verification"]
    assert v["images"] == 4  # --calib given: all of --data verifies, not a quarter of it
    # INT8 against FP32: changed (KL above 0: not FP32 compared with itself), not collapsed
    assert 0.0 < v["vs_fp32"]["mean_kl"] < 0.05, v["vs_fp32"]
    note = next(n for n in result["notes"] if "too few to judge" in n)
    assert "give --data with more images" in note


# 5. --backend tensorrt-rtx brings its own profile; the skip says why --------------------------

def test_the_rtx_backend_without_a_profile_uses_its_own(fm, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx")
    code, out, err = run_cli(["build", str(fm), "--precision", "fp16", "--backend",
                              "tensorrt-rtx", "-o", str(tmp_path / "fm.engine")], capsys)
    assert code == 0, err
    assert "profile rtx-portable" in out and "--no-verify" not in out + err
    assert "runs only on a GPU and this machine has none" in err
    code, out, _ = run_cli(["build", str(fm), "--precision", "fp16", "--backend",
                            "tensorrt-rtx", "-o", str(tmp_path / "fm2.engine"), "--json"], capsys)
    assert json.loads(out)["verification"]["skipped"].startswith("not verified: the tensorrt-rtx")


# 6. quantize with a table and no --data says what it compared, or that it did not ------------

def test_quantize_without_data_checks_on_the_tables_data_or_says_it_did_not(fm, tmp_path,
                                                                            capsys):
    data = tmp_path / "calib"
    shutil.copytree(DEMO_CALIBRATION / "sneaker", data / "sneaker")
    shutil.copytree(DEMO_CALIBRATION / "bag", data / "bag")
    table = tmp_path / "t.json"
    assert run_cli(["calibrate", str(fm), "--data", str(data), "-o", str(table)], capsys)[0] == 0
    code, out, err = run_cli(["quantize", str(fm), "--precision", "int8", "--calib", str(table),
                              "-o", str(tmp_path / "q.onnx"), "--json"], capsys)
    result = json.loads(out)
    assert code == 0 and result["check"] is not None and result["check_images"] > 0
    assert "the calibration table was made from (not held out" in result["check_data"]
    shutil.rmtree(data)
    code, out, err = run_cli(["quantize", str(fm), "--precision", "int8", "--calib", str(table),
                              "-o", str(tmp_path / "q2.onnx")], capsys)
    assert code == 0 and "not compared with FP32: no --data" in err and str(data) in err


# 7. one JSON shape: the same key for the same thing -----------------------------------------

def test_calibrate_json_says_what_its_text_says(fm, tmp_path, capsys):
    args = ["calibrate", str(fm), "--data", str(DEMO_CALIBRATION), "--num-images", "64"]
    code, text, _ = run_cli(args, capsys)
    code, out, _ = run_cli([*args, "--json"], capsys)
    result = json.loads(out)
    assert f"{result['equalized_inputs']} equalised Linear inputs" in text
    assert result["reused"] and result["stats"] is None and result["seconds"] < 5
    assert result["output"].endswith("fm.calib.json")


def test_bench_json_prints_like_every_command(fm, capsys):
    code, out, err = run_cli(["bench", str(fm), "--iterations", "2", "--warmup", "0", "--json"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["results"][0]["artifact"] == str(fm)


# 9. the advice for embeddings can be followed --------------------------------------------------

def test_a_classifier_exports_without_its_head_for_embeddings(tmp_path, capsys):
    from tests.conftest import DEMO_CHECKPOINT

    code, _, err = run_cli(["embed", str(tmp_path / "none.onnx"), str(IMAGE), "-o",
                            str(tmp_path / "g.npy")], capsys)
    features = tmp_path / "features.onnx"
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "--no-head", "-o", str(features)],
                           capsys)
    assert code == 0 and "64-float features" in err, err
    code, _, err = run_cli(["embed", str(features), str(DEMO_TEST_IMAGES / "bag"), "-o",
                            str(tmp_path / "g.npy")], capsys)
    assert code == 0, err
    assert np.load(tmp_path / "g.npy").shape[1] == 64


def test_embedding_a_classifier_says_how_to_export_one_without_its_head(fm, tmp_path, capsys):
    code, _, err = run_cli(["embed", str(fm), str(IMAGE), "-o", str(tmp_path / "g.npy")], capsys)
    assert code == 1 and "vitedge export CHECKPOINT --no-head" in err


# 10. the README and the code agree --------------------------------------------------------------

def test_a_grayscale_export_is_verified_on_the_photos_too(tmp_path, capsys):
    from tests.conftest import DEMO_CHECKPOINT

    code, out, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(tmp_path / "m.onnx"),
                              "--json"], capsys)
    cases = {c["case"] for c in json.loads(out)["comparisons"]}
    assert cases == {"random", "photos"}


def test_profile_notes_cite_files_that_are_in_the_repository():
    import re

    from vitedge.profiles import available
    from vitedge.target import load_profile

    for name in available():
        for note in load_profile(name).notes:
            assert "shared/notes" not in note, (name, note)
            for path in re.findall(r"((?:docs|benchmarks)/[\w./-]+?)(?:#[\w-]+)?[),;: ]", note + " "):
                assert (ROOT / path).exists(), (name, path)


def test_an_hf_preprocessor_of_another_size_is_said(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, image_size=64, patch_size=16)
    folder = tmp_path / "hf"
    transformers.ViTForImageClassification(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"do_resize": True, "size": {"height": 224, "width": 224}, "image_mean": [0.5] * 3,
         "image_std": [0.5] * 3}))
    code, out, err = run_cli(["export", str(folder), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 0 and "preprocessor_config.json makes 224x224 inputs but the model takes " \
                         "64x64" in err, err


def test_doctor_asks_for_no_cuda_binding_it_does_not_need_and_fixes_only_problems(capsys):
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert all(c["fix"] == "" for c in checks.values() if c["ok"])
    if "not installed" not in checks["cuda-python"]["detail"]:  # cuda-python is here
        assert checks["pycuda"]["ok"] and "not needed" in checks["pycuda"]["detail"]
