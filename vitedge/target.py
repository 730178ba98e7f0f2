"""The build target: what one `vitedge build` is for, decided once from the options and the
device profile and handed down typed. The profile (read once), the backend, the precision,
the targets (compute capabilities, or "cpu") and the precision table's column they are
judged in, NVFP4's activation form, and whether the CPU backends are measured against each
other for it.

Here the device profiles meet the backends' registry: a profile is read with the tables the
backends register (`load_profile`), shown with its backend's rows (`profile_rows`), and
chosen for this machine (`suggested_profile`); `vitedge.profiles` itself knows no backend.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import vitedge.backends as backends
from vitedge.backends import Backend
from vitedge.backends.precisions import TARGETS, accelerated, check_precision, table_rows
from vitedge.errors import VitedgeError
from vitedge.options import BuildOptions
from vitedge.precisions import AUTO, BUILD, FROM_FP32
from vitedge.profiles import BatchRange, Profile, Schema, available, read_profile
from vitedge.profiles import profile_from_dict as read_profile_dict

# --- device profiles, read with the backends' tables -------------------------------------------


def schema() -> Schema:
    """What a profile may hold as the registry says now: its backends and their tables."""
    return Schema(tuple(backends.names()), backends.profile_sections(),
                  tuple(t.id for t in TARGETS))


def load_profile(name_or_path: str | Path) -> Profile:
    """A shipped profile by name, or a TOML file by path, with every backend's table."""
    return read_profile(name_or_path, schema())


def profile_from_dict(name: str, data: dict[str, Any], path: str = "") -> Profile:
    return read_profile_dict(name, data, schema(), path)


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
    backend = backends.get(profile.backend)
    return [("backend / precision", f"{profile.backend} / {profile.precision}"),
            ("batch (min:opt:max)", str(profile.batch)),
            *backend.profile_rows(profile),
            *table_rows(backend.precision_column(profile), backend.targets(profile)),
            *(("note", note) for note in profile.notes)]


def profiles_running(precision: str) -> tuple[str, ...]:
    """Shipped profiles whose every target accelerates `precision` with their backend."""
    return tuple(name for name in available()
                 if target_for(load_profile(name)).accelerates(precision))


# --- the target ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What a build is for, resolved once (`build_target`, `target_for`)."""

    profile: Profile
    backend: Backend
    precision: str
    """As asked (or the profile's): one of `vitedge.precisions.BUILD`."""
    batch: BatchRange
    """The batch range an engine's optimization profile covers."""
    targets: tuple[str, ...]
    """The compute capabilities (or "cpu") the artifact runs on (`Backend.targets`)."""
    column: str
    """The precision table's column for this backend and profile (`Backend.precision_column`)."""
    nvfp4_activations: str
    """NVFP4's activation form this backend builds: "nvfp4" (W4A4) or "fp8" (W4A8)."""
    reason: str = ""
    """Why this backend, in words (the build summary's)."""
    measured: bool = False
    """`--backend auto` on the CPU with nothing pinned: every CPU backend that builds this
    precision here is built, verified and timed, and the fastest kept (`vitedge.cpu_race`)."""
    notes: tuple[str, ...] = ()
    """What the precision table says of this precision here where it builds but is not
    accelerated."""

    def accelerates(self, precision: str) -> bool:
        """Whether every target runs `precision` natively with this backend."""
        return bool(self.targets) and all(precision in accelerated(self.column, t)
                                          for t in self.targets)


def target_for(profile: Profile, backend: Backend | None = None, precision: str | None = None,
               batch: BatchRange | None = None, reason: str = "", measured: bool = False
               ) -> Target:
    """The target of a build with `profile` (for its own backend unless another is given),
    at its precision and batch unless others are given."""
    backend = backend or backends.get(profile.backend)
    return Target(profile, backend, precision or profile.precision, batch or profile.batch,
                  backend.targets(profile), backend.precision_column(profile),
                  backend.nvfp4_activations(profile), reason, measured)


def build_target(options: BuildOptions, output: str | Path | None = None) -> Target:
    """The target of `vitedge build` with `options`: the profile and backend chosen
    (`choose_profile_and_backend`; an `-o` whose suffix names a CPU backend is the user's
    choice of it), the precision checked against the precision table, the backend's own
    requirements checked before any work. An output name never changes what is measured:
    with nothing pinned, the CPU backends race with `-o` as without it."""
    named = backend_named_by(output, options)
    if named is not None:  # -o x.ov.xml: the user's choice among the CPU backends
        options = replace(options, backend=named.name)
    profile, backend, reason = choose_profile_and_backend(options)
    if named is not None:
        reason = (f"-o {Path(str(output)).name} names an {named.product} artifact "
                  f"({named.suffix}): your choice, not measured against the other CPU backends")
    measured = options.backend == "auto" and options.profile is None and backend.runs_on_cpu
    precision = options.precision or profile.precision
    if precision not in BUILD:
        raise VitedgeError(f"unknown precision '{precision}'", f"use one of {', '.join(BUILD)}")
    if precision in FROM_FP32 and precision not in backend.computes_from_fp32:
        makes = [b.name for b in backends.all_backends() if precision in b.computes_from_fp32]
        raise VitedgeError(f"{backend.product} does not build {precision} models in vitedge",
                           f"--backend {' or '.join(makes)}" if makes else "--precision fp32")
    target = target_for(profile, backend, precision, profile.batch, reason, measured)
    notes = _check_precision(target)
    batch = BatchRange.parse(options.batch) if options.batch else profile.batch
    backend.require()  # fail before any work, with what is missing
    return replace(target, batch=batch, notes=tuple(notes))


def backend_named_by(output: str | Path | None, options: BuildOptions) -> Backend | None:
    """The CPU backend whose artifact suffix `-o` ends with (`.ort.onnx`, `.ov.xml`),
    where neither --backend nor --profile chose one: the name is the user's choice."""
    if output is None or options.backend != "auto" or options.profile is not None:
        return None
    named = [b for b in backends.all_backends() if Path(output).name.endswith(b.suffix)]
    return named[0] if len(named) == 1 and named[0].runs_on_cpu else None


def _check_precision(target: Target) -> list[str]:
    """Refuse, in one line, a precision a target of the profile cannot run with this
    backend (the precision table, `vitedge.backends.precisions`); the notes where it builds but is
    not accelerated."""
    if target.precision == AUTO or not target.targets:
        return []
    return check_precision(target.column, target.targets, target.precision,
                           f"profile {target.profile.name}", profiles_running(target.precision))


def choose_backend(requested: str, profile: Profile) -> tuple[str, str]:
    """(backend, why): the one asked for, else the profile's; a profile whose backend cannot
    build here is refused in one line (never another backend in its place) saying what is
    missing and which profiles do build here."""
    if requested != "auto":
        return backends.get(requested).name, "asked for with --backend"
    backend = backends.get(profile.backend)
    why_not = backend.unavailable()
    if why_not is None:
        return backend.name, backend.chosen(profile)
    raise VitedgeError(f"profile {profile.name} builds for {backend.product}, which cannot build "
                       f"here: {why_not}", _profiles_that_build_here())


def _profiles_that_build_here() -> str:
    here = [name for name in available()
            if backends.get(load_profile(name).backend).unavailable() is None]
    return f"profiles that build on this machine: {', '.join(here)} (`vitedge profiles`)"


def choose_profile_and_backend(options: BuildOptions) -> tuple[Profile, Backend, str]:
    """(profile, backend, why). A profile given is built for as it says, or refused where
    its backend cannot build here; a backend given brings its own default profile; with
    neither, this machine's profile, or the CPU's where that one's backend is missing."""
    if options.profile:
        profile = load_profile(options.profile)
        name, why = choose_backend(options.backend, profile)
        return profile, backends.get(name), why
    if options.backend != "auto":
        backend = backends.get(options.backend)
        profile = load_profile(backend.default_profile)
        return profile, backend, (f"asked for with --backend (profile {profile.name}, the "
                                  f"{backend.name} backend's default)")
    profile = load_profile(suggested_profile())
    why_not = backends.get(profile.backend).unavailable()
    if why_not is None:
        name, why = choose_backend("auto", profile)
        return profile, backends.get(name), why
    fallback = load_profile(backends.embedded().default_profile)
    name, _ = choose_backend("auto", fallback)
    return fallback, backends.get(name), (
        f"this machine's profile {profile.name} builds for "
        f"{backends.get(profile.backend).product}, but {why_not}; building for the CPU "
        f"(profile {fallback.name})")
