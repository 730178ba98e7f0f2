"""INT8 on ONNX Runtime CPU: calibration time and peak memory for 512 images, and batch-1
latency of the FP32 export against the INT8 (`vit` scheme) and FP16 models, and of the
built INT8 artifact with the CPU-exact 7-bit weights against 8-bit weights (what the
encoding costs), measured interleaved in one run on the same machine. Random weights (the
speed does not depend on them).

Run on demand: `.venv/bin/python benchmarks/int8_cpu.py [arch]` (default
vit_small_patch16_224). Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import machine, publish

ROOT = Path(__file__).parents[1]
CALIBRATION = ROOT / "calibration" / "fashion-mnist"


def export_random(arch: str, folder: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    from vitedge.export import ExportOptions, export_onnx
    from vitedge.model.archs import find_arch
    from vitedge.model.formats import config_from_timm_args
    from vitedge.model.vit import VisionTransformer

    cfg = config_from_timm_args(find_arch(arch).args)
    torch.manual_seed(0)
    model = VisionTransformer(cfg)
    model.init_weights()
    save_file(model.state_dict(), folder / "model.safetensors")
    out = folder / "fp32.onnx"
    export_onnx(folder / "model.safetensors", out, ExportOptions(arch=arch, verify=False))
    return out


def calibrate_in_subprocess(model: Path) -> dict:
    """Run `vitedge calibrate` in its own process, so its peak memory is its own."""
    cmd = [sys.executable, "-m", "vitedge", "calibrate", str(model), "--data", str(CALIBRATION),
           "--num-images", "512", "--json"]
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    info = json.loads(out)
    info["wall_s"] = time.perf_counter() - start
    return info


def latency_ms(sessions: dict[str, object], x: np.ndarray, rounds: int = 40) -> dict[str, float]:
    """Median batch-1 latency per model, the models interleaved round by round so that
    machine noise hits them alike."""
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"images": x})  # type: ignore[attr-defined]
    for _ in range(rounds):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"images": x})  # type: ignore[attr-defined]
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main(arch: str) -> None:
    import onnx

    from vitedge.backends.onnxruntime.build import build_onnxruntime
    from vitedge.backends.onnxruntime.int8 import seven_bit_weights
    from vitedge.backends.onnxruntime.session import ort_session
    from vitedge.profiles import load_profile
    from vitedge.quantize.calibrate import default_table_path
    from vitedge.quantize.quantizer import QuantizeRequest, quantize_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        fp32 = export_random(arch, folder)
        calib = calibrate_in_subprocess(fp32)
        table = str(default_table_path(fp32))
        int8 = folder / "int8.onnx"
        quantize_model(fp32, int8, QuantizeRequest("int8", calib=table))
        fp16 = folder / "fp16.onnx"
        quantize_model(fp32, fp16, QuantizeRequest("fp16", calib=table))
        seven = onnx.load(str(int8))
        seven_bit_weights(seven)
        cpu = load_profile("cpu")
        built7, built8 = folder / "int8.7.ort.onnx", folder / "int8.8.ort.onnx"
        build_onnxruntime(int8, built7, cpu)
        build_onnxruntime(int8, built8, cpu, cpu_exact=False)
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
