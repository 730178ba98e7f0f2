"""Deprecated: the runner interface is `vitedge.backends` (`load_runner`, `Runner`).
`load_model`, `OnnxRuntimeModel` and `TensorRTModel` still work and warn."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from vitedge.backends import Runner, load_runner

Model = Runner


def load_model(path: str | Path, threads: int | None = None) -> Runner:
    warnings.warn("vitedge.runtime.backend.load_model is vitedge.backends.load_runner",
                  DeprecationWarning, stacklevel=2)
    return load_runner(path, threads)


_MOVED = {"OnnxRuntimeModel": ("vitedge.backends.onnxruntime.runner", "OnnxRuntimeRunner"),
          "TensorRTModel": ("vitedge.backends.tensorrt.runner", "TensorRTRunner")}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        module, new = _MOVED[name]
        warnings.warn(f"vitedge.runtime.backend.{name} is {module}.{new}", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module(module), new)
    raise AttributeError(name)
