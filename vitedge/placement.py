"""Where a build puts its artifact when a finished one is already there: a rebuild for the
same target replaces it; one for another target (another device profile or backend) never
does silently. Under the default name the new artifact goes beside the old one, named
after its profile; under a name the user gave with -o the build refuses (--force
replaces)."""

from __future__ import annotations

from pathlib import Path

from vitedge.errors import VitedgeError


def built_for(path: Path) -> tuple[str, str] | None:
    """(backend, profile) an existing vitedge artifact records; None for a file vitedge did
    not build (or cannot read)."""
    import vitedge.backends as backends
    from vitedge.manifest import manifest_from_file

    try:
        backend = backends.claimant(path)
        if backend is None:
            return None
        if backends.is_onnx_artifact(path):
            manifest = manifest_from_file(path, verify=False)
            source = manifest.source if manifest is not None else {}
            if "backend" not in source:
                return None  # an export or a quantized graph, not a build's artifact
        else:
            described = backend.describe(path)
            source = (described.get("engine") or (described.get("manifest") or {}).get("source")
                      or {})
    except (VitedgeError, OSError, ValueError):
        return None
    return backend.name, str(source.get("profile", "?"))


def place_artifact(output: Path, backend: str, profile: str, suffix: str, explicit: bool,
                   force: bool, notes: list[str]) -> Path:
    """Where this build's artifact goes: `output`, unless a file for another target is
    there. A name the user gave (`explicit`) is refused then; the default name gives way to
    NAME.PROFILE+SUFFIX beside it, with a note. `force` replaces whatever is there."""
    if force or not output.exists():
        return output
    there = built_for(output)
    if there == (backend, profile):
        return output  # a rebuild for the same target
    what = (f"an artifact built for profile {there[1]} ({there[0]})" if there
            else "a file no vitedge build made")
    ours = f"profile {profile} ({backend})"
    if explicit:
        raise VitedgeError(f"{output} holds {what}; this build is for {ours} and does not "
                           "replace it", "give another -o, or add --force to replace it")
    base = output.name.removesuffix(suffix) if output.name.endswith(suffix) else output.stem
    beside = output.with_name(f"{base}.{profile}{suffix}")
    if beside.exists() and built_for(beside) != (backend, profile):
        raise VitedgeError(f"{output.name} and {beside.name} both hold other builds; this one "
                           f"is for {ours}", "give a name with -o, or add --force to replace "
                           f"{output.name}")
    notes.append(f"{output.name} holds {what}: left as it is; this build for {ours} is "
                 f"{beside.name}")
    return beside

