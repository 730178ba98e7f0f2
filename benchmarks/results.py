"""Where every benchmark's results go: benchmarks/RESULTS.md, one appended section a run."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def publish(section: str) -> None:
    """Print a run's Markdown section and append it to RESULTS.md."""
    print(section)
    with open(RESULTS, "a") as f:
        f.write(section)
