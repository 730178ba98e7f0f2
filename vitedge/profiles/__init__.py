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
PRECISIONS = ("fp32", "fp16", "int8", "fp8", "nvfp4")


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
class Profile:
    """A device build profile: the backend and precision it builds, the batch range, and
    each backend's own table (`profile.tensorrt`, `profile.onnxruntime`, ...: the sections
    the backends register, `vitedge.backends.profile_sections`)."""

    name: str
    description: str
    backend: str
    precision: str
    batch: BatchRange = BatchRange()
    sections: dict[str, Any] = field(default_factory=dict)
    """Each registered backend's table, read or at its defaults."""
    targets: tuple[str, ...] = ()
    """The compute capabilities a TensorRT profile's engines run on ("8.7"), for the
    precision table (`vitedge.backends.precisions`); TensorRT for RTX profiles name theirs
    in [tensorrt_rtx], the CPU's is "cpu"."""
    match: tuple[str, ...] = ()
    """Substrings of the Jetson model or GPU name this profile is for (doctor's pick)."""
    notes: tuple[str, ...] = field(default=())
    path: str = ""

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        if name in _section_types():  # a profile made before that backend was registered
            return _section_types()[name]()
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        sections = {name: asdict(self.__getattr__(name)) for name in _section_types()}
        return {"name": self.name, "description": self.description, "backend": self.backend,
                "precision": self.precision, "targets": list(self.targets),
                "batch": asdict(self.batch), **sections,
                "match": list(self.match), "notes": list(self.notes), "path": self.path}


_TOP = ("description", "backend", "precision", "targets", "match", "notes", "batch")


def _section_types() -> dict[str, type]:
    from vitedge.backends import profile_sections

    return profile_sections()


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
    from vitedge.inputs import require_regular_file

    require_regular_file(p, "profile")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VitedgeError(f"profile {p} is not valid TOML: {exc}") from exc
    return profile_from_dict(p.stem, data, str(p))


def profile_from_dict(name: str, data: dict[str, Any], path: str = "") -> Profile:
    from vitedge.backends import names

    where = f"profile '{name}'"
    types = {"batch": BatchRange, **_section_types()}
    _no_unknown(data, {*_TOP, *types}, where)
    for key in ("description", "backend", "precision"):
        if key not in data:
            raise VitedgeError(f"{where} lacks '{key}'")
    if data["backend"] not in names():
        raise VitedgeError(f"{where}: backend '{data['backend']}' is not one of {', '.join(names())}")
    for key in ("targets", "match", "notes"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise VitedgeError(f"{where}: {key} must be a list of strings, not {value!r:.60}",
                               f'e.g. {key} = ["..."]')
    if not isinstance(data["description"], str):
        raise VitedgeError(f"{where}: description must be a string")
    if data["precision"] not in PRECISIONS:
        raise VitedgeError(f"{where}: precision '{data['precision']}' is not one of "
                           f"{', '.join(PRECISIONS)}")
    from vitedge.backends.precisions import TARGETS

    known = [t.id for t in TARGETS]
    for t in data.get("targets", []):
        if t not in known:
            raise VitedgeError(f"{where}: target '{t}' is not one of {', '.join(known)}",
                               "a compute capability as in `vitedge profiles --targets`")
    sections: dict[str, Any] = {}
    for key, cls in types.items():
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
    batch = sections.pop("batch")
    return Profile(name=name, description=str(data["description"]), backend=data["backend"],
                   precision=data["precision"], batch=batch, sections=sections,
                   targets=tuple(data.get("targets", ())), match=tuple(data.get("match", ())),
                   notes=tuple(data.get("notes", ())),
                   path=path)


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


def suggested_profile() -> str:
    """The shipped profile for this machine (its Jetson model or its GPU), `cpu` without."""
    from vitedge.machine import gpu_info, jetson_model

    gpu = gpu_info()
    return suggest_profile(jetson_model(), gpu[0] if gpu else None)


def profile_rows(profile: Profile) -> list[tuple[str, str]]:
    """`vitedge profiles NAME`: the profile in rows, its backend's settings as that backend
    shows them (`Backend.profile_rows`), then its notes."""
    from vitedge.backends import get
    from vitedge.backends.precisions import table_rows

    backend = get(profile.backend)
    return [("backend / precision", f"{profile.backend} / {profile.precision}"),
            ("batch (min:opt:max)", str(profile.batch)),
            *backend.profile_rows(profile),
            *table_rows(backend.precision_column(profile), backend.targets(profile)),
            *(("note", note) for note in profile.notes)]


def profiles_running(precision: str) -> tuple[str, ...]:
    """Shipped profiles whose every target accelerates `precision` with their backend."""
    from vitedge.backends import get
    from vitedge.backends.precisions import accelerated

    names = []
    for name in available():
        profile = load_profile(name)
        backend = get(profile.backend)
        targets = backend.targets(profile)
        if targets and all(precision in accelerated(backend.precision_column(profile), t)
                           for t in targets):
            names.append(name)
    return tuple(names)
