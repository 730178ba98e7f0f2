"""What this process holds on disk, and how it ends: an interrupted command never leaves a
temporary file or folder behind, whatever ends it.

- Every temporary file and folder a writer makes is registered (`register`) until it is
  published or removed; a signal or the exit removes what is still registered.
- Writers that need a path get one in this process's scratch folder (`scratch_root()`, or
  $VITEDGE_SCRATCH), which SIGTERM / SIGINT remove, and every vitedge start sweeps of
  processes that are gone.
- The signal handlers (`install_signal_cleanup`, the CLI sets them) take no lock: they read
  a snapshot of what to remove that the writers replace whole, so a signal that lands
  while a writer registers a file cannot make the handler wait for itself; and a process
  that does not end within a second and a half of the signal is ended by a watchdog.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from vitedge.errors import write_error

_LIVE: set[Path] = set()
_SNAPSHOT: frozenset[Path] = frozenset()
"""What the signal handlers remove: replaced whole (never changed in place) under _LOCK."""
_LOCK = threading.Lock()
SCRATCH_ENV = "VITEDGE_SCRATCH"
WATCHDOG_SECONDS = 1.5
"""After SIGTERM / SIGINT, how long the process may take to end by itself."""
_SCRATCH: Path | None = None
_SIGNALLED: int | None = None
"""The exit code a SIGTERM (143) or SIGINT (130) asked for, once one arrived."""
_AT_EXIT = False
_FINISHED = False
"""The command is done (the CLI's main returned): a signal now only has to end the process."""


def register(path: Path) -> None:
    """Remove `path` on a signal and at exit, until `unregister`."""
    global _SNAPSHOT
    with _LOCK:
        _LIVE.add(path)
        _SNAPSHOT = frozenset(_LIVE)


def unregister(path: Path) -> None:
    global _SNAPSHOT
    with _LOCK:
        _LIVE.discard(path)
        _SNAPSHOT = frozenset(_LIVE)



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
        register(folder)
        _SCRATCH = folder
        import atexit

        atexit.register(remove, folder)
    return _SCRATCH


def scratch_folder(prefix: str = "work-") -> tempfile.TemporaryDirectory[str]:
    """A temporary folder inside this process's scratch folder (what a SIGKILL leaves of it
    is swept by the next vitedge start)."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=scratch())


# --- the end: what a signal or the exit removes ----------------------------------------------

def remove(tmp: Path) -> None:
    """Remove a file or a folder, whatever is there; nothing where it is gone."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def cleanup_temporary_files() -> None:
    """Remove every temporary file and folder this process still holds (on a signal, or at
    exit). Takes no lock: it reads the snapshot the writers publish."""
    for tmp in _SNAPSHOT:
        remove(tmp)


def finished(code: int) -> int:
    """The CLI's command is done with `code`: a signal that lands while the interpreter
    shuts down (a native library's exit handlers can take a while) ends it at once with the
    signal's code, as one during the command would. Where a signal ended the command, the
    process ends here, with the signal's code: the interpreter's teardown (seconds under
    load) never runs, so the watchdog can never fire after Python reset its handler and turn
    a SIGTERM into a death by SIGALRM."""
    global _FINISHED
    _FINISHED = True
    if _SIGNALLED is not None:
        end_now(_SIGNALLED)
    return code


def end_now(code: int) -> None:
    """Flush what was said, remove every temporary file, and end the process with `code`
    without the interpreter's teardown."""
    with contextlib.suppress(OSError, ValueError):
        signal.setitimer(signal.ITIMER_REAL, 0)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    cleanup_temporary_files()
    os._exit(code)


def _at_exit() -> None:
    """The interpreter is ending: after a signal, end now with its code (what follows is
    teardown, during which Python resets its signal handlers: the watchdog's alarm would
    kill the process as SIGALRM); otherwise the watchdog has nothing left to guard."""
    if _SIGNALLED is not None:
        end_now(_SIGNALLED)
    with contextlib.suppress(OSError, ValueError):
        signal.setitimer(signal.ITIMER_REAL, 0)


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
    global _FINISHED, _AT_EXIT
    if threading.current_thread() is not threading.main_thread():
        return
    _FINISHED = False
    sweep_scratch()
    if not _AT_EXIT:
        atexit.register(_at_exit)
        _AT_EXIT = True

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
