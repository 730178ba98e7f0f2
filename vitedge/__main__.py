"""`python -m vitedge` and the `vitedge` console script."""

from vitedge.cli import main
from vitedge.lifetime import end_now


def entry() -> None:
    """Run the command, then end at once with its exit code (`lifetime.end_now`: output
    flushed, temporary files removed): what it wrote is complete and in place, and the
    interpreter's teardown (native libraries' exit handlers: a good part of a second) has
    nothing to add; a signal during the teardown could only muddle the exit code."""
    try:
        code = main()
    except SystemExit as exc:  # main lets a SystemExit that no signal raised go on up
        code = exc.code if isinstance(exc.code, int) else 1
    end_now(code)


if __name__ == "__main__":
    entry()
