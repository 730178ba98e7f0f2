"""`vitedge build` times on this machine (ONNX Runtime backend) for a full-size ViT with
random weights, per step and precision, and the start-up time of the built artifact
against loading the ONNX model it came from.

Run on demand: `.venv/bin/python benchmarks/build_time.py [arch]` (default
vit_small_patch16_224). Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from common import CALIBRATION, export_random
from results import machine, publish


def main(arch: str) -> None:
    from vitedge.backends import load_runner
    from vitedge.deploy import BuildOptions, build

    rows, loads = [], []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_random(arch, Path(tmp))
        for precision in ("fp32", "fp16", "int8"):
            r = build(fp32, options=BuildOptions(precision=precision, data=str(CALIBRATION), profile="cpu"))
            steps = ", ".join(f"{k} {v:.1f} s" for k, v in r.steps.items())
            rows.append(f"| {precision} | {r.seconds:.1f} s | {steps} | {r.size_bytes / 1e6:.1f} MB |")
            source = fp32 if precision == "fp32" else fp32.with_name(f"{fp32.stem}.{precision}.onnx")
            times = []
            for path in (source, r.artifact):
                start = time.perf_counter()
                load_runner(path).close()
                times.append((time.perf_counter() - start) * 1e3)
            loads.append(f"| {precision} | {times[0]:.0f} ms | {times[1]:.0f} ms |")
            print(rows[-1], loads[-1], flush=True)
    section = (
        f"\n## `vitedge build` on the CPU (`benchmarks/build_time.py`, {arch}, random weights)\n\n"
        f"Machine: {machine()}; backend ONNX Runtime, profile `cpu`; the "
        "FP16 build calibrates on the 512 images of calibration/fashion-mnist (its overflow "
        "check), and INT8 reuses that table.\n\n"
        "| precision | build | steps | artifact |\n|---|---|---|---|\n" + "\n".join(rows) +
        "\n\nStart-up (creating the session): the ONNX model against the built `.ort.onnx`.\n\n"
        "| precision | from the ONNX model | from the built artifact |\n|---|---|---|\n"
        + "\n".join(loads) + "\n")
    publish(section)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vit_small_patch16_224")
