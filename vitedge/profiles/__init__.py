"""Device build profiles: the TOML files in this folder, read and validated.

Torch-free and TensorRT-free: `vitedge doctor` and the build use them on any machine.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 ships Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent
MAX_THREADS = 1024
PRECISIONS = ("fp32", "fp16", "int8")
BACKENDS = ("tensorrt", "tensorrt-rtx", "onnxruntime")
RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1", "current")
RTX_SPECIALIZATION = ("lazy", "eager", "none")
RTX_CUDA_GRAPHS = ("disabled", "whole_graph_capture")
HARDWARE_COMPATIBILITY = ("none", "ampere+", "same-compute-capability")


@dataclass(frozen=True)
class BatchRange:
    min: int = 1
    opt: int = 1
    max: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise VitedgeError(f"impossible batch range {self.min}:{self.opt}:{self.max}",
                               "need 1 <= min <= opt <= max")

    @classmethod
    def parse(cls, text: str) -> BatchRange:
        """'MIN:OPT:MAX', or one number for a fixed batch."""
        parts = text.split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise VitedgeError(f"batch '{text}' is not MIN:OPT:MAX", "e.g. --batch 1:4:8") from None
        if len(values) == 1:
            values *= 3
        if len(values) != 3:
            raise VitedgeError(f"batch '{text}' is not MIN:OPT:MAX", "e.g. --batch 1:4:8")
        return cls(*values)

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class TensorRTSettings:
    workspace_mb: int = 1024
    optimization_level: int = 3
    dla_core: int = -1
    """-1: no DLA; 0 or 1: that DLA core, with GPU fallback."""
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.workspace_mb <= 0:
            raise VitedgeError("tensorrt.workspace_mb must be positive")
        if not 0 <= self.optimization_level <= 5:
            raise VitedgeError("tensorrt.optimization_level must be 0..5")
        if self.dla_core < -1:
            raise VitedgeError("tensorrt.dla_core must be -1 (none) or a core index")
        if self.hardware_compatibility not in HARDWARE_COMPATIBILITY:
            raise VitedgeError(f"tensorrt.hardware_compatibility '{self.hardware_compatibility}'"
                               f" is not one of {', '.join(HARDWARE_COMPATIBILITY)}")


@dataclass(frozen=True)
class TensorRTRTXSettings:
    """TensorRT for RTX (`vitedge.backends.tensorrt.flavours`): what the engine targets and
    how its kernels are compiled on the user's GPU."""

    compute_capabilities: tuple[str, ...] = ("8.6", "8.9", "12.0")
    """Build targets: Ampere RTX 30xx, Ada RTX 40xx, Blackwell RTX 50xx by default; 7.5 for
    Turing (explicit only), `current` for this machine's GPU."""
    runtime_cache: bool = True
    """Keep the JIT-compiled kernels in ENGINE.runtime-cache beside the engine."""
    dynamic_shapes: str = "lazy"
    """Kernel specialisation for a new batch size: lazy (a fallback kernel first, the
    specialised one compiled in the background), eager, or none."""
    cuda_graph_strategy: str = "disabled"

    def __post_init__(self) -> None:
        if not self.compute_capabilities or any(
                c not in RTX_TARGETS for c in self.compute_capabilities):
            raise VitedgeError(f"tensorrt_rtx.compute_capabilities must be some of "
                               f"{', '.join(RTX_TARGETS)}")
        if self.dynamic_shapes not in RTX_SPECIALIZATION:
            raise VitedgeError(f"tensorrt_rtx.dynamic_shapes must be one of {', '.join(RTX_SPECIALIZATION)}")
        if self.cuda_graph_strategy not in RTX_CUDA_GRAPHS:
            raise VitedgeError(f"tensorrt_rtx.cuda_graph_strategy must be one of "
                               f"{', '.join(RTX_CUDA_GRAPHS)}")


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    threads: int = 0
    """0: ONNX Runtime's choice (every physical core)."""

    def __post_init__(self) -> None:
        if not 0 <= self.threads <= MAX_THREADS:
            raise VitedgeError(f"onnxruntime.threads must be 0 (automatic) to {MAX_THREADS}")


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    backend: str
    precision: str
    batch: BatchRange = BatchRange()
    tensorrt: TensorRTSettings = TensorRTSettings()
    tensorrt_rtx: TensorRTRTXSettings = TensorRTRTXSettings()
    onnxruntime: OnnxRuntimeSettings = OnnxRuntimeSettings()
    match: tuple[str, ...] = ()
    """Substrings of the Jetson model or GPU name this profile is for (doctor's pick)."""
    notes: tuple[str, ...] = field(default=())
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS: dict[str, type] = {"batch": BatchRange, "tensorrt": TensorRTSettings,
                              "tensorrt_rtx": TensorRTRTXSettings,
                              "onnxruntime": OnnxRuntimeSettings}
_TOP = {"description", "backend", "precision", "match", "notes", *_SECTIONS}


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name, or a TOML file by path."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise VitedgeError(f"no such profile file: {p}")
    else:
        p = PROFILE_DIR / f"{name_or_path}.toml"
        if not p.is_file():
            near = difflib.get_close_matches(str(name_or_path), available(), n=1, cutoff=0.5)
            hint = f"did you mean '{near[0]}'?" if near else f"one of {', '.join(available())}"
            raise VitedgeError(f"unknown profile '{name_or_path}'", hint)
    from vitedge.fileio import require_regular_file

    require_regular_file(p, "profile")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VitedgeError(f"profile {p} is not valid TOML: {exc}") from exc
    return profile_from_dict(p.stem, data, str(p))


def profile_from_dict(name: str, data: dict[str, Any], path: str = "") -> Profile:
    where = f"profile '{name}'"
    _no_unknown(data, _TOP, where)
    for key in ("description", "backend", "precision"):
        if key not in data:
            raise VitedgeError(f"{where} lacks '{key}'")
    if data["backend"] not in BACKENDS:
        raise VitedgeError(f"{where}: backend '{data['backend']}' is not one of {', '.join(BACKENDS)}")
    if data["precision"] not in PRECISIONS:
        raise VitedgeError(f"{where}: precision '{data['precision']}' is not one of "
                           f"{', '.join(PRECISIONS)}")
    sections: dict[str, Any] = {}
    for key, cls in _SECTIONS.items():
        table = data.get(key, {})
        if not isinstance(table, dict):
            raise VitedgeError(f"{where}: [{key}] must be a table")
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        _no_unknown(table, set(fields), f"{where} [{key}]")
        for k, v in table.items():
            want = fields[k]
            if (want in ("int", int) and (not isinstance(v, int) or isinstance(v, bool))) or \
                    (want in ("bool", bool) and not isinstance(v, bool)) or \
                    (want in ("str", str) and not isinstance(v, str)) or \
                    (str(want).startswith("tuple") and not (
                        isinstance(v, list) and all(isinstance(x, str) for x in v))):
                raise VitedgeError(f"{where}: {key}.{k} must be {want}, not {v!r}")
            if str(want).startswith("tuple"):
                table = {**table, k: tuple(v)}
        try:
            sections[key] = cls(**table)
        except VitedgeError as exc:
            raise VitedgeError(f"{where}: {exc.message}", exc.hint) from None
    return Profile(name=name, description=str(data["description"]), backend=data["backend"],
                   precision=data["precision"], match=tuple(data.get("match", ())),
                   notes=tuple(data.get("notes", ())), path=path, **sections)


def _no_unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            raise VitedgeError(f"{where}: unknown key '{key}'",
                               f"did you mean '{near[0]}'?" if near else
                               f"known keys: {', '.join(sorted(known))}")


def suggest_profile(jetson_model: str | None, gpu_name: str | None) -> str:
    """The shipped profile for a Jetson model string or a GPU name; `cpu` when neither."""
    for text in (jetson_model, gpu_name):
        if not text:
            continue
        for name in available():
            profile = load_profile(name)
            if any(m.lower() in text.lower() for m in profile.match):
                return name
    return "cpu" if not (jetson_model or gpu_name) else "desktop-rtx"
