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
from safetensors.torch import save_file

from vitedge.export import export_onnx
from vitedge.export.exporter import ExportOptions
from vitedge.model.archs import find_arch
from vitedge.model.formats import config_from_timm_args
from vitedge.model.vit import VisionTransformer


def main(archs: list[str]) -> None:
    rows = []
    for arch in archs:
        cfg = config_from_timm_args(find_arch(arch).args)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = Path(tmp) / "model.safetensors"
            torch.manual_seed(0)
            save_file(VisionTransformer(cfg).state_dict(), ckpt)
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
