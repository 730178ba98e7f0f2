"""benchmarks/RESULTS.md holds one section per benchmark, its newest run first and the
earlier runs below it as history (issue 31, item 14)."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.results import RESULTS, merge

RUN = "## Speed (`benchmarks/speed.py`)\n\nMachine: {cpu}.\n\n| x |\n|---|\n| {n} |\n"
OTHER = "## Size (`benchmarks/size.py`)\n\nsmall\n"


def test_a_new_run_heads_its_benchmark_s_section_and_the_old_ones_become_its_history():
    doc = "# Benchmark results\n\nintro\n\n"
    doc = merge(doc, RUN.format(cpu="Zen 2", n=1))
    doc = merge(doc, OTHER)
    doc = merge(doc, RUN.format(cpu="Zen 3", n=2))
    doc = merge(doc, RUN.format(cpu="Zen 4", n=3))
    headings = re.findall(r"(?m)^#+ .*$", doc)
    assert headings == ["# Benchmark results", "## Speed (`benchmarks/speed.py`)",
                        "### Earlier runs", "#### Speed (`benchmarks/speed.py`)",
                        "#### Speed (`benchmarks/speed.py`)", "## Size (`benchmarks/size.py`)"]
    assert [doc.index(f"Machine: Zen {n}") for n in (4, 3, 2)] == sorted(
        doc.index(f"Machine: Zen {n}") for n in (4, 3, 2))  # newest first
    assert doc.startswith("# Benchmark results\n\nintro\n\n## Speed")


def test_results_md_has_one_section_per_benchmark():
    scripts = [re.search(r"benchmarks/[\w.]+\.py", h).group(0)
               for h in re.findall(r"(?m)^## .*$", RESULTS.read_text())]
    assert len(scripts) == len(set(scripts)), sorted(s for s in scripts if scripts.count(s) > 1)
    assert all((Path(RESULTS).parent / Path(s).name).is_file() for s in scripts)
