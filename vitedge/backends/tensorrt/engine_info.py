"""The JSON file beside a TensorRT engine (`model.engine` -> `model.engine.json`): what the
engine was built from, on which GPU and TensorRT, for which batch range. A TensorRT engine
only runs on the GPU and TensorRT it was built for (unless built hardware- or
version-compatible); loading checks this file first and refuses a mismatch with one line
instead of TensorRT's deserialisation error. Pure Python: testable anywhere."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.inputs import read_json
from vitedge.version import __version__

SIDECAR_SCHEMA = 1


@dataclass
class EngineInfo:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    batch: str
    profile: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    manifest: dict[str, Any]
    onnx_sha256: str
    engine_sha256: str
    backend: str = "tensorrt"
    """The backend that built it and runs it: tensorrt or tensorrt-rtx."""
    compute_capabilities: list[str] = field(default_factory=list)
    """TensorRT for RTX: the compute capabilities the engine was built for."""
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    build_seconds: float = 0.0
    vitedge_version: str = __version__
    schema: int = SIDECAR_SCHEMA
    notes: list[str] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    """The build's check of this engine against ONNX Runtime on the same graph."""
    runtime: dict[str, Any] = field(default_factory=dict)
    """TensorRT for RTX: how the runner compiles kernels (dynamic_shapes,
    cuda_graph_strategy, runtime_cache), from the profile it was built with."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> EngineInfo:
        """The description at `path`, every field checked for its type (a sidecar is a
        file anyone can edit): one VitedgeError naming the first field that is wrong."""
        p = Path(path)
        if not p.exists():
            raise VitedgeError(f"{p} is missing: it describes the engine beside it",
                               "rebuild with `vitedge build`, which writes both")
        data = read_json(p, "vitedge engine description")
        if not isinstance(data, dict):
            raise VitedgeError(f"{p} is not a vitedge engine description (not an object)")
        schema = data.get("schema", 0)
        if isinstance(schema, int) and schema > SIDECAR_SCHEMA:
            raise VitedgeError(f"{p} was written by a newer vitedge", "upgrade vitedge")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise VitedgeError(f"{p}: unknown field '{unknown[0]}'", "was it written by a newer vitedge?")
        missing = [n for n, f in known.items() if n not in data and f.default is MISSING
                   and f.default_factory is MISSING]
        if missing:
            raise VitedgeError(f"{p} lacks '{missing[0]}'", "rebuild with `vitedge build`")
        for name, value in data.items():
            want = FIELD_TYPES[name]
            if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
                raise VitedgeError(f"{p}: '{name}' must be {want[0].__name__}, not {value!r:.60}",
                                   "rebuild with `vitedge build`")
        return cls(**data)


FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "tensorrt_version": (str,), "gpu_name": (str,), "compute_capability": (str,),
    "precision": (str,), "batch": (str,), "profile": (str,), "inputs": (list,),
    "outputs": (list,), "manifest": (dict,), "onnx_sha256": (str,), "engine_sha256": (str,),
    "backend": (str,), "compute_capabilities": (list,), "hardware_compatibility": (str,), "version_compatible": (bool,),
    "build_seconds": (float, int), "vitedge_version": (str,), "schema": (int,),
    "notes": (list,), "verification": (dict,), "runtime": (dict,),
}
"""Each sidecar field's JSON type, checked when a sidecar is read."""


def sidecar_path(engine: str | Path) -> Path:
    p = Path(engine)
    return p.with_name(p.name + ".json")


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".")[:3] if x.isdigit())


def _cc_tuple(cc: str) -> tuple[int, int]:
    major, _, minor = cc.partition(".")
    return int(major), int(minor or 0)


def compatibility_problem(info: EngineInfo, tensorrt_version: str, gpu_name: str,
                          compute_capability: str) -> str | None:
    """Why this engine cannot run on this GPU and TensorRT; None when it can.

    TensorRT's rules: a plan runs on the TensorRT version that built it, or, built
    version-compatible, on any later runtime of the same major version; on GPUs of the
    compute capability it was built for, or, built hardware-compatible (Ampere+), on any
    GPU of compute capability 8.0 or newer.
    """
    if info.backend == "tensorrt-rtx":
        return _rtx_problem(info, tensorrt_version, gpu_name, compute_capability)
    built, running = _version_tuple(info.tensorrt_version), _version_tuple(tensorrt_version)
    where = (f"built for {info.gpu_name} (compute {info.compute_capability}) with TensorRT "
             f"{info.tensorrt_version}; this machine has {gpu_name} (compute "
             f"{compute_capability}) with TensorRT {tensorrt_version}")
    if info.version_compatible:
        if running[:1] != built[:1] or running < built:
            return f"the engine was {where}: a version-compatible engine needs TensorRT " \
                   f"{built[0]}.x at {info.tensorrt_version} or later"
    elif running != built:
        return f"the engine was {where}: engines run only on the TensorRT that built them"
    cc_built, cc_running = _cc_tuple(info.compute_capability), _cc_tuple(compute_capability)
    if info.hardware_compatibility == "ampere+":
        if cc_running < (8, 0):
            return f"the engine was {where}: a hardware-compatible engine needs compute 8.0+"
    elif cc_running != cc_built:
        return f"the engine was {where}: engines run only on the GPU generation that built them"
    return None


def _rtx_problem(info: EngineInfo, version: str, gpu_name: str, cc: str) -> str | None:
    """TensorRT for RTX: the engine runs on the compute capabilities it targets, with a
    TensorRT for RTX runtime of its major version at least as new as its builder."""
    built, running = _version_tuple(info.tensorrt_version), _version_tuple(version)
    targets = ", ".join(info.compute_capabilities) or info.compute_capability
    if running[:1] != built[:1] or running < built:
        return (f"the engine was built with TensorRT for RTX {info.tensorrt_version}; this "
                f"machine has {version}: it needs {built[0]}.x at {info.tensorrt_version} or later")
    if info.compute_capabilities and cc not in info.compute_capabilities:
        return (f"the engine was built for compute capabilities {targets}; this machine's "
                f"{gpu_name} is {cc}")
    return None


def rebuild_hint(info: EngineInfo) -> str:
    source = info.manifest.get("source", {}).get("file", "MODEL")
    return (f"rebuild on this machine: vitedge build {source} --precision {info.precision}"
            + (f" --profile {info.profile}" if info.profile else ""))
