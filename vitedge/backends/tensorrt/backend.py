"""TensorRT (10.x / 11.x) as a `Backend`: Jetson (JetPack's TensorRT), desktop and data-centre
GPUs. Its artifact is a plain engine (`.engine`) with its description beside it
(`ENGINE.json`, `engine_info.py`). TensorRT for RTX is this backend with another flavour
(`vitedge.backends.tensorrt_rtx.backend`)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vitedge.backends.base import (
    Backend,
    BuildRequest,
    BuiltArtifact,
    Check,
    Runner,
    TensorInfo,
    TritonModel,
)
from vitedge.backends.tensorrt.flavours import TENSORRT, Flavour
from vitedge.backends.tensorrt.settings import TensorRTSettings
from vitedge.errors import VitedgeError

if TYPE_CHECKING:
    from vitedge.profiles import Profile

JETPACK_PACKAGES = Path("/usr/lib/python3/dist-packages")
"""Where JetPack installs TensorRT's Python bindings (the system Python's packages)."""


class TensorRTBackend(Backend):
    name = "tensorrt"
    product = "TensorRT"
    suffix = ".engine"
    build_step = "tensorrt build"
    runner = "vitedge.backends.tensorrt.runner:TensorRTRunner"
    settings: ClassVar[tuple[str, type] | None] = ("tensorrt", TensorRTSettings)
    default_profile = "datacenter-gpu"
    flavour: Flavour = TENSORRT

    # --- precisions ------------------------------------------------------------------------

    def precision_column(self, profile: Profile) -> str:
        """TensorRT 11's column where TensorRT 11 is installed here, else 10's (JetPack 6 and 7.0
        / 7.1, most desktops today)."""
        from vitedge.backends.tensorrt.device import tensorrt_module

        builder = tensorrt_module()  # the builder's version decides, not a lean runtime's
        major = str(getattr(builder, "__version__", "")).split(".")[0]
        return "tensorrt-11" if major.isdigit() and int(major) >= 11 else "tensorrt-10"

    def targets(self, profile: Profile) -> tuple[str, ...]:
        """The GPU the engine is built on, and so runs on; without one here (nothing to
        build on), the profile's `targets`."""
        from vitedge.backends.tensorrt.device import gpu_info

        gpu = gpu_info()
        return (gpu[1],) if gpu else tuple(profile.targets)

    def nvfp4_activations(self, profile: Profile) -> str:
        """Dynamic NVFP4 activations need TensorRT 11 to build; 10.8+ gets W4A8."""
        return "nvfp4" if self.precision_column(profile) == "tensorrt-11" else "fp8"

    # --- here, on this machine ----------------------------------------------------------

    def version(self) -> str | None:
        """The TensorRT that runs engines here (the lean runtime counts)."""
        from vitedge.backends.tensorrt.device import tensorrt_module

        module = tensorrt_module(lean_ok=True)
        return str(getattr(module, "__version__", None)) if module is not None else None

    def unavailable(self) -> str | None:
        from vitedge.backends.tensorrt.device import gpu_info, tensorrt_module

        if tensorrt_module() is None:
            return "TensorRT (with its builder) is not installed"
        if gpu_info() is None:
            return "TensorRT is installed but no CUDA GPU is visible"
        return None

    def chosen(self, profile: Profile) -> str:
        return "TensorRT and a GPU are present"

    def require(self) -> None:
        from vitedge.backends.tensorrt.build import require_tensorrt

        require_tensorrt(self.flavour)

    def device(self) -> str:
        from vitedge.backends.tensorrt.device import gpu_info

        gpu = gpu_info()
        return f"{gpu[0]} (compute {gpu[1]})" if gpu else self._no_gpu_device()

    def _no_gpu_device(self) -> str:
        return "GPU"

    def cannot_run_here(self) -> str | None:
        from vitedge.backends.tensorrt.device import gpu_info

        if gpu_info() is not None:
            return None
        return (f"not verified: the {self.name} engine runs only on a GPU and this machine "
                "has none (its graph passed the real parser and builder); build it on the "
                "GPU machine to have it verified there")

    def doctor(self) -> list[Check]:
        fix = "Jetson: it comes with JetPack; desktop: pip install tensorrt (NVIDIA's index)"
        if (JETPACK_PACKAGES / "tensorrt").is_dir():  # JetPack's, hidden from a virtualenv
            fix = (f"JetPack's TensorRT is in {JETPACK_PACKAGES}, which this Python does not "
                   "see: create the virtualenv with --system-site-packages")
        try:
            trt = importlib.import_module("tensorrt")
        except Exception as exc:  # noqa: BLE001 - a broken install is reported, not raised
            checks = [Check("tensorrt", False, f"not importable ({type(exc).__name__})", fix)]
        else:
            checks = [Check("tensorrt", True, str(getattr(trt, "__version__", "?")))
                      if hasattr(trt, "Builder") else
                      Check("tensorrt", False, "only type stubs are installed (tensorrt-stubs)",
                            fix)]
        return checks + cuda_checks()

    # --- artifacts -------------------------------------------------------------------------

    def claims(self, path: Path) -> bool:
        """An engine whose description (ENGINE.json) names this backend."""
        from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path

        sidecar = sidecar_path(path)
        if not sidecar.is_file():
            return False
        return EngineInfo.read(sidecar).backend == self.name

    def load(self, path: str | Path, threads: int | None = None, device: str | None = None,
             cuda_graph: bool = False) -> Runner:
        import importlib

        module, _, cls = self.runner.partition(":")
        runner: Runner = getattr(importlib.import_module(module), cls)(path, cuda_graph=cuda_graph)
        return runner

    def describe(self, path: Path) -> dict[str, Any]:
        """An engine as its description file records it; reading it needs no GPU, so an
        engine can be inspected anywhere."""
        from dataclasses import asdict

        from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path

        if not path.is_file():
            raise VitedgeError(f"no such file: {path}")
        info = EngineInfo.read(sidecar_path(path))
        return {"artifact": str(path), "size_bytes": path.stat().st_size, "engine": asdict(info)}

    def inspect_rows(self, description: dict[str, Any]) -> list[tuple[str, str]]:
        e = description["engine"]
        io = [(kind, ", ".join(f"{v.get('name')} {v.get('shape')} {v.get('dtype')}"
                               for v in e[kind])) for kind in ("inputs", "outputs")]
        return [("built for", f"{e['gpu_name']} (compute {e['compute_capability']}), "
                              f"{self.product} {e['tensorrt_version']}"),
                ("precision / batch", f"{e['precision']} / {e['batch']} (profile {e['profile']})"),
                *io, *self._runtime_rows(e),
                ("from ONNX", f"sha256 {e['onnx_sha256'][:16]}...; built in "
                              f"{e['build_seconds']} s by vitedge {e['vitedge_version']}")]

    def _runtime_rows(self, e: dict[str, Any]) -> list[tuple[str, str]]:
        return [("compatibility", f"hardware {e['hardware_compatibility']}, version "
                                  f"compatible {e['version_compatible']}")]

    def triton_model(self, artifact: Path) -> TritonModel:
        """tensorrt_plan: the engine as it is, its I/O and batch range from its description."""
        from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
        from vitedge.fileio import sha256_file
        from vitedge.manifest import Manifest

        info = EngineInfo.read(sidecar_path(artifact))
        if sha256_file(artifact) != info.engine_sha256:
            raise VitedgeError(f"{artifact.name} is not the engine its description "
                               f"{sidecar_path(artifact).name} records (sha256 differs)",
                               "rebuild it with `vitedge build`")

        def io(v: dict[str, Any]) -> TensorInfo:
            return TensorInfo(v["name"], tuple(int(d) for d in v["shape"]), v["dtype"])

        return TritonModel(
            "tensorrt_plan", "model.plan", artifact,
            Manifest.from_json(json.dumps(info.manifest)), [io(info.inputs[0])],
            [io(info.outputs[0])], batch=info.batch,
            notes=[f"TensorRT {info.tensorrt_version} on {info.gpu_name} (compute "
                   f"{info.compute_capability}): the Triton release must ship that TensorRT"])

    # --- build -----------------------------------------------------------------------------

    def build(self, request: BuildRequest, path: Path) -> BuiltArtifact:
        from vitedge.backends.tensorrt.build import build_engine

        info = build_engine(request.model, path, request.manifest, request.profile,
                            request.batch, request.timing_cache, request.report)
        return self._built(request, path, info, [])

    def _built(self, request: BuildRequest, path: Path, info: Any, notes: list[str]
               ) -> BuiltArtifact:
        details = {"engine": {"backend": self.name, "version": info.tensorrt_version,
                              "gpu": info.gpu_name, "batch": info.batch,
                              "compute_capabilities": info.compute_capabilities}}
        from vitedge.graph import load_onnx

        return BuiltArtifact(path, load_onnx(request.model), "ONNX Runtime on the same graph "
                             "(Q/DQ in float)", details, notes, state=info)

    def record(self, built: BuiltArtifact, verification: dict[str, Any]) -> None:
        from vitedge.backends.tensorrt.engine_info import sidecar_path
        from vitedge.fileio import write_text_atomic

        built.state.verification = verification
        write_text_atomic(sidecar_path(built.path), built.state.to_json())

    def finish(self, built: BuiltArtifact, final: Path) -> None:
        from vitedge.backends.tensorrt.engine_info import sidecar_path
        from vitedge.fileio import publish

        publish(sidecar_path(built.path), sidecar_path(final))
        publish(built.path, final)

    def discard(self, path: Path) -> None:
        from vitedge.backends.tensorrt.engine_info import sidecar_path

        with contextlib.suppress(FileNotFoundError):
            sidecar_path(path).unlink()

    def disagreement(self, verification: Any, built: BuiltArtifact) -> str:
        return (f"{self.name}'s engine computes something else than the graph it was built "
                "from (a kernel's precision or a fusion); try --precision fp16, or keep layers "
                "in float with vitedge quantize --exclude")

    def profile_rows(self, profile: Profile) -> list[tuple[str, str]]:
        trt = profile.section("tensorrt", TensorRTSettings)
        return [("tensorrt", f"workspace {trt.workspace_mb} MB, optimization level "
                             f"{trt.optimization_level}, DLA "
                             f"{'off' if trt.dla_core < 0 else trt.dla_core}, hardware "
                             f"compatibility {trt.hardware_compatibility}, version compatible "
                             f"{trt.version_compatible}, CUDA graphs {trt.cuda_graphs}")]


def cuda_checks() -> list[Check]:
    """pycuda and cuda-python: what runs an engine's buffers and streams."""
    pycuda = None
    with contextlib.suppress(Exception):
        pycuda = str(getattr(importlib.import_module("pycuda"), "__version__", "installed"))
    cuda_python = None
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        cuda_python = importlib.metadata.version("cuda-python")
    either = pycuda is not None or cuda_python is not None  # one of the two is enough
    fix = "pip install cuda-python (or, on a Jetson with CUDA's headers, pycuda)"
    return [Check("pycuda", either, pycuda or ("not installed (not needed: cuda-python is)"
                                               if either else "missing"), "" if either else fix),
            Check("cuda-python", either, cuda_python or ("not installed (not needed: pycuda is)"
                                                         if either else "missing"),
                  "" if either else fix)]
