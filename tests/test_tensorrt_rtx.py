"""TensorRT for RTX as a backend, with its real builder and parser, on this machine without
a GPU (CPU-only ahead-of-time builds): FP32 / FP16 / INT8 / INT8 + attention engines of the
demo model, their descriptions, `vitedge inspect`, rebuilds, refusals with the node named,
the backend choice, and the runner's refusal to start without a GPU. Running an engine
needs an RTX GPU: tests/test_tensorrt_gpu.py (marked gpu)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import DEMO_CALIBRATION, run_cli
from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
from vitedge.deploy import BuildOptions, build
from vitedge.errors import VitedgeError
from vitedge.options import QuantizeOptions
from vitedge.target import choose_backend, load_profile

pytest.importorskip("tensorrt_rtx")

CALIBRATION = str(DEMO_CALIBRATION)


@pytest.fixture(scope="module")
def work(demo_fp32, tmp_path_factory):
    d = tmp_path_factory.mktemp("rtx")
    shutil.copy(demo_fp32, d / "m.onnx")
    return d


@pytest.mark.parametrize("precision, attention", [("fp32", False), ("fp16", False),
                                                  ("int8", False), ("int8", True)])
def test_builds_an_engine_for_rtx_gpus_without_a_gpu(work, precision, attention, capsys):
    engine = work / f"m.{precision}{'.attn' if attention else ''}.engine"
    result = build(work / "m.onnx", engine, BuildOptions(
        precision=precision, data=CALIBRATION, backend="tensorrt-rtx", profile="rtx-portable",
        qdq=QuantizeOptions(attention=attention)))
    assert result.backend == "tensorrt-rtx" and engine.is_file()
    assert 500_000 < engine.stat().st_size < 50_000_000  # the demo model's 0.2 M parameters
    info = EngineInfo.read(sidecar_path(engine))
    assert info.backend == "tensorrt-rtx" and info.precision == precision
    assert info.compute_capabilities == ["8.6", "8.9", "12.0"] and info.batch == "1:8:32"
    assert info.tensorrt_version.startswith("1.") and info.runtime["dynamic_shapes"] == "lazy"
    assert info.inputs[0]["name"] == "images" and info.outputs[0]["name"] == "logits"
    assert info.verification["skipped"].startswith("not verified")  # no GPU to run it here
    code, out, err = run_cli(["inspect", str(engine), "--json"], capsys)
    assert code == 0, err
    shown = json.loads(out)["engine"]
    assert shown["engine_sha256"] == info.engine_sha256 and shown["backend"] == "tensorrt-rtx"
    code, out, _ = run_cli(["inspect", str(engine)], capsys)
    assert "TensorRT for RTX" in out and "8.6,8.9,12.0" in out


def test_a_changed_onnx_gives_another_engine(work):
    import onnx

    from vitedge.quantize.equalize import with_outlier_channels

    other = work / "stress.onnx"
    other.write_bytes(with_outlier_channels(onnx.load(str(work / "m.onnx"))).SerializeToString())
    a = build(work / "m.onnx", work / "a.engine", BuildOptions(
        precision="fp32", backend="tensorrt-rtx", profile="rtx-portable"))
    b = build(other, work / "b.engine", BuildOptions(
        precision="fp32", backend="tensorrt-rtx", profile="rtx-portable"))
    ia, ib = (EngineInfo.read(sidecar_path(r.artifact)) for r in (a, b))
    assert ia.onnx_sha256 != ib.onnx_sha256 and ia.engine_sha256 != ib.engine_sha256


def test_a_graph_the_builder_cannot_take_is_refused_naming_the_node(work, tmp_path, capsys):
    ort = build(work / "m.onnx", tmp_path / "m.int8.ort.onnx", BuildOptions(
        precision="int8", data=CALIBRATION, backend="onnxruntime")).artifact  # uint8 zero points
    out = tmp_path / "x.engine"
    code, _, err = run_cli(["build", str(ort), "--precision", "int8", "--backend", "tensorrt-rtx",
                            "--profile", "rtx-portable", "-o", str(out)], capsys)
    assert code == 1 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "TensorRT for RTX's ONNX parser rejected" in err and "node 'images.quantize'" in err
    assert not out.exists() and not sidecar_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if ".vitedge-" in p.name]


def test_auto_picks_it_only_where_a_profile_asks(work):
    assert choose_backend("auto", load_profile("rtx-portable"))[0] == "tensorrt-rtx"
    assert choose_backend("auto", load_profile("cpu"))[0] == "onnxruntime"
    with pytest.raises(VitedgeError, match="desktop-rtx builds for TensorRT"):
        choose_backend("auto", load_profile("desktop-rtx"))  # never TensorRT for RTX by guess


@pytest.mark.parametrize("targets, expected", [(["9.0"], "must be some of"),
                                               (["current"], "needs a GPU")])
def test_bad_targets_are_one_line(work, tmp_path, targets, expected, capsys):
    profile = tmp_path / "p.toml"
    text = Path(load_profile("rtx-portable").path).read_text()
    profile.write_text(text.replace('["8.6", "8.9", "12.0"]', json.dumps(targets)))
    code, _, err = run_cli(["build", str(work / "m.onnx"), "--precision", "fp32", "--profile",
                            str(profile), "-o", str(tmp_path / "x.engine")], capsys)
    assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, err


def test_the_runner_needs_a_gpu_and_says_so(work):
    from vitedge.backends import load_runner

    engine = work / "m.fp32.engine"
    if not engine.exists():
        build(work / "m.onnx", engine, BuildOptions(precision="fp32", backend="tensorrt-rtx",
                                                    profile="rtx-portable"))
    with pytest.raises(VitedgeError, match="no CUDA GPU"):
        load_runner(engine)


def test_doctor_reports_tensorrt_rtx(capsys):
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    rtx = next(c for c in json.loads(out)["checks"] if c["name"] == "tensorrt-rtx")
    assert rtx["ok"] and "TensorRT for RTX 1." in rtx["detail"]


def _rtx_gpu() -> bool:
    from vitedge.backends.tensorrt.device import gpu_info

    gpu = gpu_info()
    return gpu is not None and gpu[1] in ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


@pytest.mark.gpu
@pytest.mark.skipif(not _rtx_gpu(), reason="needs an RTX GPU TensorRT for RTX supports (not Hopper)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_an_engine_built_for_this_gpu_matches_onnxruntime(work, demo_images, precision):
    """On an RTX GPU: build for `current` (verified by the build, on this GPU, against ONNX
    Runtime on the same graph), run it through vitedge.open, keep the runtime cache."""
    from vitedge.backends import load_runner
    from vitedge.backends.tensorrt_rtx.runner import runtime_cache_path
    from vitedge.compare import agreement

    profile = work / "current.toml"
    profile.write_text(Path(load_profile("rtx-portable").path).read_text().replace(
        '["8.6", "8.9", "12.0"]', '["current"]'))
    engine = work / f"m.current.{precision}.engine"
    result = build(work / "m.onnx", engine, BuildOptions(
        precision=precision, data=CALIBRATION, backend="tensorrt-rtx", profile=str(profile)))
    v = result.verification
    assert v["backend"] == "tensorrt-rtx" and v["vs_graph"]["top1_agreement"] >= 0.99
    with load_runner(engine) as runner, load_runner(work / "m.onnx") as reference:
        out = runner.infer(demo_images)
        assert agreement(reference.infer(demo_images), out).top1_agreement >= 0.98
    assert runtime_cache_path(engine).is_file()  # the JIT-compiled kernels kept
