"""Run a TensorRT for RTX engine: TensorRT's runner with the runtime's own validity check
(version, compute capability, driver, memory) before deserialising, and an execution
context made from a runtime configuration: the kernel-specialisation strategy for dynamic
shapes and the runtime cache that keeps the JIT-compiled kernels in ENGINE.runtime-cache,
saved when the runner closes. `tests/test_tensorrt_contract.py` checks every call below
against the real tensorrt_rtx bindings."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from vitedge.backends.tensorrt.engine_info import rebuild_hint
from vitedge.backends.tensorrt.flavours import TENSORRT_RTX, Flavour
from vitedge.backends.tensorrt.runner import TensorRTRunner
from vitedge.errors import MissingDependency, VitedgeError
from vitedge.fileio import write_bytes_atomic

SPECIALIZATION = {"lazy": "LAZY", "eager": "EAGER", "none": "NONE"}
CUDA_GRAPHS = {"disabled": "DISABLED", "whole_graph_capture": "WHOLE_GRAPH_CAPTURE"}


def runtime_cache_path(engine: str | Path) -> Path:
    p = Path(engine)
    return p.with_name(p.name + ".runtime-cache")


class TensorRTRTXRunner(TensorRTRunner):
    """A TensorRT for RTX engine on this machine's RTX GPU."""

    backend = "tensorrt-rtx"
    flavour: Flavour = TENSORRT_RTX

    def __init__(self, path: str | Path, cuda_graph: bool = False):
        self._rtx_graphs = cuda_graph  # the runtime captures whole graphs itself
        self.runtime_config: Any = None
        self.runtime_cache: Any = None
        super().__init__(path, cuda_graph=False)

    def _module(self) -> Any:
        trt = TENSORRT_RTX.import_module()
        if trt is None:
            raise MissingDependency("running a TensorRT for RTX engine needs tensorrt_rtx",
                                    "pip install tensorrt-rtx-cu13")
        return trt

    def _check_runtime(self, data: bytes) -> None:
        trt = self.trt
        validity, diagnostics = self.runtime.get_engine_validity(data)
        if validity == trt.EngineValidity.INVALID:
            reasons = [name.lower().replace("_", " ") for name, flag in
                       trt.EngineInvalidityDiagnostics.__members__.items()
                       if int(diagnostics) & int(flag.value)]
            raise VitedgeError(f"TensorRT for RTX cannot run {self.path.name} here: "
                               f"{', '.join(reasons) or 'invalid'}", rebuild_hint(self.info))
        if validity == trt.EngineValidity.SUBOPTIMAL:
            self.warnings.append(f"{self.path.name} runs here, but not as fast as it could "
                                 "(TensorRT for RTX says it is suboptimal for this GPU)")

    def _create_context(self) -> Any:
        trt, settings = self.trt, self.info.runtime
        config = self.engine.create_runtime_config()
        config.dynamic_shapes_kernel_specialization_strategy = getattr(
            trt.DynamicShapesKernelSpecializationStrategy,
            SPECIALIZATION[settings.get("dynamic_shapes", "lazy")])
        graphs = "whole_graph_capture" if self._rtx_graphs else settings.get(
            "cuda_graph_strategy", "disabled")
        config.cuda_graph_strategy = getattr(trt.CudaGraphStrategy, CUDA_GRAPHS[graphs])
        if settings.get("runtime_cache", True):
            self.runtime_cache = config.create_runtime_cache()
            cache = runtime_cache_path(self.path)
            if cache.is_file():
                try:
                    self.runtime_cache.deserialize(cache.read_bytes())
                except Exception:  # noqa: BLE001 - a stale or foreign cache is rebuilt
                    self.warnings.append(f"{cache.name} could not be used; the kernels are "
                                         "compiled again")
            config.set_runtime_cache(self.runtime_cache)
        self.runtime_config = config
        return self.engine.create_execution_context(config)

    def _before_release(self) -> None:
        if self.runtime_cache is not None:
            with contextlib.suppress(Exception):  # a cache that cannot be kept is rebuilt
                write_bytes_atomic(runtime_cache_path(self.path),
                                   bytes(self.runtime_cache.serialize()))
            self.runtime_cache = None
        self.runtime_config = None
