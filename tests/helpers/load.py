"""A loaded machine for the tests that must hold under load: `busy(n)` keeps n processes
spinning on the CPU (each a plain Python loop) while its block runs, and ends them after."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def busy(n: int = 2) -> Iterator[list[subprocess.Popen[bytes]]]:
    """n CPU-bound processes beside the test, for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
