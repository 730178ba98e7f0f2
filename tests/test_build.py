"""`vitedge build` on this machine (no GPU, no TensorRT builder): ONNX Runtime artifacts
for every precision, from a checkpoint and from ONNX, that load through the one Model
interface and agree with the FP32 export; the TensorRT backend refused with one line."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import (
    DEMO_CALIBRATION,
    DEMO_CHECKPOINT,
    relative_error,
    run_cli,
    without_manifest,
)
from vitedge.backends import load_runner
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.compare import agreement
from vitedge.deploy import BuildOptions, build
from vitedge.errors import VitedgeError

CALIBRATION = str(DEMO_CALIBRATION)
MIN_AGREEMENT = {"fp32": 1.0, "fp16": 0.998, "int8": 0.99}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_onnxruntime_build_from_onnx(demo_fp32, demo_images, tmp_path, precision):
    fp32, images = demo_fp32, demo_images
    result = build(fp32, str(tmp_path / f"m.{precision}.ort.onnx"), BuildOptions(precision=precision, data=CALIBRATION))
    assert result.backend == "onnxruntime" and result.profile == "cpu"
    assert "ONNX Runtime" in result.backend_reason
    assert result.artifact.is_file() and result.size_bytes == result.artifact.stat().st_size
    model = load_runner(result.artifact)
    assert isinstance(model, OnnxRuntimeRunner)
    assert model.manifest.precision == precision
    assert model.manifest.source["backend"] == "onnxruntime"
    fused = result.details["onnxruntime"]["attention_fused"]
    assert fused == (0 if precision == "fp16" else 6)  # MultiHeadAttention runs float32 only
    reference = OnnxRuntimeRunner(fp32).infer(images)
    out = model.infer(images)
    assert agreement(reference, out).top1_agreement >= MIN_AGREEMENT[precision]
    if precision == "fp32":
        assert relative_error(reference, out) < 1e-4


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_from_a_checkpoint_exports_first(tmp_path, precision):
    ckpt = tmp_path / "vit_fmnist.safetensors"
    shutil.copy(DEMO_CHECKPOINT, ckpt)
    default = None if precision == "int8" else precision  # int8 is the cpu profile's default
    result = build(ckpt, options=BuildOptions(precision=default, data=CALIBRATION,
                                              backend="onnxruntime"))
    expected = ["export", "onnxruntime optimize", "verify"]
    if precision != "fp32":
        expected[1:1] = ["calibrate", "quantize"]
    assert list(result.steps) == expected
    assert result.precision == precision
    assert result.artifact == tmp_path / f"vit_fmnist.{precision}.ort.onnx"
    assert load_runner(result.artifact).manifest.precision == precision
    assert (tmp_path / "vit_fmnist.onnx").is_file()
    if precision == "int8":
        assert (tmp_path / "vit_fmnist.calib.json").is_file()
        again = build(ckpt, options=BuildOptions(data=CALIBRATION, backend="onnxruntime"))
        # reuses the calibration table
        assert any("reused" in n for n in again.notes)


def test_a_profile_whose_backend_is_missing_is_refused_not_replaced(demo_fp32, tmp_path):
    """A profile names what to build: where its backend cannot build, one line says what is
    missing and which profiles build here; never another backend's artifact in its place."""
    out = tmp_path / "m.ort.onnx"
    with pytest.raises(VitedgeError) as info:
        build(demo_fp32, str(out), BuildOptions(precision="fp32", profile="desktop-rtx"))
    assert "profile desktop-rtx builds for TensorRT, which cannot build here: TensorRT (with " \
           "its builder) is not installed" in str(info.value)
    assert "profiles that build on this machine: cpu" in str(info.value)
    assert not out.exists()


def test_without_a_profile_this_machine_s_one_or_the_cpu_s(demo_fp32, tmp_path):
    result = build(demo_fp32, str(tmp_path / "m.ort.onnx"), BuildOptions(precision="fp32"))
    assert result.backend == "onnxruntime" and result.profile == "cpu"


def test_cli_build_json(demo_fp32, tmp_path, capsys):
    fp32 = demo_fp32
    code, out, err = run_cli(["build", str(fp32), "--precision", "fp16", "-o",
                              str(tmp_path / "m.ort.onnx"), "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["backend"] == "onnxruntime" and info["precision"] == "fp16"
    assert set(info["steps"]) == {"quantize", "onnxruntime optimize", "verify"}
    assert info["seconds"] > 0  # the steps' times, added up
    assert info["seconds"] == pytest.approx(sum(info["steps"].values()), abs=0.011)


@pytest.mark.parametrize("case, expected", [
    ("tensorrt", "needs TensorRT's Python package with its builder"),
    ("missing", "no such file or folder"),
    ("nomanifest", "has no vitedge manifest"),
    ("unwritable", "cannot write to"),
    ("profile", "did you mean 'jetson-orin-nano'"),
    ("batch", "impossible batch range 8:1:1"),
])
def test_build_bad_inputs(demo_fp32, tmp_path, capsys, case, expected):
    fp32 = demo_fp32
    target, args = str(fp32), []
    out = tmp_path / "out.onnx"
    if case == "tensorrt":
        args = ["--backend", "tensorrt"]
    elif case == "missing":
        target = str(tmp_path / "none.onnx")
    elif case == "nomanifest":
        target = without_manifest(fp32, tmp_path / "plain.onnx")
    elif case == "unwritable":
        (tmp_path / "file").write_text("x")
        out = tmp_path / "file" / "out.onnx"  # a file where a folder should be
    elif case == "profile":
        args = ["--profile", "jetson-orin-nan"]
    elif case == "batch":
        args = ["--batch", "8:1:1"]
    code, _, err = run_cli(["build", target, "--precision", "fp32", "-o", str(out), *args], capsys)
    assert code == 1, err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob(".out.onnx*"))


def test_min_fp32_agreement_reaches_the_quantize_stage_check(demo_fp32, tmp_path, capsys):
    """`build --min-fp32-agreement` is the floor of quantize's collapse check too: a table
    that collapses the model fails the build at the default 0.8, and builds at 0."""
    from tests.conftest import DEMO_CALIBRATION, collapsing_table

    table = collapsing_table(demo_fp32, tmp_path / "t.json")
    args = ["build", str(demo_fp32), "--precision", "int8", "--calib", str(table), "--data",
            str(DEMO_CALIBRATION), "--backend", "onnxruntime", "--min-agreement", "0"]
    code, _, err = run_cli([*args, "-o", str(tmp_path / "a.int8.ort.onnx")], capsys)
    assert code == 1 and "quantization collapsed" in err, err
    assert not (tmp_path / "a.int8.ort.onnx").exists()
    code, out, err = run_cli([*args, "-o", str(tmp_path / "b.int8.ort.onnx"),
                              "--min-fp32-agreement", "0", "--json"], capsys)
    assert code == 0, err
    info = json.loads(out)
    assert info["quantization"]["check"]["top1_agreement"] < 0.8  # what the check let through
    assert info["verification"]["min_fp32_agreement"] == 0
