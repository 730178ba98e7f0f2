"""Accuracy of the demo model (examples/fashion_mnist) and of its stress copy (outlier
channels, same function) in FP32, FP16 and INT8 variants, measured with `vitedge eval`'s
library call against the FP32 export on the full 10,000-image test split.

Run on demand (needs `apt-get install dataset-fashion-mnist`):
    .venv/bin/python benchmarks/fashion_mnist_accuracy.py [--data FOLDER]
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import onnx
from results import machine, publish

from vitedge.evaluate import evaluate
from vitedge.export import ExportOptions, export_onnx
from vitedge.options import CalibrationOptions, EvalOptions, QuantizeOptions, QuantizeRequest
from vitedge.quantize import quantize_model, with_outlier_channels
from vitedge.quantize.calibrate import calibrate

ROOT = Path(__file__).parents[1]
CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
CALIBRATION = ROOT / "calibration" / "fashion-mnist"

# (label, precision, calibration method, smoothing alpha, quantize options)
VARIANTS = [
    ("FP16", "fp16", "percentile", 0.5, QuantizeOptions()),
    ("INT8 vit (default: percentile, equalised)", "int8", "percentile", 0.5, QuantizeOptions()),
    ("INT8 vit + attention", "int8", "percentile", 0.5, QuantizeOptions(attention=True)),
    ("INT8 vit, entropy", "int8", "entropy", 0.5, QuantizeOptions()),
    ("INT8 vit, mse", "int8", "mse", 0.5, QuantizeOptions()),
    ("INT8 vit, min-max", "int8", "minmax", 0.5, QuantizeOptions()),
    ("INT8 vit, percentile, not equalised", "int8", "percentile", 0.0, QuantizeOptions(smooth=False)),
    ("INT8 vit, min-max, not equalised", "int8", "minmax", 0.0, QuantizeOptions(smooth=False)),
    ("INT8 all, min-max (naive baseline)", "int8", "minmax", 0.0,
     QuantizeOptions(scheme="all", smooth=False)),
]


def full_test_split(folder: Path) -> Path:
    script = ROOT / "examples" / "fashion_mnist" / "fashion_mnist.py"
    subprocess.run([sys.executable, str(script), "images", "--split", "test", "-o", str(folder)],
                   check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", help="labelled test folder (default: the full test split)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else full_test_split(work / "test")
        fp32 = work / "demo.onnx"
        export_onnx(CHECKPOINT, fp32, ExportOptions())
        stress = work / "stress.onnx"
        _write_bytes(stress, with_outlier_channels(onnx.load(str(fp32))).SerializeToString())
        calib_times = {}
        for name, model in (("demo", fp32), ("stress copy", stress)):
            base = evaluate(model, EvalOptions(data=data, reference=fp32 if model != fp32 else None))
            agree = f"{base.agreement.top1_agreement:.2%}" if base.agreement else "-"
            rows.append(f"| {name} | FP32 | {base.top1:.2%} | | {agree} | |")
            for label, precision, method, alpha, qopts in VARIANTS:
                opts = CalibrationOptions(method=method, smooth_alpha=alpha)
                table = calibrate(model, work / f"{model.stem}.{method}.{alpha}.json",
                                  replace(opts, data=CALIBRATION))
                calib_times.setdefault((name, method, alpha), table.table.stats)
                out = work / "q.onnx"
                quantize_model(model, out, QuantizeRequest(precision, calib=str(table.output), qdq=qopts))
                r = evaluate(out, EvalOptions(data=data, reference=model))
                assert r.agreement is not None
                rows.append(f"| {name} | {label} | {r.top1:.2%} | {(r.top1 - base.top1) * 100:+.2f} | "
                            f"{r.agreement.top1_agreement:.2%} | {r.agreement.mean_kl:.1e} |")
                print(rows[-1], flush=True)
        images = base.images
    stats = calib_times[("demo", "percentile", 0.5)]
    section = (
        "\n## Fashion-MNIST demo model: accuracy by precision (`benchmarks/fashion_mnist_accuracy.py`)\n\n"
        f"Machine: {machine()}. "
        f"{images} test images; calibration on the 512 images of `calibration/fashion-mnist`. "
        "The INT8 Q/DQ graphs run on ONNX Runtime's integer kernels with the 7-bit weights "
        "vitedge uses on every CPU (the same numbers on any CPU class: "
        "`benchmarks/int8_cpu_classes.py`). "
        "Agreement and KL are against the FP32 export (for the stress copy, against its own FP32, "
        "which computes the same function as the demo model).\n\n"
        "| model | variant | top-1 | change (points) | top-1 agreement | mean KL |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        f"Calibration of the demo model (512 images, two passes with equalisation): "
        f"{stats['seconds']:.1f} s, peak memory {stats['peak_rss_mb']:.0f} MB (process).\n")
    publish(section)


if __name__ == "__main__":
    main()


def _write_bytes(path: Path, data: bytes) -> None:
    Path(path).write_bytes(data)
