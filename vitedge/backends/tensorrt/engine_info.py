"""The JSON file beside a TensorRT engine (`model.engine` -> `model.engine.json`): what the
engine was built from, on which GPU and TensorRT, for which batch range. A TensorRT engine
only runs on the GPU and TensorRT it was built for (unless built hardware- or
version-compatible); loading checks this file first and refuses a mismatch with one line
instead of TensorRT's deserialisation error. Pure Python: testable anywhere."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitedge import __version__
from vitedge.errors import VitedgeError

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
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    build_seconds: float = 0.0
    vitedge_version: str = __version__
    schema: int = SIDECAR_SCHEMA
    notes: list[str] = field(default_factory=list)
    verification: dict[str, Any] = field(default_factory=dict)
    """The build's check of this engine against ONNX Runtime on the same graph."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def read(cls, path: str | Path) -> EngineInfo:
        p = Path(path)
        if not p.is_file():
            raise VitedgeError(f"{p} is missing: it describes the engine beside it",
                               "rebuild with `vitedge build`, which writes both")
        try:
            data = json.loads(p.read_text())
            if int(data.get("schema", 0)) > SIDECAR_SCHEMA:
                raise VitedgeError(f"{p} was written by a newer vitedge", "upgrade vitedge")
            return cls(**data)
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise VitedgeError(f"{p} is not a vitedge engine description: {exc}") from exc


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


def rebuild_hint(info: EngineInfo) -> str:
    source = info.manifest.get("source", {}).get("file", "MODEL")
    return (f"rebuild on this machine: vitedge build {source} --precision {info.precision}"
            + (f" --profile {info.profile}" if info.profile else ""))
