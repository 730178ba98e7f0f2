"""Backends: one folder each, with its build side (ONNX in, artifact out), its run side (a
`Runner`) and its `Backend` object (`base.py`: everything else vitedge asks of it). This
module is the registry: the one list of backends, which `vitedge build`, `inspect`,
`bench`, `serve`, `profiles` and `doctor` take their choices from, and `load_runner`, the
only place that decides which backend runs a file, from what the file is (an engine's
description, an ONNX model's manifest), not what it is called.

A new backend is a new folder here and one line in BACKENDS. From outside vitedge: one
`register` call, an entry point in the `vitedge.backends` group, or
VITEDGE_BACKENDS="name=module:Class,..." (which processes vitedge starts inherit)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from vitedge.backends.base import Backend, Runner, TensorInfo
from vitedge.errors import VitedgeError

__all__ = ["BACKENDS", "EMBEDDED", "Backend", "Runner", "TensorInfo", "all_backends",
           "backend_of", "built_by", "claimant", "embedded", "get", "load_runner", "names", "register", "unregister"]

BACKENDS: dict[str, str] = {
    "onnxruntime": "vitedge.backends.onnxruntime.backend:OnnxRuntimeBackend",
    "tensorrt": "vitedge.backends.tensorrt.backend:TensorRTBackend",
    "tensorrt-rtx": "vitedge.backends.tensorrt_rtx.backend:TensorRTRTXBackend",
    "openvino": "vitedge.backends.openvino.backend:OpenVINOBackend",
}
"""backend name -> its Backend class ("module:Class"), imported on first use."""

EMBEDDED = "onnxruntime"
"""The embedded default: it runs any vitedge ONNX model on any machine, and a build whose
profile's backend cannot build here falls back to it."""

ENTRY_POINTS = "vitedge.backends"
"""Installed packages add backends with an entry point in this group (NAME = module:Class)."""
ENVIRONMENT = "VITEDGE_BACKENDS"
"""More backends, "name=module:Class" separated by commas."""

_LOADED: dict[str, Backend] = {}
_PLUGINS_READ = False


def register(name: str, target: str | type[Backend]) -> None:
    """Add a backend: `target` is its Backend class or "module:Class". Its folder is all
    the code it needs; every command offers it from here on."""
    if not isinstance(name, str) or not name or name == "auto":
        raise VitedgeError(f"'{name}' cannot name a backend")
    _read_plugins()
    BACKENDS[name] = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    _LOADED.pop(name, None)


def unregister(name: str) -> None:
    """Remove a backend `register` added."""
    BACKENDS.pop(name, None)
    _LOADED.pop(name, None)


def _read_plugins() -> None:
    """The backends installed packages and the environment add (once per process)."""
    global _PLUGINS_READ
    if _PLUGINS_READ:
        return
    _PLUGINS_READ = True
    import os
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        BACKENDS.setdefault(ep.name, ep.value)
    for item in filter(None, os.environ.get(ENVIRONMENT, "").split(",")):
        name, _, target = item.partition("=")
        if not name.strip() or ":" not in target:
            raise VitedgeError(f"{ENVIRONMENT} holds '{item}', not name=module:Class")
        BACKENDS.setdefault(name.strip(), target.strip())


def names() -> list[str]:
    """Every registered backend's name, in registry order."""
    _read_plugins()
    return list(BACKENDS)


def get(name: str) -> Backend:
    """The backend called `name`, or one VitedgeError listing those there are."""
    _read_plugins()
    if name not in BACKENDS:
        import difflib

        near = difflib.get_close_matches(str(name), list(BACKENDS), n=1)
        raise VitedgeError(f"unknown backend '{name}'",
                           f"did you mean '{near[0]}'?" if near else
                           f"one of {', '.join(BACKENDS)}")
    if name not in _LOADED:
        module, _, cls = BACKENDS[name].partition(":")
        backend = getattr(importlib.import_module(module), cls)()
        if backend.name != name:
            raise VitedgeError(f"the backend registered as '{name}' calls itself "
                               f"'{backend.name}'", "register it under its own name")
        _LOADED[name] = backend
    return _LOADED[name]


def all_backends() -> list[Backend]:
    return [get(name) for name in names()]


def embedded() -> Backend:
    return get(EMBEDDED)


def built_by(metadata: dict[str, str]) -> str | None:
    """The backend a vitedge ONNX model was built for, from its metadata (the manifest's
    `source.backend`); None for an export or a quantized graph."""
    from vitedge.manifest import MANIFEST_KEY

    try:
        source = json.loads(metadata[MANIFEST_KEY]).get("source", {})
    except (KeyError, ValueError, AttributeError, RecursionError):
        return None
    backend = source.get("backend") if isinstance(source, dict) else None
    return backend if isinstance(backend, str) else None


def claimant(path: Path) -> Backend | None:
    """The first backend that claims the file at `path` as its artifact, or None."""
    return next((b for b in all_backends() if b.claims(path)), None)


def backend_of(path: str | Path) -> str:
    """Which backend runs the artifact at `path`: the first that claims it."""
    p = Path(path)
    if not p.exists():
        raise VitedgeError(f"no such file: {p}")
    if not p.is_file():
        raise VitedgeError(f"{p} is not a file", "give a model file (.onnx or an engine)")
    backend = claimant(p)
    if backend is not None:
        return backend.name
    raise VitedgeError(f"{p} is not a model vitedge runs: neither an ONNX model with a "
                       "vitedge manifest nor an engine with its .json description beside it",
                       "export with `vitedge export` or build with `vitedge build`")


def is_onnx_artifact(path: str | Path) -> bool:
    """Whether the file at `path` is (or would be read as) an ONNX model, not an engine or
    another file a backend describes."""
    p = Path(path)
    backend = claimant(p) if p.is_file() else None
    return backend is None or backend.onnx_artifact


def load_runner(path: str | Path, threads: int | None = None, device: str | None = None,
                cuda_graph: bool = False) -> Runner:
    """The artifact at `path`, loaded by the backend that runs it. `threads`: ONNX
    Runtime's intra-op threads; `device` "gpu" lets ONNX Runtime use its CUDA / TensorRT
    providers where installed ("cpu", the default, keeps it on the CPU); `cuda_graph`:
    replay a TensorRT engine's execution as a CUDA graph."""
    if device not in (None, "cpu", "gpu"):
        raise VitedgeError(f"device '{device}' is not cpu or gpu")
    return get(backend_of(path)).load(path, threads, device, cuda_graph)


def profile_sections() -> dict[str, type]:
    """Each backend's device-profile table: TOML name -> the dataclass it is read into."""
    return {b.settings[0]: b.settings[1] for b in all_backends() if b.settings}
