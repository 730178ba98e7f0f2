"""Where every benchmark's results go: benchmarks/RESULTS.md, one appended section a run."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def machine() -> str:
    """The machine a section was measured on: CPU model, the instruction sets that decide
    ONNX Runtime's INT8 kernels, and the cores this process may use."""
    import os
    import platform

    from vitedge.bench import machine_info

    m = machine_info()
    return (f"{m['cpu']} ({platform.machine()}; {', '.join(m['cpu_features']) or 'no AVX2'}; "
            f"INT8 kernels {m['int8_kernels']}), {len(os.sched_getaffinity(0))} cores")


def publish(section: str) -> None:
    """Print a run's Markdown section and append it to RESULTS.md."""
    print(section)
    with open(RESULTS, "a") as f:
        f.write(section)
