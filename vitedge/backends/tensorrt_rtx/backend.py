"""TensorRT for RTX as a `Backend`: TensorRT's backend with the RTX flavour
(`vitedge.backends.tensorrt.flavours`): engines for chosen compute capabilities, built
without a GPU, their kernels compiled on the user's RTX GPU at first run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitedge.backends.base import BuildRequest, BuiltArtifact, Check, TritonModel
from vitedge.backends.tensorrt.backend import TensorRTBackend
from vitedge.backends.tensorrt.flavours import TENSORRT_RTX, Flavour
from vitedge.backends.tensorrt.settings import TensorRTSettings
from vitedge.backends.tensorrt_rtx.settings import TensorRTRTXSettings
from vitedge.errors import VitedgeError

if TYPE_CHECKING:
    from vitedge.profiles import Profile


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

    def chosen(self, profile: Profile) -> str:
        targets = ", ".join(_settings(profile).compute_capabilities)
        return (f"profile {profile.name} builds for TensorRT for RTX (compute capabilities "
                f"{targets}; no GPU is needed to build)")

    def precision_column(self, profile: Profile) -> str:
        return "tensorrt-rtx"

    def targets(self, profile: Profile) -> tuple[str, ...]:
        """The profile's compute capabilities (`current`: this machine's GPU)."""
        from vitedge.backends.tensorrt.device import gpu_info

        here = gpu_info()
        return tuple(here[1] if c == "current" and here else c
                     for c in _settings(profile).compute_capabilities
                     if c != "current" or here)

    def nvfp4_activations(self, profile: Profile) -> str:
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

    def profile_rows(self, profile: Profile) -> list[tuple[str, str]]:
        builder, settings = profile.section("tensorrt", TensorRTSettings), _settings(profile)
        return [("builder", f"workspace {builder.workspace_mb} MB, optimization level "
                            f"{builder.optimization_level} (the [tensorrt] table)"),
                ("tensorrt_rtx", f"compute capabilities {', '.join(settings.compute_capabilities)}, "
                                 f"kernels {settings.dynamic_shapes} specialisation, CUDA graphs "
                                 f"{settings.cuda_graph_strategy}, runtime cache "
                                 f"{'beside the engine' if settings.runtime_cache else 'off'}")]


def _settings(profile: Profile) -> TensorRTRTXSettings:
    return profile.section("tensorrt_rtx", TensorRTRTXSettings)
