"""Is there a GPU and a TensorRT to use, and which: what `--backend auto` decides on and
what an engine's description is checked against. Each answer is None rather than an
exception where the thing is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from vitedge.machine import gpu_info

__all__ = ["gpu_info", "tensorrt_module"]


def tensorrt_module(lean_ok: bool = False) -> ModuleType | None:
    """The real TensorRT Python module (tensorrt-stubs alone has no Builder), or with
    `lean_ok` the lean runtime (enough to run an engine), or None."""
    names = ["tensorrt", "tensorrt_lean", "tensorrt_lean_bindings"] if lean_ok else ["tensorrt"]
    for name in names:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a broken install counts as absent
            continue
        if hasattr(module, "Builder" if not lean_ok else "Runtime"):
            return module
    return None
