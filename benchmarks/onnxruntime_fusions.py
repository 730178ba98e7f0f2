"""What vitedge's rewrites in the ONNX Runtime artifact bring (`vitedge/build/
onnxruntime_fusions.py`: attention as one MultiHeadAttention, biases into the integer GEMMs,
constant weight dequantization folded): the same INT8 and FP32 models built with and
without them, batch-1 latency interleaved in one process. Random weights; INT8 calibrated
on 64 shipped images (the speed does not depend on the scales).

Run on demand: `.venv/bin/python benchmarks/onnxruntime_fusions.py [arch]` (default
vit_small_patch16_224). Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from common import CALIBRATION, build_unverified, cpu_profile, export_random, latency_ms
from results import machine, publish

ROUNDS = 60


def main(arch: str) -> None:
    import onnxruntime

    from vitedge.options import CalibrationOptions, QuantizeRequest
    from vitedge.quantize import quantize_model
    from vitedge.sessions import ort_session

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = export_random(arch, folder)
        int8 = folder / "int8.onnx"
        quantize_model(fp32, int8, QuantizeRequest(
            "int8", data=str(CALIBRATION), calibration=CalibrationOptions(num_images=64)))
        sessions = {}
        plain = cpu_profile(folder, "no-rewrites", fusions=False)
        for precision, model in (("fp32", fp32), ("int8", int8)):
            for fused in (False, True):
                out = folder / f"{precision}.{'fused' if fused else 'plain'}.ort.onnx"
                build_unverified(model, out, "cpu" if fused else plain)
                sessions[(precision, fused)] = ort_session(out, optimization="none")
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        named = {f"{p} {'fused' if f else 'plain'}": s for (p, f), s in sessions.items()}
        ms = latency_ms(named, x, rounds=ROUNDS)
    for precision in ("fp32", "int8"):
        plain, fused = ms[f"{precision} plain"], ms[f"{precision} fused"]
        rows.append(f"| {precision} | {plain:.1f} ms | {fused:.1f} ms | {plain / fused:.2f}x |")
    section = (
        f"\n## ONNX Runtime artifact rewrites (`benchmarks/onnxruntime_fusions.py`, {arch})\n\n"
        f"Machine: {machine()}, onnxruntime {onnxruntime.__version__}; batch 1, "
        f"median of {ROUNDS} interleaved runs in one process; both artifacts of a row went through "
        "ONNX Runtime's own extended optimizations.\n\n"
        "| precision | without vitedge's rewrites | with them | speed-up |\n|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
    publish(section)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vit_small_patch16_224")
