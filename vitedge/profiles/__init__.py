"""Device build profiles: the TOML files in this folder, read and validated.

Torch-free and TensorRT-free: `vitedge doctor` and the build use them on any machine. A
profile's backend tables are data its backend reads: which tables there are, and the
dataclass each is read into, come in with the `Schema` (`vitedge.target` hands in the
backends' registry), so nothing here knows a backend.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vitedge.errors import VitedgeError
from vitedge.precisions import MADE

if sys.version_info >= (3, 11):
    import tomllib
else:  # JetPack 6 ships Python 3.10
    import tomli as tomllib

PROFILE_DIR = Path(__file__).parent
T = TypeVar("T")


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
    each backend's own table (`profile.section("tensorrt", TensorRTSettings)`: the sections
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
        """A backend's table by its name (`profile.tensorrt`), untyped, for scripts and
        plugins; vitedge's own backends read theirs typed (`section`)."""
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def section(self, name: str, kind: type[T]) -> T:
        """The backend table `name`, read into its dataclass `kind` (at its defaults where
        the profile was read before that backend was registered)."""
        table = self.sections.get(name)
        if table is None:
            return kind()
        if not isinstance(table, kind):
            raise TypeError(f"profile {self.name}: [{name}] is a {type(table).__name__}, "
                            f"not a {kind.__name__}")
        return table

    def to_dict(self) -> dict[str, Any]:
        sections = {name: asdict(table) for name, table in self.sections.items()}
        return {"name": self.name, "description": self.description, "backend": self.backend,
                "precision": self.precision, "targets": list(self.targets),
                "batch": asdict(self.batch), **sections,
                "match": list(self.match), "notes": list(self.notes), "path": self.path}


_TOP = ("description", "backend", "precision", "targets", "match", "notes", "batch")


@dataclass(frozen=True)
class Schema:
    """What a profile holds besides its own keys, as the backends' registry says: the
    backends it may name, each backend's table (TOML name -> the dataclass it is read
    into), and the targets the precision table knows (`vitedge.backends.precisions`)."""

    backends: tuple[str, ...]
    sections: dict[str, type]
    targets: tuple[str, ...]


def available() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def read_profile(name_or_path: str | Path, schema: Schema) -> Profile:
    """A shipped profile by name, or a TOML file by path, its backend tables read as
    `schema` says (`vitedge.target.load_profile` hands in the registry's)."""
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
    return profile_from_dict(p.stem, data, schema, str(p))


def profile_from_dict(name: str, data: dict[str, Any], schema: Schema, path: str = "") -> Profile:
    where = f"profile '{name}'"
    types = {"batch": BatchRange, **schema.sections}
    _no_unknown(data, {*_TOP, *types}, where)
    for key in ("description", "backend", "precision"):
        if key not in data:
            raise VitedgeError(f"{where} lacks '{key}'")
    if data["backend"] not in schema.backends:
        raise VitedgeError(f"{where}: backend '{data['backend']}' is not one of "
                           f"{', '.join(schema.backends)}")
    for key in ("targets", "match", "notes"):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise VitedgeError(f"{where}: {key} must be a list of strings, not {value!r:.60}",
                               f'e.g. {key} = ["..."]')
    if not isinstance(data["description"], str):
        raise VitedgeError(f"{where}: description must be a string")
    if data["precision"] not in MADE:
        raise VitedgeError(f"{where}: precision '{data['precision']}' is not one of "
                           f"{', '.join(MADE)}")
    known = schema.targets
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
