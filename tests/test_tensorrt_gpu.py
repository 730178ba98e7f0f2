"""TensorRT engines from the demo model, on a machine with an NVIDIA GPU, TensorRT 10+ and
cuda-python (skipped elsewhere, see README "GPU tests"): build FP32 / FP16 / INT8, load,
compare with ONNX Runtime on the same inputs, refuse a changed or foreign engine."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import vitedge
from tests.conftest import DEMO_CALIBRATION, DEMO_TEST_IMAGES
from vitedge.backends import load_runner
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
from vitedge.compare import agreement
from vitedge.deploy import BuildOptions, build
from vitedge.errors import VitedgeError

pytestmark = pytest.mark.gpu

CALIBRATION = str(DEMO_CALIBRATION)
# top-1 agreement with ONNX Runtime running the same (FP32 / FP16 / Q/DQ) graph
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "int8": 0.99}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnxruntime(demo_fp32, demo_images, tmp_path, precision):
    fp32, images = demo_fp32, demo_images
    engine = tmp_path / f"m.{precision}.engine"
    result = build(fp32, str(engine), BuildOptions(precision=precision, data=CALIBRATION, backend="tensorrt",
                                      profile="desktop-rtx", batch="1:8:32",
                                      timing_cache=str(tmp_path / "timing.cache")))
    assert result.backend == "tensorrt" and engine.is_file()
    assert (tmp_path / "timing.cache").is_file()
    info = EngineInfo.read(sidecar_path(engine))
    assert info.precision == precision and info.batch == "1:8:32"
    v = info.verification  # the build's own check: engine vs ONNX Runtime on the same graph
    assert v == result.verification and v["backend"] == "tensorrt" and v["held_out"]
    assert v["vs_graph"]["top1_agreement"] >= MIN_AGREEMENT[precision]
    assert v["images"] == 128
    graph = fp32 if precision == "fp32" else fp32.with_name(f"{fp32.stem}.{precision}.onnx")
    reference = OnnxRuntimeRunner(graph).infer(images)
    model = load_runner(engine)
    out = model.infer(images)
    assert out.shape == reference.shape
    assert agreement(reference, out).top1_agreement >= MIN_AGREEMENT[precision]
    if precision == "fp32":
        assert np.abs(out - reference).max() / np.abs(reference).max() < 1e-2  # TF32 allowed


@pytest.mark.parametrize("precision", ["fp8", "nvfp4"])
def test_fp8_and_nvfp4_engines_match_the_cpu_check(demo_fp32, demo_images, tmp_path, precision):
    """Where the GPU runs the format (FP8: compute capability 8.9+; NVFP4: Blackwell), the
    engine agrees with ONNX Runtime computing the same graph on the CPU."""
    from vitedge.backends.precisions import accelerated
    from vitedge.backends.tensorrt.backend import TensorRTBackend
    from vitedge.emulation import cpu_graph
    from vitedge.machine import gpu_info
    from vitedge.sessions import graph_output
    from vitedge.target import load_profile

    backend, profile = TensorRTBackend(), load_profile("datacenter-gpu")
    gpu = gpu_info()
    assert gpu is not None
    if precision not in accelerated(backend.precision_column(profile), gpu[1]):
        pytest.skip(f"compute capability {gpu[1]} does not run {precision}")
    engine = tmp_path / f"m.{precision}.engine"
    result = build(demo_fp32, str(engine), BuildOptions(
        precision=precision, data=CALIBRATION, backend="tensorrt", profile="datacenter-gpu"))
    assert result.verification["vs_graph"]["top1_agreement"] >= 0.97
    import onnx

    graph = onnx.load(str(demo_fp32.with_name(f"{demo_fp32.stem}.{precision}.onnx")))
    reference = graph_output(cpu_graph(graph), demo_images, "none")
    assert agreement(reference, load_runner(engine).infer(demo_images)).top1_agreement >= 0.97


def test_engine_build_that_fails_verification_writes_nothing(demo_fp32, tmp_path):
    """A table whose ranges clip every activation collapses the INT8 engine: the build
    fails on its verification and leaves neither engine nor sidecar."""
    from tests.conftest import collapsing_table
    from vitedge.verification import VerificationError

    table = collapsing_table(demo_fp32, tmp_path / "t.json")
    engine = tmp_path / "m.int8.engine"
    with pytest.raises(VerificationError, match="quantization collapsed the model"):
        build(demo_fp32, str(engine), BuildOptions(precision="int8", calib=str(table),
                                                   data=CALIBRATION, backend="tensorrt"))
    assert not engine.exists() and not sidecar_path(engine).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.int8.engine")]


def test_engine_refuses_changed_or_foreign(demo_fp32, tmp_path):
    fp32 = demo_fp32
    engine = tmp_path / "m.engine"
    build(fp32, str(engine), BuildOptions(precision="fp32", backend="tensorrt"))
    info = EngineInfo.read(sidecar_path(engine))
    foreign = dataclasses.replace(info, compute_capability="5.3", gpu_name="Jetson Nano")
    sidecar_path(engine).write_text(json.dumps(dataclasses.asdict(foreign)))
    with pytest.raises(VitedgeError, match="only on the GPU generation"):
        load_runner(engine)
    sidecar_path(engine).write_text(info.to_json())
    engine.write_bytes(engine.read_bytes()[:-16] + bytes(16))
    with pytest.raises(VitedgeError, match="changed or replaced"):
        load_runner(engine)


def test_engine_pipeline_times_the_copies_and_replays_a_cuda_graph(demo_fp32, tmp_path):
    engine = tmp_path / "m.fp16.engine"
    build(demo_fp32, str(engine), BuildOptions(precision="fp16", data=CALIBRATION, backend="tensorrt"))
    frames = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[:20]
    with vitedge.open(engine, keep_logits=True) as plain, \
            vitedge.open(engine, keep_logits=True, cuda_graph=True) as graph:
        for f in frames:
            a, b = plain(f), graph(f)
            np.testing.assert_allclose(a.logits, b.logits, rtol=1e-3, atol=1e-3)
        assert a.timings["host_to_device"] > 0 and a.timings["device_to_host"] > 0
        streamed = list(plain.stream(frames, prefetch=2))
        assert len(streamed) == len(frames)
    with pytest.raises(VitedgeError, match="streams must be 1"):
        vitedge.open(engine, streams=2)  # one execution context


def test_explain_reads_an_engine_built_with_attention_outputs(tmp_path):
    from tests.conftest import DEMO_CHECKPOINT
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.runtime.pipeline import open_pipeline

    onnx_path = tmp_path / "attn.onnx"
    export_onnx(DEMO_CHECKPOINT, onnx_path, ExportOptions(attention_outputs=True))
    engine = tmp_path / "attn.engine"
    build(onnx_path, str(engine), BuildOptions(precision="fp32", backend="tensorrt"))
    image = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[0]
    with open_pipeline(onnx_path) as reference, open_pipeline(engine) as pipe:
        x = reference.prepare([image])
        _, expected = reference.model.attention(x)
        _, probs = pipe.model.attention(x)
        for ours, theirs in zip(probs, expected, strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-3)  # TF32 allowed
        assert pipe.explain(image).shape == (7, 7)
    plain_onnx, plain = tmp_path / "plain.onnx", tmp_path / "plain.engine"
    export_onnx(DEMO_CHECKPOINT, plain_onnx, ExportOptions())
    build(plain_onnx, str(plain), BuildOptions(precision="fp32", backend="tensorrt"))
    with open_pipeline(plain) as pipe, pytest.raises(VitedgeError, match="attention-outputs"):
        pipe.explain(image)
