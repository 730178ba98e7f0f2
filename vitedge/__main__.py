"""`python -m vitedge` and the `vitedge` console script."""

import contextlib
import os
import sys

from vitedge.cli import main


def entry() -> None:
    """Run the command, then end at once with its exit code: what it wrote is complete and
    in place, and the interpreter's teardown (native libraries' exit handlers: a good part
    of a second) has nothing to add; a signal during the teardown could only muddle the exit
    code. Temporary files and the scratch folder are removed first."""
    try:
        code = main()
    except SystemExit as exc:  # a SIGTERM during the command: 143
        code = exc.code if isinstance(exc.code, int) else 1
    from vitedge.lifetime import cleanup_temporary_files

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    cleanup_temporary_files()
    os._exit(code)


if __name__ == "__main__":
    entry()
