"""Atomic writes and file fingerprints: an interrupted command never leaves a half-written
file, and never a temporary one either, whatever ends it.

- Bytes (`write_bytes_atomic`): written into a file without a name (Linux `O_TMPFILE`),
  which gets its name (`linkat`) only once it is complete: a SIGKILL leaves nothing. Over
  an existing file the name is a temporary one renamed onto it at once. Where the file
  system has no `O_TMPFILE` the named temporary file beside the target is used, and swept.
- Writers that need a path (a video writer, ONNX Runtime's saved model, a TensorRT build)
  get one in this process's scratch folder (`scratch_root()`, or $VITEDGE_SCRATCH), which
  SIGTERM / SIGINT remove, and every vitedge start sweeps of processes that are gone; the
  result is moved onto its target when complete (`publish`).
- The signal handlers (`install_signal_cleanup`, the CLI sets them) take no lock: they read
  a snapshot of what to remove that the writers replace whole, so a signal that lands
  while a writer registers a file cannot make the handler wait for itself; and a process
  that does not end within a second and a half of the signal is ended by a watchdog.
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
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError

_LIVE: set[Path] = set()
_SNAPSHOT: frozenset[Path] = frozenset()
"""What the signal handlers remove: replaced whole (never changed in place) under _LOCK."""
_LOCK = threading.Lock()
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.vitedge-(?P<pid>\d+)-[0-9a-f]+\.tmp")
SCRATCH_ENV = "VITEDGE_SCRATCH"
WATCHDOG_SECONDS = 1.5
"""After SIGTERM / SIGINT, how long the process may take to end by itself."""
_SCRATCH: Path | None = None
_SIGNALLED: int | None = None
"""The exit code a SIGTERM (143) or SIGINT (130) asked for, once one arrived."""
_FINISHED = False
"""The command is done (the CLI's main returned): a signal now only has to end the process."""


def _register(path: Path) -> None:
    global _SNAPSHOT
    with _LOCK:
        _LIVE.add(path)
        _SNAPSHOT = frozenset(_LIVE)


def _unregister(path: Path) -> None:
    global _SNAPSHOT
    with _LOCK:
        _LIVE.discard(path)
        _SNAPSHOT = frozenset(_LIVE)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(target: Path, exc: OSError) -> VitedgeError:
    """One line for an OSError while writing `target`: full disk, read-only, no access."""
    reason = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
              errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
              errno.EPERM: "permission denied", errno.ENOTDIR: "a file is in the way of its "
              "folder"}.get(exc.errno or 0, exc.strerror or str(exc))
    return VitedgeError(f"cannot write {target}: {reason}",
                        "free space or choose another output path" if exc.errno in (
                            errno.ENOSPC, errno.EDQUOT) else "choose another output path")


# --- the scratch folder: paths for writers that need one --------------------------------------

def _start_ticks(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None where it is gone: a
    process id the system reused is not the process that made a scratch folder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def scratch_root() -> Path:
    """Where every vitedge process keeps the files its path-based writers are making:
    $VITEDGE_SCRATCH, else the user's cache folder, else the system's temporary folder."""
    if os.environ.get(SCRATCH_ENV):
        return Path(os.environ[SCRATCH_ENV])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for root in (cache / "vitedge" / "scratch",
                 Path(tempfile.gettempdir()) / f"vitedge-scratch-{os.getuid()}"):
        with contextlib.suppress(OSError):
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if os.access(root, os.W_OK):
                return root
    return Path(tempfile.gettempdir())


def sweep_scratch() -> list[Path]:
    """Remove the scratch folders of vitedge processes that are gone (a SIGKILL, a crash):
    every vitedge command does this when it starts."""
    removed = []
    with contextlib.suppress(OSError):
        for folder in scratch_root().iterdir():
            m = re.fullmatch(r"(\d+)-(\d+)", folder.name)
            if not m or not folder.is_dir():
                continue
            pid, ticks = int(m.group(1)), m.group(2)
            if pid == os.getpid() or _start_ticks(pid) == ticks:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def scratch() -> Path:
    """This process's scratch folder (made on first use; removed at exit and on a signal)."""
    global _SCRATCH
    root = scratch_root()
    if _SCRATCH is None or _SCRATCH.parent != root or not _SCRATCH.is_dir():
        folder = root / f"{os.getpid()}-{_start_ticks(os.getpid()) or 0}"
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise write_error(folder, exc) from exc
        _register(folder)
        _SCRATCH = folder
        import atexit

        atexit.register(_remove, folder)
    return _SCRATCH


def scratch_folder(prefix: str = "work-") -> tempfile.TemporaryDirectory[str]:
    """A temporary folder inside this process's scratch folder (what a SIGKILL leaves of it
    is swept by the next vitedge start)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=scratch())


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A fresh path in this process's scratch folder for a writer that makes `path`'s file,
    with `path`'s own name (writers that pick a format by extension still can, and files
    named after it, a model's data file, keep their names); the caller moves it onto `path`
    with `publish` or unlinks it, then calls `release`."""
    target = Path(path)
    folder = scratch() / secrets.token_hex(4)
    folder.mkdir()
    _register(folder)
    _FOLDERS[folder / target.name] = folder
    return folder / target.name


_FOLDERS: dict[Path, Path] = {}
"""A temporary path `temporary_path` gave -> the scratch folder made for it."""


def release(tmp: Path) -> None:
    """Forget a temporary file (published or removed), removing what is still there (for
    a `temporary_path`, its whole folder: files written beside it too)."""
    target = _FOLDERS.pop(tmp, tmp)
    _remove(target)
    _unregister(target)


def publish(tmp: Path, target: Path) -> None:
    """Move the complete file `tmp` onto `target`: a rename on the same file system, else a
    copy that gets its name only when complete."""
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
    _register(tmp)
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path (in the scratch folder) for `path`'s file; publish it onto
    `path` only if the block succeeds. OSErrors from the block (a full disk while writing)
    become one VitedgeError."""
    target = Path(path)
    if target.is_dir():
        raise VitedgeError(f"{target} is a folder", "give a file name")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(target, exc) from exc
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
    target = Path(path)
    if target.is_dir():
        raise VitedgeError(f"{target} is a folder", "give a file name")
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


def _remove(tmp: Path) -> None:
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def cleanup_temporary_files() -> None:
    """Remove every temporary file and folder this process still holds (on a signal, or at
    exit). Takes no lock: it reads the snapshot the writers publish."""
    for tmp in _SNAPSHOT:
        _remove(tmp)


def finished(code: int) -> int:
    """The CLI's command is done with `code`: a signal that lands while the interpreter
    shuts down (a native library's exit handlers can take a while) ends it at once with the
    signal's code, as one during the command would."""
    global _FINISHED
    _FINISHED = True
    return code


def signalled() -> int | None:
    """The exit code a SIGTERM or SIGINT asked for (143, 130), once one arrived: the CLI
    ends with it even where the exception the handler raised was swallowed (a native
    library's callback catches everything)."""
    return _SIGNALLED


def install_signal_cleanup() -> None:
    """On SIGTERM and SIGINT, remove this process's temporary files and scratch folder,
    then end as the signal means (exit code 143 for SIGTERM, KeyboardInterrupt and 130 for
    SIGINT); a watchdog ends a process that has not ended 1.5 s later with the same code,
    removing what it made since. Sweeps the scratch folders of processes that are gone."""
    global _FINISHED
    if threading.current_thread() is not threading.main_thread():
        return
    _FINISHED = False
    sweep_scratch()

    def last_resort(_signum: int, _frame: Any) -> None:
        cleanup_temporary_files()
        os._exit(_SIGNALLED or 1)

    def ending(signum: int) -> None:
        global _SIGNALLED
        first = _SIGNALLED is None
        _SIGNALLED = _SIGNALLED or 128 + signum
        cleanup_temporary_files()
        if _FINISHED:  # shutting down: nothing is left to unwind
            os._exit(_SIGNALLED)
        if first:
            signal.signal(signal.SIGALRM, last_resort)
            signal.setitimer(signal.ITIMER_REAL, WATCHDOG_SECONDS)

    def on_term(signum: int, _frame: Any) -> None:
        ending(signum)
        raise SystemExit(128 + signum)

    def on_int(signum: int, frame: Any) -> None:
        ending(signum)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)


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
