"""TensorRT for RTX as a `Backend`: TensorRT's backend with the RTX flavour
(`vitedge.backends.tensorrt.flavours`): engines for chosen compute capabilities, built
without a GPU, their kernels compiled on the user's RTX GPU at first run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.backends.base import BuildRequest, BuiltArtifact, Check, TritonModel, check_choice
from vitedge.backends.tensorrt.backend import TensorRTBackend
from vitedge.backends.tensorrt.flavours import TENSORRT_RTX, Flavour
from vitedge.errors import VitedgeError

RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1", "current")
RTX_SPECIALIZATION = ("lazy", "eager", "none")
RTX_CUDA_GRAPHS = ("disabled", "whole_graph_capture")


@dataclass(frozen=True)
class TensorRTRTXSettings:
    """A device profile's `[tensorrt_rtx]` table: what the engine targets and how its
    kernels are compiled on the user's GPU."""

    compute_capabilities: tuple[str, ...] = ("8.6", "8.9", "12.0")
    """Build targets: Ampere RTX 30xx, Ada RTX 40xx, Blackwell RTX 50xx by default; 7.5 for
    Turing (explicit only), `current` for this machine's GPU."""
    runtime_cache: bool = True
    """Keep the JIT-compiled kernels in ENGINE.runtime-cache beside the engine."""
    dynamic_shapes: str = "lazy"
    """Kernel specialisation for a new batch size: lazy (a fallback kernel first, the
    specialised one compiled in the background), eager, or none."""
    cuda_graph_strategy: str = "disabled"

    def __post_init__(self) -> None:
        check_choice("tensorrt_rtx.compute_capabilities", self.compute_capabilities, RTX_TARGETS)
        check_choice("tensorrt_rtx.dynamic_shapes", self.dynamic_shapes, RTX_SPECIALIZATION)
        check_choice("tensorrt_rtx.cuda_graph_strategy", self.cuda_graph_strategy,
                     RTX_CUDA_GRAPHS)


class TensorRTRTXBackend(TensorRTBackend):
    name = "tensorrt-rtx"
    product = "TensorRT for RTX"
    build_step = "tensorrt-rtx build"
    runner = "vitedge.backends.tensorrt_rtx.runner:TensorRTRTXRunner"
    settings = ("tensorrt_rtx", TensorRTRTXSettings)
    default_profile = "rtx-portable"
    flavour: Flavour = TENSORRT_RTX

    def version(self) -> str | None:
        module = self.flavour.import_module()
        return str(module.__version__) if module is not None else None

    def unavailable(self) -> str | None:
        if self.flavour.import_module() is None:
            return "TensorRT for RTX is not installed (pip install tensorrt-rtx-cu13)"
        return None

    def chosen(self, profile: Any) -> str:
        targets = ", ".join(profile.tensorrt_rtx.compute_capabilities)
        return (f"profile {profile.name} builds for TensorRT for RTX (compute capabilities "
                f"{targets}; no GPU is needed to build)")

    def precision_column(self, profile: Any) -> str:
        return "tensorrt-rtx"

    def targets(self, profile: Any) -> tuple[str, ...]:
        """The profile's compute capabilities (`current`: this machine's GPU)."""
        from vitedge.backends.tensorrt.device import gpu_info

        here = gpu_info()
        return tuple(here[1] if c == "current" and here else c
                     for c in profile.tensorrt_rtx.compute_capabilities
                     if c != "current" or here)

    def nvfp4_activations(self, profile: Any) -> str:
        """TensorRT for RTX builds `TRT_FP4DynamicQuantize` (measured with 1.7.1)."""
        return "nvfp4"

    def _no_gpu_device(self) -> str:
        return "no GPU (ahead-of-time build)"

    def doctor(self) -> list[Check]:
        trt = self.flavour.import_module()
        if trt is None:
            return [Check("tensorrt-rtx", False, "not installed",
                          "desktop / laptop RTX: pip install tensorrt-rtx-cu13 (Linux x86-64, "
                          "Windows)")]
        from vitedge.backends.tensorrt.device import gpu_info

        gpu = gpu_info()
        runs = (f"runs engines here on {gpu[0]} (compute {gpu[1]})" if gpu else
                "builds engines here without a GPU (--backend tensorrt-rtx, profile "
                "rtx-portable); they run on RTX GPUs")
        return [Check("tensorrt-rtx", True, f"TensorRT for RTX {trt.__version__}: {runs}")]

    def _runtime_rows(self, e: dict[str, Any]) -> list[tuple[str, str]]:
        r = e.get("runtime") or {}
        return [("runtime", f"kernels JIT-compiled on the GPU ({r.get('dynamic_shapes', 'lazy')} "
                            f"specialisation, CUDA graphs {r.get('cuda_graph_strategy', 'disabled')}), "
                            f"runtime cache {'beside the engine' if r.get('runtime_cache', True) else 'off'}")]

    def parser_available(self) -> bool:
        from vitedge.backends.tensorrt_rtx.parser import available

        return available()

    def parser_problems(self, model: Any) -> list[str] | None:
        from vitedge.backends.tensorrt_rtx.parser import parser_problems

        return parser_problems(model)

    def triton_model(self, artifact: Path) -> TritonModel:
        raise VitedgeError(f"{artifact.name} is a {self.name} engine; Triton's tensorrt_plan "
                           "backend runs TensorRT engines",
                           "export the ONNX model it was built from instead")

    def build(self, request: BuildRequest, path: Path) -> BuiltArtifact:
        from vitedge.backends.tensorrt_rtx.build import build_rtx_engine

        info = build_rtx_engine(request.model, path, request.manifest, request.profile,
                                request.batch, request.report)
        notes = (["--timing-cache has no effect with TensorRT for RTX"]
                 if request.timing_cache is not None else [])
        return self._built(request, path, info, notes)

    def profile_rows(self, profile: Any) -> list[tuple[str, str]]:
        builder, settings = profile.tensorrt, profile.tensorrt_rtx
        return [("builder", f"workspace {builder.workspace_mb} MB, optimization level "
                            f"{builder.optimization_level} (the [tensorrt] table)"),
                ("tensorrt_rtx", f"compute capabilities {', '.join(settings.compute_capabilities)}, "
                                 f"kernels {settings.dynamic_shapes} specialisation, CUDA graphs "
                                 f"{settings.cuda_graph_strategy}, runtime cache "
                                 f"{'beside the engine' if settings.runtime_cache else 'off'}")]
