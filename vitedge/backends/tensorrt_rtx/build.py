"""A TensorRT for RTX engine from vitedge's ONNX model: TensorRT's builder code with the
TensorRT-RTX flavour (compute-capability targets, no timing cache, no DLA), which needs no
GPU: the engine is built ahead of time on the CPU and its kernels are JIT-compiled on the
user's RTX GPU at first run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.backends.tensorrt.build import build_engine, require_tensorrt
from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
from vitedge.backends.tensorrt.flavours import TENSORRT_RTX
from vitedge.backends.tensorrt_rtx.settings import TensorRTRTXSettings
from vitedge.fileio import write_text_atomic
from vitedge.manifest import Manifest
from vitedge.report import Reporter

if TYPE_CHECKING:
    from vitedge.profiles import BatchRange, Profile


def require_tensorrt_rtx() -> Any:
    return require_tensorrt(TENSORRT_RTX)


def build_rtx_engine(onnx_path: Path, engine_path: Path, manifest: Manifest, profile: Profile,
                     batch: BatchRange, report: Reporter | None = None) -> EngineInfo:
    """Build and write `engine_path` and its description, which also records how the runner
    compiles kernels (the profile's [tensorrt_rtx] settings)."""
    settings = profile.section("tensorrt_rtx", TensorRTRTXSettings)
    info = build_engine(onnx_path, engine_path, manifest, profile, batch, None, report,
                        flavour=TENSORRT_RTX, compute_capabilities=settings.compute_capabilities)
    info.runtime = {"dynamic_shapes": settings.dynamic_shapes,
                    "cuda_graph_strategy": settings.cuda_graph_strategy,
                    "runtime_cache": settings.runtime_cache}
    write_text_atomic(sidecar_path(engine_path), info.to_json())
    return info
