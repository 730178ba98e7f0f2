"""A finished artifact is never replaced silently by a build for another target, and an
`-o` name does not change what is measured (issue 31, items 3 and 4b)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_cli
from vitedge.backends import get
from vitedge.deploy import BuildOptions, build
from vitedge.manifest import manifest_from_file


@pytest.fixture()
def model(demo_fp32, tmp_path):
    fm = tmp_path / "fm.onnx"
    shutil.copy(demo_fp32, fm)
    return fm


def test_a_build_for_another_profile_goes_beside_the_artifact_under_the_default_name(model):
    first = build(model, options=BuildOptions(precision="fp32", profile="cpu"))
    assert first.artifact == model.with_name("fm.fp32.ort.onnx")
    kept = first.artifact.read_bytes()
    second = build(model, options=BuildOptions(precision="fp32", profile="jetson-xavier-nx"))
    assert second.artifact == model.with_name("fm.fp32.jetson-xavier-nx.ort.onnx")
    assert first.artifact.read_bytes() == kept
    assert manifest_from_file(second.artifact).source["profile"] == "jetson-xavier-nx"
    assert any("fm.fp32.ort.onnx holds an artifact built for profile cpu (onnxruntime): left "
               "as it is" in n for n in second.notes), second.notes
    again = build(model, options=BuildOptions(precision="fp32", profile="cpu"))
    assert again.artifact == first.artifact  # a rebuild for the same target replaces it


def test_a_build_for_another_profile_refuses_a_name_given_with_o_unless_forced(model, capsys):
    out = model.with_name("mine.ort.onnx")
    build(model, out, BuildOptions(precision="fp32", profile="cpu"))
    kept = out.read_bytes()
    args = ["build", str(model), "--precision", "fp32", "--profile", "jetson-xavier-nx",
            "-o", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"error: {out} holds an artifact built for profile cpu (onnxruntime); this build is for "
        "profile jetson-xavier-nx (onnxruntime) and does not replace it (give another -o, or "
        "add --force to replace it)"]
    assert out.read_bytes() == kept
    code, _, err = run_cli([*args, "--force"], capsys)
    assert code == 0, err
    assert manifest_from_file(out).source["profile"] == "jetson-xavier-nx"


def test_a_file_vitedge_did_not_build_is_not_replaced(model, capsys):
    out = model.with_name("fm.fp32.ort.onnx")
    out.write_text("my notes")
    result = build(model, options=BuildOptions(precision="fp32", profile="cpu"))
    assert out.read_text() == "my notes"
    assert result.artifact == model.with_name("fm.fp32.cpu.ort.onnx")


openvino = pytest.mark.skipif(get("openvino").unavailable() is not None,
                              reason="OpenVINO is not installed")


@openvino
@pytest.mark.parametrize("name", ["m.fp32", "m.onnx"])
def test_an_output_name_does_not_skip_the_measured_choice_of_cpu_backend(model, name):
    result = build(model, model.with_name(name), BuildOptions(precision="fp32"))
    assert set(result.details["measured"]["backends_ms"]) == {"onnxruntime", "openvino"}
    kept = result.details["measured"]["kept"]
    expected = {"onnxruntime": name, "openvino": name.removesuffix(".onnx") + ".ov.xml"}[kept]
    assert result.artifact == model.with_name(expected) and result.artifact.is_file()


@openvino
def test_an_output_suffix_that_names_a_backend_is_the_user_s_choice(model, capsys):
    code, out, err = run_cli(["build", str(model), "--precision", "fp32", "-o",
                              str(model.with_name("m.ov.xml"))], capsys)
    assert code == 0, err
    assert "backend: openvino (-o m.ov.xml names an OpenVINO artifact (.ov.xml): your choice, " \
           "not measured against the other CPU backends)" in out
    assert "  measure " not in out  # no race step


def test_build_reuses_the_users_calibration_of_the_same_data_and_says_what_differs_otherwise(
        model, capsys):
    from tests.conftest import DEMO_CALIBRATION

    data = str(DEMO_CALIBRATION)
    code, _, err = run_cli(["calibrate", str(model), "--data", data], capsys)
    assert code == 0, err
    table = model.with_name("fm.calib.json")
    made = table.read_bytes()
    result = build(model, options=BuildOptions(precision="int8", data=data, backend="onnxruntime"))
    assert any(n.startswith("fm.calib.json reused: `vitedge calibrate` made it from this model, "
                            "the same images of") for n in result.notes), result.notes
    assert "calibrate" not in result.steps and table.read_bytes() == made
    assert sorted(p.name for p in model.parent.glob("*.calib.json")) == ["fm.calib.json"]
    assert result.verification["vs_fp32"]["images"] > 0

    other = model.with_name("other.onnx")
    shutil.copy(model, other)
    code, _, err = run_cli(["calibrate", str(other), "--data", data, "--num-images", "64"], capsys)
    assert code == 0, err
    result = build(other, options=BuildOptions(precision="int8", data=data, backend="onnxruntime"))
    (note,) = [n for n in result.notes if n.startswith("other.calib.json is not what")]
    assert "other options (num_images 64 here 512)" in note
    assert "it was calibrated on 64 images of " in note and "(the others are held out to verify " \
           "on)" in note, note
