"""TensorRT (10.x / 11.x) and TensorRT for RTX (1.x) share their Python API for everything
vitedge does (ONNX parser, strongly typed network, optimization profiles, builder config,
progress monitor, runtime, execution context), so one builder and one runner serve both.
Where they differ, the difference is stated here, once:

| | TensorRT 10.x / 11.x | TensorRT for RTX |
|---|---|---|
| module | `tensorrt` (`tensorrt_lean` to run) | `tensorrt_rtx` |
| strongly typed | a flag on 10.x, always on 11.x | always (the flag silences a warning) |
| timing cache | yes (`--timing-cache`) | no effect (deprecated in 1.2): kernels are JIT-compiled on the user's GPU, kept in a runtime cache beside the engine |
| DLA | Jetson AGX / NX (10.x up to 10.7, 11.4.1+) | no |
| hardware / version compatibility | builder flags | no (an engine targets compute capabilities instead) |
| build targets | the GPU it builds on | `set_compute_capability`: any of SM75, SM80, SM86, SM89, SM120, SM121 |
| needs a GPU to build | yes | no (CPU-only ahead-of-time build), except for `current` |
| runs on | Jetson, desktop, data centre | Linux x86-64 and Windows RTX GPUs: not Jetson, not Hopper (no SM90) |
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Flavour:
    backend: str
    """vitedge's name for it (`--backend`, the sidecar's `backend`)."""
    module: str
    product: str
    timing_cache: bool
    dla: bool
    compatibility_flags: bool
    """Hardware- and version-compatibility builder flags."""
    compute_targets: bool
    """Builds for chosen compute capabilities (`set_compute_capability`)."""
    gpu_to_build: bool

    def import_module(self) -> ModuleType | None:
        """The real module (with a Builder), or None where it is not installed."""
        try:
            module = importlib.import_module(self.module)
        except Exception:  # noqa: BLE001 - a broken install counts as absent
            return None
        return module if hasattr(module, "Builder") else None


TENSORRT = Flavour("tensorrt", "tensorrt", "TensorRT", timing_cache=True, dla=True,
                   compatibility_flags=True, compute_targets=False, gpu_to_build=True)
TENSORRT_RTX = Flavour("tensorrt-rtx", "tensorrt_rtx", "TensorRT for RTX", timing_cache=False,
                       dla=False, compatibility_flags=False, compute_targets=True,
                       gpu_to_build=False)
FLAVOURS = {f.backend: f for f in (TENSORRT, TENSORRT_RTX)}


def collecting_logger(trt: Any) -> Any:
    """A TensorRT ILogger that keeps each message (severity, text) instead of printing it,
    so vitedge can show warnings as one line each and put errors into its own message."""

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            level = str(severity).split(".")[-1]
            if level in ("INTERNAL_ERROR", "ERROR", "WARNING"):
                self.messages.append((level, msg))

        def errors(self) -> list[str]:
            return [m for level, m in self.messages if level != "WARNING"]

    return Collecting()
