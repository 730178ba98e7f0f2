"""One exception family for problems the user can fix; the CLI prints them as one line."""

from __future__ import annotations

import errno
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any


class VitedgeError(Exception):
    """A user-facing error: what went wrong and, where known, what to do about it."""

    def __init__(self, message: str, hint: str | None = None,
                 details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details
        """What the command got done before it failed (the CLI prints it with --json)."""

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class CheckpointError(VitedgeError):
    """A checkpoint that cannot be read or does not hold a ViT vitedge supports."""


class ExportError(VitedgeError):
    """An export that failed its checks (verification, operator support)."""


class MissingDependency(VitedgeError):
    """An optional package is needed for this step; the hint names the extra to install."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail with the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{purpose} needs the Python package '{module.split('.')[0]}', which is not installed",
            f"pip install 'vitedge[{extra}]'",
        ) from exc


def write_error(target: Path, exc: OSError) -> VitedgeError:
    """One line for an OSError while writing `target`: full disk, read-only, no access."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of its "
              "folder"}.get(exc.errno or 0, exc.strerror or str(exc))
    return VitedgeError(f"cannot write {target}: {reason}",
                        "free space or choose another output path" if exc.errno in (
                            errno.ENOSPC, errno.EDQUOT) else "choose another output path")
