"""Time `vitedge export` of full-size ViTs (random weights, timm layout), verification
included. Run on demand: `.venv/bin/python benchmarks/export_time.py [arch ...]`.
Appends a row per model to benchmarks/RESULTS.md."""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from results import publish

from vitedge.export import ExportOptions, export_onnx
from vitedge.model import random_checkpoint


def main(archs: list[str]) -> None:
    rows = []
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = random_checkpoint(arch, Path(tmp) / "model.safetensors")
            start = time.perf_counter()
            result = export_onnx(ckpt, Path(tmp) / "model.onnx", ExportOptions(arch=arch))
            total = time.perf_counter() - start
        worst = max(c.relative for c in result.comparisons)
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
        rows.append(f"| {arch} | {result.size_bytes / 1e6:.0f} MB | {total:.1f} s | {steps} | "
                    f"{worst:.1e} |")
        print(rows[-1])
    header = ("\n## Export time (`benchmarks/export_time.py`)\n\n"
              f"Machine: {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}.\n\n"
              "| model | ONNX size | total | steps | worst relative error |\n|---|---|---|---|---|\n")
    publish(header + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:] or ["vit_base_patch16_224"])
