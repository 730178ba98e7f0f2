"""Build a TensorRT engine from vitedge's (Q/DQ INT8, FP16 or FP32) ONNX model.

The network is strongly typed: precision comes from the graph, which TensorRT 10 does
with NetworkDefinitionCreationFlag.STRONGLY_TYPED and TensorRT 11 always does (it has no
precision builder flags). Written against the TensorRT 10.x Python API (checked by mypy
with tensorrt-stubs) and TensorRT 11's; it runs only where TensorRT and a GPU are present
(tests marked `gpu`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vitedge.backends.tensorrt.device import gpu_info, tensorrt_module
from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
from vitedge.errors import MissingDependency, VitedgeError
from vitedge.fileio import sha256_file, write_bytes_atomic
from vitedge.manifest import Manifest
from vitedge.profiles import BatchRange, Profile
from vitedge.report import Reporter, reporter

MIN_TENSORRT = 10


def require_tensorrt() -> Any:
    trt = tensorrt_module()
    if trt is None:
        raise MissingDependency(
            "the TensorRT backend needs TensorRT's Python package with its builder, which is "
            "not installed (only type stubs, or nothing)",
            "Jetson: it comes with JetPack 6; desktop: pip install tensorrt; or use "
            "--backend onnxruntime")
    major = int(str(trt.__version__).split(".")[0])
    if major < MIN_TENSORRT:
        raise VitedgeError(
            f"TensorRT {trt.__version__} cannot build strongly typed networks (TensorRT 10+)",
            "use --backend onnxruntime, or build vitedge's Q/DQ ONNX with trtexec --int8")
    if gpu_info() is None:
        raise VitedgeError("TensorRT is installed but no CUDA GPU is visible (cuda-python "
                           "found none)", "check the driver (nvidia-smi), or use --backend onnxruntime")
    return trt


def _progress_monitor(report: Reporter) -> Any:
    """A TensorRT IProgressMonitor that reports the top-level build phase's steps."""
    import tensorrt as trt

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.top: str | None = None

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            if parent_phase is None and self.top is None:
                self.top = phase_name

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name == self.top:
                report.progress(step + 1, self.steps[phase_name])
            return True

        def phase_finish(self, phase_name: str) -> None:
            if phase_name == self.top:
                self.top = None

    return Monitor()


def _parser_errors(parser: Any) -> str:
    """The parser's errors with the ONNX node each is about."""
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else str(e.node())
        errors.append(f"node '{node}': {e.desc()}")
    return "; ".join(errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")


def build_engine(onnx_path: Path, engine_path: Path, manifest: Manifest, profile: Profile,
                 batch: BatchRange, timing_cache: Path | None = None,
                 report: Reporter | None = None) -> EngineInfo:
    """Parse, configure, build and write `engine_path` and its description beside it."""
    require_tensorrt()
    rep = reporter(report)
    import tensorrt as trt

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise VitedgeError(f"TensorRT's ONNX parser rejected {onnx_path}: {_parser_errors(parser)}")

    config = builder.create_builder_config()
    settings = profile.tensorrt
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for `bench`
    config.progress_monitor = _progress_monitor(rep)

    opt_profile = builder.create_optimization_profile()
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in inputs:
        shape = _dims(tensor.shape)
        if shape[0] == -1:
            dims = [[b, *shape[1:]] for b in (batch.min, batch.opt, batch.max)]
            opt_profile.set_shape(tensor.name, trt.Dims(dims[0]), trt.Dims(dims[1]), trt.Dims(dims[2]))
    config.add_optimization_profile(opt_profile)

    if settings.dla_core >= 0:
        if builder.num_DLA_cores <= settings.dla_core:
            raise VitedgeError(f"the profile asks for DLA core {settings.dla_core}; this device "
                               f"has {builder.num_DLA_cores}", "set dla_core = -1 in the profile")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        rep.warning("DLA: only the patch embedding can run there; attention (MatMul between two "
                    "activations) and most of the encoder fall back to the GPU")
    if settings.hardware_compatibility != "none":
        config.hardware_compatibility_level = (
            trt.HardwareCompatibilityLevel.AMPERE_PLUS if settings.hardware_compatibility == "ampere+"
            else trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)

    if timing_cache is not None and timing_cache.is_file():
        cache = config.create_timing_cache(timing_cache.read_bytes())
    else:
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise VitedgeError(f"TensorRT could not build an engine from {onnx_path}",
                           "run with --debug; TensorRT's log above says why")
    write_bytes_atomic(engine_path, bytes(serialized))
    if timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))

    gpu = gpu_info() or ("unknown", "0.0")
    info = EngineInfo(
        tensorrt_version=str(trt.__version__), gpu_name=gpu[0], compute_capability=gpu[1],
        precision=manifest.precision, batch=str(batch), profile=profile.name,
        inputs=[_io(t) for t in inputs],
        outputs=[_io(network.get_output(i)) for i in range(network.num_outputs)],
        manifest=json.loads(manifest.to_json()), onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine_path),
        hardware_compatibility=settings.hardware_compatibility,
        version_compatible=settings.version_compatible,
        build_seconds=round(time.perf_counter() - start, 2))
    write_bytes_atomic(sidecar_path(engine_path), info.to_json().encode())
    return info


def _dims(dims: Any) -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


def _io(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "shape": _dims(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
