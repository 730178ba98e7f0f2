"""Backends: one folder per backend, each with its build side (ONNX in, artifact out) and
its run side (a `Runner`, `base.py`); `load_runner` is the only place that decides which
backend runs a file, from what the file is, not what it is called:

- an engine with its vitedge sidecar (`ENGINE.json`): the backend the sidecar names
  (`tensorrt`, or `tensorrt-rtx`);
- an ONNX model with a vitedge manifest: ONNX Runtime (a `vitedge build` artifact as it
  was optimized, an export or a quantized graph as it is).

A new backend is a new folder here and one line in BACKENDS."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitedge.backends.base import Runner, TensorInfo
from vitedge.errors import VitedgeError

__all__ = ["BACKENDS", "Runner", "TensorInfo", "backend_of", "is_engine", "load_runner"]

BACKENDS: dict[str, str] = {
    "onnxruntime": "vitedge.backends.onnxruntime.runner:OnnxRuntimeRunner",
    "tensorrt": "vitedge.backends.tensorrt.runner:TensorRTRunner",
    "tensorrt-rtx": "vitedge.backends.tensorrt_rtx.runner:TensorRTRTXRunner",
}
"""backend name -> its Runner class, imported on first use."""


def is_engine(path: str | Path) -> bool:
    """An engine file: a vitedge sidecar (`ENGINE.json`) lies beside it."""
    from vitedge.backends.tensorrt.engine_info import sidecar_path

    return sidecar_path(path).is_file()


def backend_of(path: str | Path) -> str:
    """Which backend runs the artifact at `path`, from its sidecar or its manifest."""
    from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path
    from vitedge.manifest import MANIFEST_KEY, read_onnx_metadata

    p = Path(path)
    if not p.exists():
        raise VitedgeError(f"no such file: {p}")
    if not p.is_file():
        raise VitedgeError(f"{p} is not a file", "give a model file (.onnx or an engine)")
    if sidecar_path(p).is_file():
        return EngineInfo.read(sidecar_path(p)).backend
    try:  # what the file is, not whether it is intact: the runner checks that
        vitedge_onnx = MANIFEST_KEY in read_onnx_metadata(p)
    except (ValueError, OSError):
        vitedge_onnx = False
    if not vitedge_onnx:
        raise VitedgeError(f"{p} is not a model vitedge runs: neither an ONNX model with a "
                           "vitedge manifest nor an engine with its .json description beside it",
                           "export with `vitedge export` or build with `vitedge build`")
    return "onnxruntime"


def runner_class(backend: str) -> type[Runner]:
    if backend not in BACKENDS:
        raise VitedgeError(f"unknown backend '{backend}'", f"one of {', '.join(BACKENDS)}")
    module, _, name = BACKENDS[backend].partition(":")
    cls: type[Runner] = getattr(importlib.import_module(module), name)
    return cls


def load_runner(path: str | Path, threads: int | None = None, device: str | None = None,
                cuda_graph: bool = False) -> Runner:
    """The artifact at `path`, loaded by the backend that runs it. `threads`: ONNX
    Runtime's intra-op threads; `device` "gpu" lets ONNX Runtime use its CUDA / TensorRT
    providers where installed ("cpu", the default, keeps it on the CPU); `cuda_graph`:
    replay a TensorRT engine's execution as a CUDA graph."""
    if device not in (None, "cpu", "gpu"):
        raise VitedgeError(f"device '{device}' is not cpu or gpu")
    backend = backend_of(path)
    cls: Callable[..., Runner] = runner_class(backend)
    options: dict[str, Any] = {}
    if backend == "onnxruntime":
        if cuda_graph:
            raise VitedgeError(f"{Path(path).name} is an ONNX model: CUDA graphs are for "
                               "TensorRT engines", "drop cuda_graph, or build an engine")
        options = {"threads": threads, "use_gpu": device == "gpu"}
    else:
        options = {"cuda_graph": cuda_graph}
    return cls(path, **options)
