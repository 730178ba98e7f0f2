"""The precision table (`vitedge.backends.precisions`): every shipped profile's default
precision is one its targets accelerate; a precision a target cannot run is refused in one
line naming the target and what it runs; a format that builds but is not accelerated is
said; `vitedge profiles` and `doctor` show the table."""

from __future__ import annotations

import json

import pytest

from tests.conftest import DEMO_CALIBRATION, run_cli
from vitedge.backends import get
from vitedge.backends.precisions import (
    TARGETS,
    accelerated,
    check_precision,
    verdict,
)
from vitedge.errors import VitedgeError
from vitedge.precisions import ALL_PRECISIONS
from vitedge.profiles import available
from vitedge.target import load_profile, profiles_running


@pytest.mark.parametrize("name", available())
def test_every_profiles_default_precision_is_accelerated_by_its_targets(name):
    profile = load_profile(name)
    backend = get(profile.backend)
    targets = backend.targets(profile)
    assert targets, f"{name} names no targets"
    column = backend.precision_column(profile)
    for target in targets:
        assert profile.precision in accelerated(column, target), (name, target)


def test_the_table_is_what_nvidia_documents():
    """Spot checks against the sources (docs/sources.md#precisions)."""
    assert "fp8" not in accelerated("tensorrt-10", "8.6")  # Ampere: no FP8
    assert "fp8" in accelerated("tensorrt-10", "8.9") and "nvfp4" not in accelerated(
        "tensorrt-10", "8.9")
    for blackwell in ("10.0", "11.0", "12.0", "12.1"):
        assert {"fp8", "nvfp4"} <= set(accelerated("tensorrt-11", blackwell))
    assert accelerated("tensorrt-rtx", "8.7") == () and accelerated("tensorrt-rtx", "9.0") == ()
    assert "int8" not in accelerated("tensorrt-rtx", "12.0")  # weight-only INT8 only
    assert "int8-wo" in accelerated("tensorrt-rtx", "8.6")
    assert accelerated("onnxruntime", "cpu") == ("fp32", "int8")
    for t in TARGETS:
        assert t.source and set(" ".join(t.runs.values()).split()) <= set(ALL_PRECISIONS)


def test_refusals_name_the_target_and_what_it_runs():
    with pytest.raises(VitedgeError) as info:
        check_precision("tensorrt-rtx", ("8.6", "8.9", "12.0"), "fp8", "profile rtx-portable",
                        profiles_running("fp8"))
    text = str(info.value)
    assert "compute capability 8.6" in text and "it runs fp32, fp16" in text
    assert "desktop-rtx-40" in text and "jetson-thor" in text  # the profiles that do run it
    with pytest.raises(VitedgeError, match="does not support"):
        check_precision("tensorrt-rtx", ("9.0",), "fp16", "profile x")
    notes = check_precision("tensorrt-rtx", ("8.6", "12.0"), "int8", "profile rtx-portable")
    assert len(notes) == 1 and "8.6, 12.0" in notes[0] and "measure it on the GPU" in notes[0]
    assert verdict("tensorrt-10", "8.7", "int8").accelerated


def test_a_cpu_build_refuses_fp8_in_one_line(demo_fp32, tmp_path, capsys):
    code, _, err = run_cli(["build", str(demo_fp32), "--precision", "nvfp4", "--backend",
                            "onnxruntime", "--data", str(DEMO_CALIBRATION), "-o",
                            str(tmp_path / "x.ort.onnx")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "the CPU, which cannot run nvfp4" in err and "it runs fp32, int8" in err
    assert not list(tmp_path.iterdir())


def test_profiles_and_doctor_show_the_table(capsys):
    code, out, _ = run_cli(["profiles", "--targets", "--json"], capsys)
    assert code == 0
    rows = {t["id"]: t for t in json.loads(out)["targets"]}
    assert rows["11.0"]["accelerates"]["tensorrt-10"][-2:] == ["fp8", "nvfp4"]
    code, out, _ = run_cli(["profiles", "jetson-thor"], capsys)
    assert code == 0 and "precisions, 11.0" in out
    code, out, _ = run_cli(["profiles", "jetson-thor", "--json"], capsys)
    assert json.loads(out)["targets"] == ["11.0"] and json.loads(out)["precision"] == "fp8"
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert "fp32" in checks["precisions"]["detail"]
