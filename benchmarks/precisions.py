"""FP16, INT8, FP8, NVFP4 (W4A8 and W4A4) and `--precision auto` against FP32:

1. the demo model and its stress copy on the full 10,000-image Fashion-MNIST test split
   (top-1, change, top-1 agreement and mean KL against FP32), computed on this CPU as
   `vitedge eval` computes them (FP8 on ONNX Runtime's float8 Q/DQ kernels, NVFP4 through
   vitedge's exact CPU rewrite);
2. the families (each test fixture, timm depth 2, perturbed random weights): output cosine
   with FP32 on 500 shipped test images;
3. engine sizes per precision from TensorRT for RTX builds (no GPU: built, not run) for the
   demo model and a ViT-S/16 with random weights.

Run on demand (needs `apt-get install dataset-fashion-mnist` and tensorrt-rtx):
    .venv/bin/python benchmarks/precisions.py [--data FOLDER] [--skip-families]
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from results import machine, publish

from vitedge.errors import VitedgeError
from vitedge.evaluate import evaluate
from vitedge.options import CalibrationOptions, EvalOptions, QuantizeOptions, QuantizeRequest
from vitedge.quantize import quantize_model, with_outlier_channels
from vitedge.quantize.calibrate import calibrate

ROOT = Path(__file__).parents[1]
CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
CALIBRATION = ROOT / "calibration" / "fashion-mnist"
FIXTURES = ROOT / "tests" / "fixtures" / "timm"
TEST_IMAGES = sorted((ROOT / "evaluation" / "fashion-mnist").glob("*/*.png"))[::4][:500]
FAMILIES = {"dinov2": "DINOv2", "clip": "CLIP", "siglip": "SigLIP", "eva02_small": "EVA-02 S",
            "eva02_base": "EVA-02 B"}


@dataclass(frozen=True)
class Variant:
    label: str
    precision: str
    qdq: QuantizeOptions = QuantizeOptions()
    profile: str | None = None
    max_drop: float = 0.5


VARIANTS = [
    Variant("FP16", "fp16"),
    Variant("INT8 (vit, default)", "int8"),
    Variant("FP8", "fp8"),
    Variant("FP8, ends quantized too", "fp8", QuantizeOptions(ends=True)),
    Variant("FP8 + attention", "fp8", QuantizeOptions(attention=True)),
    Variant("NVFP4 W4A8", "nvfp4", QuantizeOptions(fp4_activations="fp8")),
    Variant("NVFP4 W4A4", "nvfp4", QuantizeOptions(fp4_activations="nvfp4")),
    Variant("auto, desktop-rtx-50 (NVFP4 / FP8 / FP16), max-drop 0.5", "auto",
            profile="desktop-rtx-50"),
    Variant("auto, desktop-rtx-50, max-drop 2", "auto", profile="desktop-rtx-50", max_drop=2.0),
    Variant("auto, desktop-rtx-40 (FP8 / FP16), max-drop 0.5", "auto", profile="desktop-rtx-40"),
]


def full_test_split(folder: Path) -> Path:
    script = ROOT / "examples" / "fashion_mnist" / "fashion_mnist.py"
    subprocess.run([sys.executable, str(script), "images", "--split", "test", "-o", str(folder)],
                   check=True)
    return folder


def request(v: Variant, table: Path) -> QuantizeRequest:
    return QuantizeRequest(v.precision, calib=str(table), qdq=v.qdq, profile=v.profile,
                           max_drop=v.max_drop,
                           data=str(CALIBRATION) if v.precision == "auto" else None)


def accuracy(work: Path, data: Path) -> list[str]:
    from vitedge.export import ExportOptions, export_onnx

    rows = []
    fp32 = work / "demo.onnx"
    export_onnx(CHECKPOINT, fp32, ExportOptions())
    stress = work / "stress.onnx"
    stress.write_bytes(with_outlier_channels(onnx.load(str(fp32))).SerializeToString())
    for name, model in (("demo", fp32), ("stress copy", stress)):
        base = evaluate(model, EvalOptions(data=data, reference=fp32 if model != fp32 else None))
        rows.append(f"| {name} | FP32 | {base.top1:.2%} | | - | | |")
        table = calibrate(model, work / f"{model.stem}.calib.json",
                          CalibrationOptions(data=str(CALIBRATION))).output
        for v in VARIANTS:
            out = work / f"{model.stem}.q.onnx"
            try:
                q = quantize_model(model, out, request(v, table))
            except VitedgeError as exc:  # a collapse is refused: that is the row
                rows.append(f"| {name} | {v.label} | refused | | | | {exc.message[:80]} |")
                print(rows[-1], flush=True)
                continue
            r = evaluate(out, EvalOptions(data=data, reference=model))
            assert r.agreement is not None
            mix = ", ".join(f"{n} {f}" for f, n in sorted(q.quantization.get("formats", {})
                                                              .items())) or "-"
            rows.append(f"| {name} | {v.label} | {r.top1:.2%} | {(r.top1 - base.top1) * 100:+.2f} "
                        f"| {r.agreement.top1_agreement:.2%} | {r.agreement.mean_kl:.1e} | {mix} |")
            print(rows[-1], flush=True)
    return rows


def families(work: Path) -> list[str]:
    import vitedge
    from vitedge.compare import agreement
    from vitedge.export import ExportOptions, export_onnx

    def outputs(model: Path) -> np.ndarray:
        with vitedge.open(model, keep_logits=True, batch=50) as pipe:
            return np.stack([p.logits if p.logits is not None else p.embedding
                             for _, p in pipe.stream(TEST_IMAGES)])

    rows = []
    for family, title in FAMILIES.items():
        fp32 = work / f"{family}.onnx"
        export_onnx(FIXTURES / family, fp32, ExportOptions())
        table = calibrate(fp32, work / f"{family}.calib.json",
                          CalibrationOptions(data=str(CALIBRATION), num_images=128)).output
        ref = outputs(fp32)
        cells = []
        for v in (VARIANTS[0], VARIANTS[1], VARIANTS[2], VARIANTS[5], VARIANTS[6], VARIANTS[7]):
            out = work / f"{family}.q.onnx"
            try:
                quantize_model(fp32, out, request(v, table))
            except VitedgeError as exc:
                cells.append(f"refused ({exc.message[:40]})")
                continue
            a = agreement(ref, outputs(out))
            cells.append(f"{a.cosine:.5f} / {a.cosine_min:.5f}")
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def engine_sizes(work: Path) -> list[str]:
    from common import export_random

    from vitedge.deploy import BuildOptions, build
    from vitedge.options import VerifyOptions

    rows = []
    models = {"demo (0.2 M parameters)": work / "demo.onnx",
              "ViT-S/16 (22 M)": export_random("vit_small_patch16_224", work / "vits")}
    for title, model in models.items():
        cells = []
        for precision, profile in (("fp32", "desktop-rtx-50"), ("fp16", "desktop-rtx-50"),
                                   ("int8", "rtx-portable"), ("fp8", "desktop-rtx-50"),
                                   ("nvfp4", "desktop-rtx-50")):
            out = model.with_name(f"{model.stem}.{precision}.engine")
            build(model, out, BuildOptions(precision=precision, profile=profile,
                                           backend="tensorrt-rtx", data=str(CALIBRATION),
                                           verify=VerifyOptions(enabled=False), force=True))
            cells.append(f"{out.stat().st_size / 1e6:.1f} MB")
        rows.append(f"| {title} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", help="labelled test folder (default: the full test split)")
    parser.add_argument("--skip-families", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = Path(args.data) if args.data else full_test_split(work / "test")
        images = sum(1 for _ in data.rglob("*.png"))
        acc = accuracy(work, data)
        fam = [] if args.skip_families else families(work)
        sizes = engine_sizes(work)
    section = (
        "\n## FP8, NVFP4 and `--precision auto` (`benchmarks/precisions.py`)\n\n"
        f"Machine: {machine()}. No GPU: every number is computed on this CPU the way `vitedge "
        "quantize` checks the graph (FP8 on ONNX Runtime's float8 Q/DQ kernels, NVFP4 through "
        "vitedge's exact rewrite, tested against onnx's reference implementation), which is "
        "what a GPU computes up to the order of its float sums. Calibration on the 512 images "
        "of `calibration/fashion-mnist`; auto measures its layers and checks its budget on "
        "all 512 (the budget holds on the images it measured; the table shows how it holds on "
        "10,000 others).\n\n"
        f"Demo model and its stress copy on {images} test images; agreement and KL against "
        "the model's own FP32:\n\n"
        "| model | variant | top-1 | change (points) | top-1 agreement | mean KL | layers |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(acc) + "\n\n"
        + ("Families (test fixtures, random weights): output cosine with FP32, mean / worst "
           f"of {len(TEST_IMAGES)} test images:\n\n"
           "| family | FP16 | INT8 | FP8 | NVFP4 W4A8 | NVFP4 W4A4 | auto (rtx-50) |\n"
           "|---|---|---|---|---|---|---|\n" + "\n".join(fam) + "\n\n" if fam else "")
        + "TensorRT for RTX 1.7 engine sizes (built on this CPU, compute capability 12.0; INT8 "
          "for 8.6/8.9/12.0 with rtx-portable), engines are not run here:\n\n"
          "| model | FP32 | FP16 | INT8 | FP8 | NVFP4 (W4A4) |\n|---|---|---|---|---|---|\n"
        + "\n".join(sizes) + "\n")
    publish(section)


if __name__ == "__main__":
    main()
