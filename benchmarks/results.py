"""Where every benchmark's results go: benchmarks/RESULTS.md, one section per benchmark
with its newest run first and the earlier runs below it as its history."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"
HISTORY = "### Earlier runs"


def machine() -> str:
    """The machine a section was measured on: CPU model, the instruction sets that decide
    the INT8 kernels, and the cores this process may use (`vitedge.bench.machine_line`)."""
    from vitedge.bench import machine_line

    return machine_line()


def publish(section: str) -> None:
    """Print a run's Markdown section and put it at the head of its benchmark's section in
    RESULTS.md (the run it replaces there moves into the history)."""
    print(section)
    document = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    partial = RESULTS.with_name(f".{RESULTS.name}.partial")
    partial.write_text(merge(document, section))
    partial.replace(RESULTS)  # a run stopped half-way leaves the file as it was


def _key(heading: str) -> str:
    """Which benchmark a `## ` heading is: its script (`benchmarks/x.py`), else the heading."""
    found = re.search(r"benchmarks/[\w.]+\.py", heading)
    return found.group(0) if found else heading.strip()


def _split(document: str) -> tuple[str, list[str]]:
    """(what comes before the first section, each `## ` section whole)."""
    parts = re.split(r"(?m)^(?=## )", document)
    return parts[0], parts[1:]


def _runs(section: str) -> tuple[str, str, list[str]]:
    """(heading line, newest run's body, the earlier runs as `#### ` entries)."""
    heading, _, rest = section.partition("\n")
    body, _, history = rest.partition(HISTORY + "\n")
    entries = [e for e in re.split(r"(?m)^(?=#### )", history) if e.strip()]
    return heading, body, entries


def _as_history(heading: str, body: str) -> str:
    """A run, moved under `### Earlier runs`: its heading and subheadings two levels down."""
    body = re.sub(r"(?m)^### ", "##### ", body)
    return f"#### {heading.removeprefix('## ').strip()}\n{body.rstrip()}\n\n"


def merge(document: str, section: str) -> str:
    """`document` with `section` (a run: `## heading` and its body) as the newest run of its
    benchmark: the benchmark's section keeps its place, its previous newest run and earlier
    runs follow as history; a benchmark not there yet is appended."""
    head, sections = _split(document)
    heading, body, _ = _runs(section.strip("\n") + "\n")
    for i, old in enumerate(sections):
        if _key(old.partition("\n")[0]) != _key(heading):
            continue
        old_heading, old_body, old_history = _runs(old)
        history = [_as_history(old_heading, old_body), *old_history]
        sections[i] = (f"{heading}\n{body.rstrip()}\n\n{HISTORY}\n\n"
                       + "".join(h.rstrip() + "\n\n" for h in history))
        break
    else:
        sections.append(f"{heading}\n{body.rstrip()}\n\n")
    return head + "".join(s.rstrip() + "\n\n" for s in sections).rstrip() + "\n"
