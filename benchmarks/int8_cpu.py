"""INT8 on ONNX Runtime CPU: calibration time and peak memory for 512 images, and batch-1
latency of the FP32 export against the INT8 (`vit` scheme) and FP16 models, and of the
built INT8 artifact with the CPU-exact 7-bit weights against 8-bit weights (what the
encoding costs), measured interleaved in one run on the same machine. Random weights (the
speed does not depend on them).

Run on demand: `.venv/bin/python benchmarks/int8_cpu.py [arch]` (default
vit_small_patch16_224). Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CALIBRATION, ROOT, build_unverified, cpu_profile, export_random, latency_ms
from results import machine, publish


def calibrate_in_subprocess(model: Path) -> dict:
    """Run `vitedge calibrate` in its own process, so its peak memory is its own."""
    cmd = [sys.executable, "-m", "vitedge", "calibrate", str(model), "--data", str(CALIBRATION),
           "--num-images", "512", "--json"]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    info["wall_s"] = time.perf_counter() - start
    return info


def main(arch: str) -> None:
    import onnx

    from vitedge.backends import get
    from vitedge.options import QuantizeRequest
    from vitedge.quantize import default_table_path, quantize_model
    from vitedge.sessions import ort_session

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = export_random(arch, folder)
        calib = calibrate_in_subprocess(fp32)
        table = str(default_table_path(fp32))
        int8 = folder / "int8.onnx"
        quantize_model(fp32, int8, QuantizeRequest("int8", calib=table))
        fp16 = folder / "fp16.onnx"
        quantize_model(fp32, fp16, QuantizeRequest("fp16", calib=table))
        seven = get("onnxruntime").cpu_exact(onnx.load(str(int8)))  # type: ignore[attr-defined]
        built7 = build_unverified(int8, folder / "int8.7.ort.onnx", "cpu")
        built8 = build_unverified(int8, folder / "int8.8.ort.onnx",
                                  cpu_profile(folder, "8-bit", int8_weight_bits=8))
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        models: dict[str, object] = {
            "fp32": fp32, "int8 (Q/DQ graph, 8-bit weights)": int8,
            "int8 (Q/DQ graph, 7-bit weights)": seven.SerializeToString(),
            "int8 built artifact, 8-bit weights (before the fix)": built8,
            "int8 built artifact, 7-bit weights (vitedge build)": built7, "fp16": fp16}
        sessions = {name: ort_session(m, optimization="none" if "built" in name else "all")
                    for name, m in models.items()}
        ms = latency_ms(sessions, x)
        sizes = {k: (len(p) if isinstance(p, bytes) else p.stat().st_size) / 1e6  # type: ignore[attr-defined]
                 for k, p in models.items()}
    stats = calib["stats"]
    import onnxruntime

    cost = ms["int8 built artifact, 7-bit weights (vitedge build)"] / \
        ms["int8 built artifact, 8-bit weights (before the fix)"]
    section = (
        f"\n## INT8 on ONNX Runtime CPU (`benchmarks/int8_cpu.py`, {arch}, random weights)\n\n"
        f"Machine: {machine()}, onnxruntime {onnxruntime.__version__}; batch 1, "
        "median of 40 interleaved runs, one process.\n\n"
        "| model | size | latency | speed-up vs FP32 |\n|---|---|---|---|\n"
        + "".join(f"| {k} | {sizes[k]:.1f} MB | {ms[k]:.1f} ms | {ms['fp32'] / ms[k]:.2f}x |\n"
                  for k in models)
        + f"\nThe CPU-exact encoding costs {100 * (cost - 1):+.1f} % of the built INT8 "
        "artifact's latency (7-bit against 8-bit weights: the same kernels, other numbers).\n"
        + f"\nCalibration, 512 images ({CALIBRATION.relative_to(ROOT)}, default method "
        f"{calib['options']['method']}, equalisation on): {stats['seconds']:.0f} s, peak "
        f"memory {stats['peak_rss_mb']:.0f} MB (whole process, `ru_maxrss`).\n"
    )
    publish(section)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "vit_small_patch16_224")
