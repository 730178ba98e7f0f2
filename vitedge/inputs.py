"""Guards on what the user gives a command: a file that is not a regular file (a FIFO
would block), a JSON file too large or nested too deeply, an output that is one of the
inputs. Each is one VitedgeError, before anything is read or written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError


def refuse_overwriting_inputs(output: str | os.PathLike[str] | None,
                              *inputs: str | os.PathLike[str] | None) -> None:
    """A VitedgeError when `output` is one of `inputs` (paths resolved, links followed; a
    folder input counts with every file inside it): an output never destroys an input."""
    if output is None:
        return
    out = os.path.realpath(output)  # never raises: a link that loops stays as it is
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        candidates = [p]
        if p.is_dir():
            candidates = [f for f in p.rglob("*") if f.is_file()]
        for c in candidates:
            if os.path.realpath(c) == out or (c.exists() and os.path.exists(out) and
                                              os.path.samefile(c, out)):
                raise VitedgeError(f"the output {output} is the input {c}: writing it would "
                                   "destroy the input", "choose another -o")


MAX_JSON_BYTES = 256 << 20


def require_regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """`path` if it is a regular file; a FIFO, device or socket would block or never end
    when read, and a folder is not a file: each is one VitedgeError."""
    import stat

    p = Path(path)
    a = "an" if what[:1].lower() in "aeiou" else "a"  # an image, a model file
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise VitedgeError(f"no such file: {p}", f"give the path of {a} {what}") from None
    except OSError as exc:
        raise VitedgeError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise VitedgeError(f"{p} is a folder, not {a} {what}")
    if not stat.S_ISREG(mode):
        raise VitedgeError(f"{p} is not a regular file (a pipe, device or socket)",
                           f"give {a} {what} on disk")
    return p


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """A JSON file's content, or one VitedgeError: missing, not a regular file, too large,
    not UTF-8, not JSON, or nested too deeply to read."""
    import json

    p = require_regular_file(path, what)
    if p.stat().st_size > MAX_JSON_BYTES:
        raise VitedgeError(f"{p} is {p.stat().st_size >> 20} MB: too large for a {what}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise VitedgeError(f"{p} is not a {what}: not UTF-8 text") from exc
    except RecursionError as exc:
        raise VitedgeError(f"{p} is not a {what}: nested too deeply") from exc
    except ValueError as exc:
        raise VitedgeError(f"{p} is not a {what}: {exc}") from exc
    except OSError as exc:
        raise VitedgeError(f"cannot read {p}: {exc.strerror or exc}") from exc
