"""What this machine is, asked without any backend: its NVIDIA GPU (through cuda-python),
whether it is a Jetson and which. The device profile vitedge suggests, `doctor` and `bench`
read it; each answer is None rather than an exception where the thing is absent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_THREADS = 1024
"""The most threads a session is given (a profile's `threads`, `--threads`)."""


def import_cudart() -> Any:
    """cuda-python's runtime module (its location moved in cuda-python 12.6), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


def gpu_info() -> tuple[str, str] | None:
    """(name, compute capability "8.7") of CUDA device 0, through cuda-python."""
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


def jetson_model() -> str | None:
    """The Jetson's model string (/proc/device-tree/model), or None elsewhere."""
    p = Path("/proc/device-tree/model")
    try:
        return p.read_text(errors="replace").strip("\x00\n ") if p.exists() else None
    except OSError:
        return None
