"""Build a TensorRT engine from vitedge's (Q/DQ INT8, FP16 or FP32) ONNX model, with
TensorRT 10.x / 11.x or TensorRT for RTX (`flavours.py` says where they differ).

The network is strongly typed: precision comes from the graph, which TensorRT 10 does
with NetworkDefinitionCreationFlag.STRONGLY_TYPED and TensorRT 11 and TensorRT for RTX
always do (they have no precision builder flags). The code both share runs for real in the
test suite through TensorRT for RTX's builder, which needs no GPU; TensorRT's own settings
(`_tensorrt_only`) are checked by mypy against the TensorRT 10.x stubs and run where
TensorRT and a GPU are present (tests marked `gpu`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.backends.tensorrt.device import gpu_info
from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
from vitedge.backends.tensorrt.flavours import TENSORRT, TENSORRT_RTX, Flavour, collecting_logger
from vitedge.backends.tensorrt.settings import TensorRTSettings
from vitedge.errors import MissingDependency, VitedgeError
from vitedge.fileio import sha256_file, write_bytes_atomic
from vitedge.manifest import Manifest
from vitedge.report import Reporter, reporter

if TYPE_CHECKING:
    import tensorrt

    from vitedge.profiles import BatchRange, Profile

MIN_TENSORRT = 10


def require_tensorrt(flavour: Flavour = TENSORRT) -> Any:
    """The flavour's module, or one line saying what is missing (a GPU too, for TensorRT)."""
    trt = flavour.import_module()
    if trt is None:
        if flavour is TENSORRT_RTX:
            raise MissingDependency(
                "the tensorrt-rtx backend needs TensorRT for RTX, which is not installed",
                "pip install tensorrt-rtx-cu13 (Linux x86-64 and Windows), or use "
                "--backend onnxruntime")
        raise MissingDependency(
            "the TensorRT backend needs TensorRT's Python package with its builder, which is "
            "not installed (only type stubs, or nothing)",
            "Jetson: it comes with JetPack 6; desktop: pip install tensorrt; or use "
            "--backend onnxruntime")
    if flavour is TENSORRT:
        major = int(str(trt.__version__).split(".")[0])
        if major < MIN_TENSORRT:
            raise VitedgeError(
                f"TensorRT {trt.__version__} cannot build strongly typed networks (TensorRT 10+)",
                "use --backend onnxruntime, or build vitedge's Q/DQ ONNX with trtexec --int8")
    if flavour.gpu_to_build and gpu_info() is None:
        raise VitedgeError(f"{flavour.product} is installed but no CUDA GPU is visible "
                           "(cuda-python found none)",
                           "check the driver (nvidia-smi), or use --backend onnxruntime")
    return trt


def _progress_monitor(trt: Any, report: Reporter) -> Any:
    """A TensorRT IProgressMonitor that reports the top-level build phase's steps."""

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


def parser_errors(parser: Any) -> list[str]:
    """The parser's errors, each with the ONNX node it is about."""
    errors = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node_name() if hasattr(e, "node_name") else str(e.node())
        errors.append(f"node '{node}': {e.desc()}")
    return errors


def parse_onnx(trt: Any, data: bytes, logger: Any, what: str, product: str,
               path: str | None = None) -> tuple[Any, Any]:
    """(builder, strongly typed network) parsed from ONNX bytes (`path`: the file, where its
    weights are in data files beside it), or one VitedgeError naming the first node the
    parser rejects."""
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not (parser.parse(data, path) if path else parser.parse(data)):
        errors = parser_errors(parser)
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise VitedgeError(f"{product}'s ONNX parser rejected {what}: "
                           f"{errors[0] if errors else 'no reason given'}{more}",
                           "this graph is not for TensorRT (e.g. a `vitedge build` ONNX Runtime "
                           "artifact); build from the export or the quantized ONNX")
    return builder, network


def build_engine(onnx_path: Path, engine_path: Path, manifest: Manifest, profile: Profile,
                 batch: BatchRange, timing_cache: Path | None = None,
                 report: Reporter | None = None, flavour: Flavour = TENSORRT,
                 compute_capabilities: tuple[str, ...] = ()) -> EngineInfo:
    """Parse, configure, build and write `engine_path` and its description beside it, with
    TensorRT or (flavour TENSORRT_RTX) TensorRT for RTX for `compute_capabilities`."""
    trt = require_tensorrt(flavour)
    rep = reporter(report)
    start = time.perf_counter()
    logger = collecting_logger(trt)
    builder, network = parse_onnx(trt, onnx_path.read_bytes(), logger, str(onnx_path),
                                  flavour.product, str(onnx_path))

    config = builder.create_builder_config()
    settings = profile.section("tensorrt", TensorRTSettings)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mb << 20)
    config.builder_optimization_level = settings.optimization_level
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer info for `bench`
    config.progress_monitor = _progress_monitor(trt, rep)

    opt_profile = builder.create_optimization_profile()
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in inputs:
        shape = _dims(tensor.shape)
        if shape[0] == -1:
            dims = [[b, *shape[1:]] for b in (batch.min, batch.opt, batch.max)]
            opt_profile.set_shape(tensor.name, trt.Dims(dims[0]), trt.Dims(dims[1]), trt.Dims(dims[2]))
    config.add_optimization_profile(opt_profile)

    targets: list[str] = []
    if flavour.compute_targets:
        targets = set_compute_targets(trt, config, compute_capabilities)
    if flavour is TENSORRT:
        _tensorrt_only(trt, builder, config, settings, rep, timing_cache)
    elif timing_cache is not None:
        rep.warning(f"--timing-cache has no effect with {flavour.product} (kernels are "
                    "compiled on the user's GPU and kept in its runtime cache)")

    serialized = builder.build_serialized_network(network, config)
    for level, message in logger.messages:
        if level == "WARNING" and "UINT8" not in message:
            rep.warning(f"{flavour.product}: {message.splitlines()[0]}")
    if serialized is None:
        why = "; ".join(m.splitlines()[0] for m in logger.errors()[:2]) or "no reason given"
        raise VitedgeError(f"{flavour.product} could not build an engine from {onnx_path}: {why}",
                           "run with --debug for the whole log")
    write_bytes_atomic(engine_path, bytes(serialized))
    if flavour is TENSORRT and timing_cache is not None:
        write_bytes_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))

    gpu = gpu_info()
    if flavour.compute_targets:
        where = gpu[0] if gpu and "current" in targets else "any GPU of the targets"
        cc = ",".join(gpu[1] if t == "current" and gpu else t for t in targets)
    else:
        where, cc = (gpu or ("unknown", "0.0"))
    info = EngineInfo(
        tensorrt_version=str(trt.__version__), gpu_name=where, compute_capability=cc,
        precision=manifest.precision, batch=str(batch), profile=profile.name,
        inputs=[_io(t) for t in inputs],
        outputs=[_io(network.get_output(i)) for i in range(network.num_outputs)],
        manifest=json.loads(manifest.to_json()), onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine_path), backend=flavour.backend,
        hardware_compatibility=settings.hardware_compatibility if flavour is TENSORRT else "none",
        version_compatible=settings.version_compatible and flavour is TENSORRT,
        compute_capabilities=cc.split(",") if flavour.compute_targets else [],
        build_seconds=round(time.perf_counter() - start, 2))
    write_bytes_atomic(sidecar_path(engine_path), info.to_json().encode())
    return info


COMPUTE_CAPABILITIES = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89",
                        "12.0": "SM120", "12.1": "SM121", "current": "CURRENT"}
"""TensorRT for RTX's build targets (its ComputeCapability enum); `current` is the GPU of
the building machine (no CPU-only ahead-of-time build then)."""


def set_compute_targets(trt: Any, config: Any, wanted: tuple[str, ...]) -> list[str]:
    """Set `config`'s compute-capability targets; returns them as "8.9" strings."""
    unknown = [c for c in wanted if c not in COMPUTE_CAPABILITIES]
    if unknown or not wanted:
        raise VitedgeError(f"compute capability '{unknown[0] if unknown else ''}' is not a "
                           "TensorRT for RTX target",
                           f"use some of {', '.join(COMPUTE_CAPABILITIES)}")
    if "current" in wanted and gpu_info() is None:
        raise VitedgeError("the compute capability target 'current' needs a GPU on this machine",
                           "name the targets instead, e.g. 8.6, 8.9, 12.0")
    config.num_compute_capabilities = len(wanted)
    for i, cc in enumerate(wanted):
        config.set_compute_capability(getattr(trt.ComputeCapability, COMPUTE_CAPABILITIES[cc]), i)
    return list(wanted)


def _tensorrt_only(trt: Any, builder: tensorrt.Builder, config: tensorrt.IBuilderConfig,
                   settings: Any, rep: Reporter, timing_cache: Path | None) -> None:
    """The settings only TensorRT 10.x / 11.x has (`flavours.py`): DLA, hardware and version
    compatibility, the timing cache. Typed against the TensorRT 10.x stubs."""
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


def _dims(dims: Any) -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


def _io(tensor: Any) -> dict[str, Any]:
    return {"name": tensor.name, "shape": _dims(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}
