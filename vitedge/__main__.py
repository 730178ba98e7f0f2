"""`python -m vitedge` and the `vitedge` console script."""

import sys

from vitedge.cli import main


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
