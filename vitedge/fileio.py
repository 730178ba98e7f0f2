"""Atomic writes and file fingerprints: an interrupted command never leaves a half-written
file.

- Bytes (`write_bytes_atomic`): written into a file without a name (Linux `O_TMPFILE`),
  which gets its name (`linkat`) only once it is complete: a SIGKILL leaves nothing. Over
  an existing file the name is a temporary one renamed onto it at once. Where the file
  system has no `O_TMPFILE` the named temporary file beside the target is used, and swept.
- Writers that need a path (a video writer, ONNX Runtime's saved model, a TensorRT build)
  get one in this process's scratch folder (`vitedge.lifetime`, which removes what is left
  on a signal and at exit); the result is moved onto its target when complete (`publish`).
A full disk or a read-only folder is a VitedgeError, not a crash.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError, write_error
from vitedge.lifetime import register, remove, scratch, unregister

TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.vitedge-(?P<pid>\d+)-[0-9a-f]+\.tmp")

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A fresh path in this process's scratch folder for a writer that makes `path`'s file,
    with `path`'s own name (writers that pick a format by extension still can, and files
    named after it, a model's data file, keep their names); the caller moves it onto `path`
    with `publish` or unlinks it, then calls `release`."""
    target = Path(path)
    folder = scratch() / secrets.token_hex(4)
    folder.mkdir()
    register(folder)
    _FOLDERS[folder / target.name] = folder
    return folder / target.name


_FOLDERS: dict[Path, Path] = {}
"""A temporary path `temporary_path` gave -> the scratch folder made for it."""


def release(tmp: Path) -> None:
    """Forget a temporary file (published or removed), removing what is still there (for
    a `temporary_path`, its whole folder: files written beside it too)."""
    target = _FOLDERS.pop(tmp, tmp)
    remove(target)
    unregister(target)


def output_file(path: str | os.PathLike[str]) -> Path:
    """The one rule for every file vitedge writes: the folders above it that are missing are
    made (as `explain -o` makes its folder); a folder where the file goes, or a file where a
    folder must go, is one VitedgeError."""
    target = Path(path)
    if target.is_dir():
        raise VitedgeError(f"{target} is a folder", "give a file name")
    if str(target.parent) not in ("", "."):
        make_folder(target.parent)
    return target


def publish(tmp: Path, target: Path) -> None:
    """Move the complete file `tmp` onto `target` (its missing folders made, `output_file`):
    a rename on the same file system, else a copy that gets its name only when complete."""
    output_file(target)
    try:
        os.replace(tmp, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(tmp, "rb") as src:
            _write_unnamed(target, lambda f: shutil.copyfileobj(src, f, 1 << 20))


def _write_unnamed(target: Path, fill: Any) -> None:
    """Write `target`'s bytes (`fill(file)`) into a file without a name and name it once
    complete; a named temporary file beside it where the file system has no O_TMPFILE."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target.parent, os.O_TMPFILE | os.O_WRONLY, 0o666 & ~_umask())
    except (OSError, AttributeError):
        fd = None  # no O_TMPFILE here
    if fd is None:
        tmp = _named_temporary(target)
        try:
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            release(tmp)
        return
    with os.fdopen(fd, "w+b") as f:
        fill(f)
        f.flush()
        os.fsync(f.fileno())
        try:
            _link(f.fileno(), target)
        except _NoLink:  # O_TMPFILE, but no way to name it here: the named file instead
            f.seek(0)
            _write_unnamed_fallback(target, f)


class _NoLink(OSError):
    """This process cannot give an unnamed file a name on this file system."""


def _write_unnamed_fallback(target: Path, src: Any) -> None:
    tmp = _named_temporary(target)
    try:
        with open(tmp, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        release(tmp)


_LIBC: Any = None


def _linkat(fd: int, target: Path) -> None:
    """Give the unnamed file `fd` the name `target`: linkat(AT_EMPTY_PATH) where this
    process may (root), else through /proc/self/fd (AT_SYMLINK_FOLLOW)."""
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    import ctypes

    if _LIBC.linkat(fd, b"", -100, os.fsencode(target), 0x1000) == 0:  # AT_FDCWD, AT_EMPTY_PATH
        return
    code = ctypes.get_errno()
    if code == errno.EEXIST:
        raise FileExistsError(code, os.strerror(code), str(target))
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        raise OSError(code, os.strerror(code), str(target))
    try:
        os.link(f"/proc/self/fd/{fd}", target, follow_symlinks=True)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise
        raise _NoLink(exc.errno, exc.strerror) from exc


def _link(fd: int, target: Path) -> None:
    if not target.exists():
        with contextlib.suppress(FileExistsError):
            _linkat(fd, target)
            return
    tmp = _named_temporary(target, create=False)
    try:
        _linkat(fd, tmp)
        os.replace(tmp, target)  # the only moment a name other than the target's exists
    finally:
        release(tmp)


def _named_temporary(target: Path, create: bool = True) -> Path:
    """`.TARGET.vitedge-PID-RANDOM.tmp` beside `target`, registered (swept by the next write
    of the same target if a SIGKILL leaves it)."""
    remove_stale(target)
    tmp = target.parent / f".{target.name}.vitedge-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    register(tmp)
    if create:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
        os.close(fd)
    return tmp


def remove_stale(target: Path) -> list[Path]:
    """Remove the temporary files a killed vitedge process left beside `target`."""
    removed = []
    with contextlib.suppress(OSError):
        for p in target.parent.iterdir():
            m = TEMP_PATTERN.match(p.name)
            if not m or m.group("name") != target.name or _alive(int(m.group("pid"))):
                continue
            remove(p)
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path (in the scratch folder) for `path`'s file; publish it onto
    `path` only if the block succeeds. OSErrors from the block (a full disk while writing)
    become one VitedgeError."""
    target = output_file(path)
    tmp = temporary_path(target)
    try:
        try:
            yield tmp
            publish(tmp, target)
        except OSError as exc:
            raise write_error(target, exc) from exc
    finally:
        release(tmp)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """`data` as the file at `path`, named only once complete."""
    target = output_file(path)
    try:
        _write_unnamed(target, lambda f: f.write(data))
    except OSError as exc:
        raise write_error(target, exc) from exc


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder (in the scratch folder) to fill; it becomes `path` only if
    the block succeeds (a folder of many files, such as a model repository, appears whole or
    not at all). `path` must not exist, or be an empty folder; it is never merged into."""
    target = Path(path)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise VitedgeError(f"{target} exists and is not empty",
                           "choose a new folder, or remove the old one first")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(target)
        tmp.mkdir()
    except OSError as exc:
        raise write_error(target, exc) from exc
    try:
        try:
            yield tmp
            with contextlib.suppress(FileNotFoundError):
                target.rmdir()  # the empty folder the user made
            try:
                os.rename(tmp, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                beside = _named_temporary(target, create=False)
                try:  # another file system: copied beside it, then one rename
                    shutil.copytree(tmp, beside)
                    os.rename(beside, target)
                finally:
                    release(beside)
        except OSError as exc:
            raise write_error(target, exc) from exc
    finally:
        release(tmp)


def make_folder(path: str | os.PathLike[str]) -> Path:
    """The folder `path`, made with its parents where missing; a file in the way, a
    read-only or foreign folder is one VitedgeError."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise VitedgeError(f"cannot make the folder {folder}: a file is there",
                           "choose another output folder") from None
    except OSError as exc:
        raise write_error(folder, exc) from exc
    return folder


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
