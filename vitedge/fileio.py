"""Atomic writes and file fingerprints: an interrupted command never leaves a half-written
file, and never a temporary one either.

Every output is written to a temporary file beside its target, named
`.TARGET.vitedge-PID-RANDOM.tmpSUFFIX`, and renamed onto the target only when complete.
The temporary file is registered the moment it exists: SIGTERM and SIGINT (handlers that
`install_signal_cleanup` sets, the CLI does) remove every registered one, and a later write
to the same target removes the stale ones of processes that no longer run (SIGKILL gives
no chance to clean up). A full disk or a read-only folder is a VitedgeError, not a crash.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError

_LIVE: set[Path] = set()
_LOCK = threading.Lock()
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.vitedge-(?P<pid>\d+)-[0-9a-f]+\.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(target: Path, exc: OSError) -> VitedgeError:
    """One line for an OSError while writing `target`: full disk, read-only, no access."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied"}.get(exc.errno or 0, exc.strerror or str(exc))
    return VitedgeError(f"cannot write {target}: {reason}",
                        "free space or choose another output path")


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files a killed vitedge process left beside `target`."""
    removed = []
    with contextlib.suppress(OSError):
        for p in target.parent.iterdir():
            m = TEMP_PATTERN.match(p.name)
            if not m or m.group("name") != target.name or _alive(int(m.group("pid"))):
                continue
            _remove(p)
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A new empty temporary file beside `path`, registered for cleanup; the caller moves
    it onto `path` (os.replace) or unlinks it, then calls `release`."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        # the suffix stays last: writers that pick a format by extension (video) still can
        name = f".{target.name}.vitedge-{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}"
        tmp = target.parent / name
        with _LOCK:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
            _LIVE.add(tmp)
        os.close(fd)
    except OSError as exc:
        raise write_error(target, exc) from exc
    return tmp


def release(tmp: Path) -> None:
    """Forget a temporary file (moved into place or removed), unlinking it if still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    with _LOCK:
        _LIVE.discard(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    OSErrors from the block (a full disk while writing) become one VitedgeError."""
    target = Path(path)
    if target.is_dir():
        raise VitedgeError(f"{target} is a folder", "give a file name")
    tmp = temporary_path(target)
    try:
        try:
            yield tmp
            os.replace(tmp, target)
        except OSError as exc:
            raise write_error(target, exc) from exc
    finally:
        release(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to fill; it becomes `path` only if the block
    succeeds (a folder of many files, such as a model repository, appears whole or not at
    all). `path` must not exist, or be an empty folder; it is never merged into."""
    import shutil

    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise VitedgeError(f"{target} exists and is not empty",
                           "choose a new folder, or remove the old one first")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(target)
        tmp = target.parent / f".{target.name}.vitedge-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        with _LOCK:
            tmp.mkdir()
            _LIVE.add(tmp)
    except OSError as exc:
        raise write_error(target, exc) from exc
    try:
        try:
            yield tmp
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()  # the empty folder the user made
            os.rename(tmp, target)
        except OSError as exc:
            raise write_error(target, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with _LOCK:
            _LIVE.discard(tmp)


def _remove(tmp: Path) -> None:
    import shutil

    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def cleanup_temporary_files() -> None:
    """Remove every temporary file and folder this process still holds (on a signal, or at
    exit)."""
    with _LOCK:
        live = list(_LIVE)
        _LIVE.clear()
    for tmp in live:
        _remove(tmp)


def install_signal_cleanup() -> None:
    """On SIGTERM and SIGINT, remove this process's temporary files before it ends; the
    signal then acts as before (KeyboardInterrupt for SIGINT, exit code 143 for SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_term(signum: int, _frame: Any) -> None:
        cleanup_temporary_files()
        raise SystemExit(128 + signum)

    def on_int(signum: int, frame: Any) -> None:
        cleanup_temporary_files()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)


def refuse_overwriting_inputs(output: str | os.PathLike[str] | None,
                              *inputs: str | os.PathLike[str] | None) -> None:
    """A VitedgeError when `output` is one of `inputs` (paths resolved, links followed; a
    folder input counts with every file inside it): an output never destroys an input."""
    if output is None:
        return
    out = Path(output).resolve()
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        candidates = [p]
        if p.is_dir():
            candidates = [f for f in p.rglob("*") if f.is_file()]
        for c in candidates:
            if c.resolve() == out or (c.exists() and out.exists() and os.path.samefile(c, out)):
                raise VitedgeError(f"the output {output} is the input {c}: writing it would "
                                   "destroy the input", "choose another -o")


MAX_JSON_BYTES = 256 << 20


def require_regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """`path` if it is a regular file; a FIFO, device or socket would block or never end
    when read, and a folder is not a file: each is one VitedgeError."""
    import stat

    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise VitedgeError(f"no such file: {p}", f"give the path of a {what}") from None
    except OSError as exc:
        raise VitedgeError(f"cannot read {p}: {exc.strerror or exc}") from exc
    if stat.S_ISDIR(mode):
        raise VitedgeError(f"{p} is a folder, not a {what}")
    if not stat.S_ISREG(mode):
        raise VitedgeError(f"{p} is not a regular file (a pipe, device or socket)",
                           f"give a {what} on disk")
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


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> str:
    """One fingerprint for a checkpoint stored as several files (sorted by name)."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    digest = hashlib.sha256()
    for p in sorted(paths):
        digest.update(p.name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()
