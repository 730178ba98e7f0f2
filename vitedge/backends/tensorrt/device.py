"""Is there a GPU and a TensorRT to use, and which: what `--backend auto` decides on and
what an engine's description is checked against. Each answer is None rather than an
exception where the thing is missing."""

from __future__ import annotations

import importlib
from types import ModuleType


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


def gpu_info() -> tuple[str, str] | None:
    """(name, compute capability "8.7") of CUDA device 0, through cuda-python."""
    from vitedge.backends.tensorrt.cuda import import_cudart

    cudart = import_cudart()
    if cudart is None:
        return None
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return None
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
    except Exception:  # noqa: BLE001 - no driver, no device: no GPU
        return None
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) \
        else str(prop.name)
    return name, f"{prop.major}.{prop.minor}"
