"""`vitedge build --merge`: the demo checkpoint built merged (r 2) on ONNX Runtime and
OpenVINO, FP32 and INT8. References made here, not by the build: the checkpoint exported
merged and unmerged by `vitedge export` and run by a plain ONNX Runtime session on the
images the build held out. The FP32 artifacts compute the merged export (tight bound); the
INT8 ones were calibrated and quantized from the merged graph; the build's recorded
agreement with the unmerged FP32 model is what those sessions give; an ONNX input whose
merging --merge contradicts, or that cannot be merged, is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, relative_error, run_cli
from vitedge.backends import load_runner
from vitedge.datasets import ImageSource, image_source, model_inputs, split_source
from vitedge.export import ExportOptions, export_onnx
from vitedge.fileio import sha256_file
from vitedge.manifest import manifest_from_file

HELD, CALIBRATE = 64, 64
"""Images of --data held out to verify on, and calibrated on."""
FP32_TOL = 1e-4
"""An FP32 artifact (computing in FP32: `float_parts`) against the merged export."""
SUFFIX = {"onnxruntime": ".ort.onnx", "openvino": ".ov.xml"}
BUILDS = [("onnxruntime", "fp32"), ("openvino", "fp32"), ("onnxruntime", "int8"),
          ("openvino", "int8")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint, and beside it an unmerged export the user made (`fm.onnx`), which a
    merged build must leave as it is."""
    pytest.importorskip("openvino")
    out = tmp_path_factory.mktemp("build-merge")
    shutil.copy(DEMO_CHECKPOINT, out / "fm.safetensors")
    export_onnx(out / "fm.safetensors", out / "fm.onnx", ExportOptions())
    return out


@pytest.fixture(scope="module")
def builds(folder: Path) -> dict[tuple[str, str], dict]:
    """Each build's result as `--json` prints it, and the user's fm.onnx's sha256 before."""
    from vitedge.deploy import BuildOptions, CalibrationOptions, VerifyOptions, build

    made: dict = {"user_sha": sha256_file(folder / "fm.onnx")}
    for backend, precision in BUILDS:
        result = build(folder / "fm.safetensors", None, BuildOptions(
            precision=precision, backend=backend, data=str(DEMO_CALIBRATION), merge=2,
            calibration=CalibrationOptions(num_images=CALIBRATE),
            verify=VerifyOptions(images=HELD)))
        made[backend, precision] = json.loads(json.dumps(result.to_dict(), default=str))
    return made


@pytest.fixture(scope="module")
def references(folder: Path, demo_fp32: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, np.ndarray]:
    """The held-out images, and on them the merged and the unmerged export (the session's) in
    ONNX Runtime."""
    out = tmp_path_factory.mktemp("references")
    merged, plain = out / "merged.onnx", demo_fp32
    export_onnx(DEMO_CHECKPOINT, merged, ExportOptions(merge=2))
    found: dict[str, np.ndarray] = {}
    for precision in ("fp32", "int8"):
        x = np.stack(list(model_inputs(held_out(precision), manifest_from_file(merged))))
        found[f"x {precision}"] = x
        for name, p in (("merged", merged), ("unmerged", plain)):
            found[f"{name} {precision}"] = ort.InferenceSession(str(p)).run(
                None, {"images": x})[0]
    return found


def held_out(precision: str) -> ImageSource:
    """The images of --data a build verifies on: held out of calibration (INT8), or a
    sample of --data where nothing is calibrated (FP32)."""
    if precision == "fp32":
        return image_source(DEMO_CALIBRATION, HELD)
    _, held = split_source(DEMO_CALIBRATION, HELD, CALIBRATE)
    assert held is not None
    return held


def artifact(folder: Path, backend: str, precision: str) -> Path:
    return folder / f"fm.merge2.{precision}{SUFFIX[backend]}"


@pytest.mark.parametrize("backend, precision", BUILDS)
def test_the_artifact_computes_the_merged_export_and_records_the_unmerged_agreement(
        backend, precision, folder, builds, references):
    result = builds[backend, precision]
    path = artifact(folder, backend, precision)
    assert result["output"] == str(path) and path.is_file()
    assert result["merge"]["schedule"] == [2] * 6
    assert result["merge"]["tokens_per_block"] == [50, 48, 46, 44, 42, 40, 38]
    x = references[f"x {precision}"]
    merged_ref, unmerged_ref = references[f"merged {precision}"], references[f"unmerged {precision}"]
    with load_runner(path) as runner:
        assert runner.manifest.architecture.merge == (2,) * 6
        got = runner.infer(x)  # one batch, as the build's verification runs it
        floats = runner.float_parts
    if precision == "fp32":
        assert floats in (None, "fp32")  # computes in FP32: the tight bound applies
        assert relative_error(merged_ref, got) < FP32_TOL
    else:  # calibrated and quantized from the merged export, never from an unmerged one
        merged_sha = sha256_file(folder / "fm.merge2.onnx")
        qdq = manifest_from_file(folder / "fm.merge2.int8.onnx")
        assert qdq.source["fp32_sha256"] == merged_sha and qdq.architecture.merge == (2,) * 6
        table = json.loads((folder / "fm.merge2.calib.json").read_text())
        assert merged_sha in json.dumps(table)
        assert np.mean(merged_ref.argmax(-1) == got.argmax(-1)) >= 0.95

    v = result["verification"]
    recorded = v["vs_unmerged_fp32"]
    assert v["images"] == len(x) and v["unmerged_fp32_missing"] is None
    assert v["data"].startswith(f"{HELD} held-out images")
    assert recorded["top1_agreement"] == pytest.approx(
        float(np.mean(unmerged_ref.argmax(-1) == got.argmax(-1))), abs=1e-12)
    a, b = unmerged_ref, got
    cosine = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert recorded["cosine"] == pytest.approx(float(cosine.mean()), abs=1e-5)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_artifact_records_the_schedule_and_inspect_shows_it(backend, folder, builds,
                                                                capsys):
    builds[backend, "int8"]  # noqa: B018 (built)
    path = artifact(folder, backend, "int8")
    code, out, _ = run_cli(["inspect", str(path), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["tokens"]["merge"] == [2] * 6 and data["tokens"]["per_block"][-1] == 38
    record = data.get("verification") or data["manifest"]["source"]["verification"]
    assert record["vs_unmerged_fp32"] == builds[backend, "int8"]["verification"][
        "vs_unmerged_fp32"]
    code, out, _ = run_cli(["inspect", str(path)], capsys)
    text = " ".join(out.split())
    assert code == 0 and "tokens per block 50 48 46 44 42 40 38" in text
    assert "vs the unmerged FP32 model" in text


def test_the_merged_export_goes_beside_the_unmerged_one(folder, builds):
    assert sha256_file(folder / "fm.onnx") == builds["user_sha"]
    assert not manifest_from_file(folder / "fm.onnx").architecture.merge
    assert manifest_from_file(folder / "fm.merge2.onnx").architecture.merge == (2,) * 6


def test_a_merged_onnx_input_builds_and_a_contradicting_merge_is_refused(folder, builds,
                                                                         capsys):
    merged = folder / "fm.merge2.onnx"
    code, _, err = run_cli(["build", str(merged), "--merge", "3", "--precision", "fp32",
                            "--backend", "onnxruntime"], capsys)
    assert code != 0 and "merged with r 2,2,2,2,2,2" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["build", str(folder / "fm.onnx"), "--merge", "2", "--precision",
                            "fp32", "--backend", "onnxruntime"], capsys)
    assert code != 0 and "unmerged graph" in err and "build the checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["build", str(merged), "--merge", "auto", "--data",
                            str(DEMO_CALIBRATION), "--precision", "fp32"], capsys)
    assert code != 0 and "--merge auto chooses a schedule at export" in err
    assert len(err.strip().splitlines()) == 1


def test_a_merge_that_loses_the_model_fails_the_build(folder, builds, capsys):
    """The unmerged comparison is judged: below --min-fp32-agreement nothing is written."""
    code, _, err = run_cli(["build", str(folder / "fm.safetensors"), "--merge", "9",
                            "--precision", "fp32", "--backend", "onnxruntime", "--data",
                            str(DEMO_CALIBRATION), "--verify-images", str(HELD),
                            "--min-fp32-agreement", "0.99"], capsys)
    assert code != 0 and "Traceback" not in err
    assert "agrees with the unmerged FP32 model" in err and "token merging collapsed" in err
    assert not (folder / "fm.merge9.fp32.ort.onnx").exists()


def test_without_its_checkpoint_the_unmerged_comparison_says_why(folder, builds, tmp_path,
                                                                 capsys):
    """A merged ONNX alone: built and verified against its own graph, and one line says
    the unmerged FP32 model could not be had; with its checkpoint beside it, measured."""
    alone = tmp_path / "fm.merge2.onnx"
    shutil.copy(folder / "fm.merge2.onnx", alone)
    args = ["--merge", "2", "--precision", "fp32", "--backend", "onnxruntime", "--data",
            str(DEMO_CALIBRATION), "--verify-images", "32"]
    code, out, err = run_cli(["build", str(alone), *args, "--json"], capsys)
    assert code == 0, err
    v = json.loads(out)["verification"]
    assert v["vs_unmerged_fp32"] is None
    assert "fm.safetensors, which is not beside it" in v["unmerged_fp32_missing"]
    code, out, _ = run_cli(["build", str(alone), *args], capsys)
    assert code == 0 and "not measured against the unmerged FP32 model" in out

    shutil.copy(DEMO_CHECKPOINT, tmp_path / "fm.safetensors")
    code, out, err = run_cli(["build", str(alone), *args, "--json"], capsys)
    assert code == 0, err
    v = json.loads(out)["verification"]
    assert v["vs_unmerged_fp32"]["images"] == 32 and v["unmerged_fp32_missing"] is None


def test_merge_auto_times_the_schedules_with_the_builds_backend(folder, tmp_path, capsys):
    """--merge auto in a build: every schedule within the budget is built and run by the
    build's own backend (OpenVINO here), not ONNX Runtime; the choice is recorded."""
    from vitedge.backends.openvino.backend import OpenVINOBackend

    shutil.copy(DEMO_CHECKPOINT, tmp_path / "fm.safetensors")
    judge = tmp_path / "judge"  # 32 images to judge the schedules on (a quick choice)
    judge.mkdir()
    for image in image_source(DEMO_CALIBRATION, 32, seed=5).items:
        shutil.copy(image, judge / f"{len(list(judge.iterdir()))}{Path(image).suffix}")
    built: list[Path] = []
    real = OpenVINOBackend.build

    def build_auto(*extra: str) -> tuple[int, str, str]:
        """The build, each OpenVINO build it makes recorded in `built`."""
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(OpenVINOBackend, "build",
                          lambda self, request, path: built.append(request.model) or
                          real(self, request, path))
            return run_cli(["build", str(tmp_path / "fm.safetensors"), "--merge", "auto",
                            "--merge-max-drop", "10", "--precision", "fp32", "--backend",
                            "openvino", "--data", str(DEMO_CALIBRATION), "--merge-data",
                            str(judge), "--verify-images", "32", *extra, "--json"], capsys)

    code, out, err = build_auto()
    assert code == 0, err
    result = json.loads(out)
    choice = result["merge"]["auto"]
    timed = [c for c in choice["candidates"] if c["ms"] is not None]
    assert len(timed) >= 2 and choice["timed_on"].startswith("OpenVINO")  # unmerged and r
    assert len(built) == len(timed) + 1  # each timed schedule (and the unmerged one), then the artifact
    export = manifest_from_file(tmp_path / "fm.merge-auto.onnx")
    assert list(export.architecture.merge) == choice["schedule"]
    assert result["merge"]["schedule"] == choice["schedule"]
    assert all(c["within"] for c in timed) and choice["images"] == 32
    assert choice["measure"] == "top-1 agreement %"  # the images carry no labels
    assert all(c["within"] == (100 - c["agreement"] <= 10) for c in choice["candidates"])

    # built again (another artifact name): the export chosen and timed the same way is
    # reused, nothing is re-timed
    code, out, err = build_auto("-o", str(tmp_path / "again.ov.xml"))
    assert code == 0, err
    assert len(built) == len(timed) + 2  # only the artifact was built again
    assert any("reused: its --merge auto schedule" in n for n in json.loads(out)["notes"])


def test_an_embedding_models_build_is_compared_with_the_unmerged_one_by_cosine(tmp_path,
                                                                               capsys):
    """A SigLIP image tower (no head, attention pooling) from its folder, merged: the
    recorded comparison with the unmerged FP32 model is the embeddings' cosine, as the
    two exports give it in ONNX Runtime."""
    from tests.conftest import FIXTURES
    from vitedge.export.verify import photo_files
    from vitedge.runtime.preprocess import load_image, model_input

    shutil.copytree(FIXTURES / "siglip", tmp_path / "siglip")
    code, out, err = run_cli(["build", str(tmp_path / "siglip"), "--merge", "4", "--precision",
                              "fp32", "--backend", "onnxruntime", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["output"] == str(tmp_path / "siglip.merge4.fp32.ort.onnx")
    v = result["verification"]
    assert not v["classifier"] and v["unmerged_fp32_missing"] is None

    plain = tmp_path / "plain.onnx"
    export_onnx(FIXTURES / "siglip", plain, ExportOptions())
    manifest = manifest_from_file(plain)
    x = np.stack([model_input(load_image(str(p)), manifest) for p in photo_files()])
    a = ort.InferenceSession(str(plain)).run(None, {"images": x})[0]
    with load_runner(result["output"]) as runner:
        b = runner.infer(x)
    cosine = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert v["vs_unmerged_fp32"]["cosine"] == pytest.approx(float(cosine.mean()), abs=1e-6)
    assert v["vs_unmerged_fp32"]["cosine_min"] == pytest.approx(float(cosine.min()), abs=1e-6)
    assert cosine.min() < 0.999  # merging changed the embedding


def test_an_onnx_input_of_frames_is_compared_with_an_unmerged_export_of_frames(tmp_path,
                                                                                 capsys):
    """The unmerged twin of a merged ONNX input repeats its recorded export options (here
    --input frames) and goes beside it under its own name; options a build cannot repeat
    (a labels file, recorded by name only) are said in one line."""
    shutil.copy(DEMO_CHECKPOINT, tmp_path / "fm.safetensors")
    frames = tmp_path / "frames.onnx"
    export_onnx(tmp_path / "fm.safetensors", frames, ExportOptions(merge=2, input_kind="frames"))
    args = ["--precision", "fp32", "--backend", "onnxruntime", "--data", str(DEMO_CALIBRATION),
            "--verify-images", "32", "--json"]
    code, out, err = run_cli(["build", str(frames), *args], capsys)
    assert code == 0, err
    assert json.loads(out)["verification"]["vs_unmerged_fp32"]["images"] == 32
    twin = manifest_from_file(tmp_path / "fm.unmerged.onnx")
    assert twin.input == "frames" and not twin.architecture.merge

    (tmp_path / "labels.txt").write_text("".join(f"class {i}\n" for i in range(10)))
    labelled = tmp_path / "labelled.onnx"
    export_onnx(tmp_path / "fm.safetensors", labelled,
                ExportOptions(merge=2, labels=tmp_path / "labels.txt"))
    code, out, err = run_cli(["build", str(labelled), *args], capsys)
    assert code == 0, err
    assert "a build does not repeat (labels)" in json.loads(out)["verification"][
        "unmerged_fp32_missing"]
