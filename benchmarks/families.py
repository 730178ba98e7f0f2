"""INT8 and FP16 of the newer ViT families (DINOv2, CLIP, SigLIP, EVA-02) against FP32:
how close their outputs (embeddings or logits) stay on the bundled photos and on 500 shipped
test images, for each family's committed fixture (timm, depth 2, perturbed random weights)
and for its stress copy (the same function with a few LayerNorm-output channels 20-60x
larger, as the large pretrained towers have: DINOv2's high-norm tokens, CLIP's outlier
channels), calibrated on `calibration/fashion-mnist` with vitedge's defaults (percentile,
equalisation). Random weights say whether a family's graph quantizes without breaking, not
what a trained checkpoint loses; run it on real checkpoints for that.

Run on demand: `.venv/bin/python benchmarks/families.py`. Appends a section to
benchmarks/RESULTS.md."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from results import machine, publish

ROOT = Path(__file__).parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "timm"
CALIBRATION = ROOT / "calibration" / "fashion-mnist"
PHOTOS = sorted((ROOT / "vitedge" / "data" / "photos").glob("*.jpg"))
TEST_IMAGES = sorted((ROOT / "evaluation" / "fashion-mnist").glob("*/*.png"))[::4][:500]
FAMILIES = {"dinov2": "DINOv2 (features)", "dinov2_reg4": "DINOv2 + 4 registers (classifier)",
            "clip": "CLIP (features)", "clip_quickgelu": "CLIP quick-GELU (classifier)",
            "siglip": "SigLIP (features, attention pool)", "eva02_small": "EVA-02 S (features)",
            "eva02_base": "EVA-02 B, sub-LN (classifier)"}


def outputs(model: Path, images: list[Path]) -> np.ndarray:
    import vitedge

    with vitedge.open(model, keep_logits=True, batch=50) as pipe:
        return np.stack([p.logits if p.logits is not None else p.embedding
                         for _, p in pipe.stream(images)])


def main() -> None:
    import onnx

    from vitedge.compare import agreement
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.options import QuantizeRequest
    from vitedge.quantize import quantize_model, with_outlier_channels

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family, title in FAMILIES.items():
            fp32 = work / f"{family}.onnx"
            export_onnx(FIXTURES / family, fp32, ExportOptions())
            stress = work / f"{family}.stress.onnx"
            stress.write_bytes(with_outlier_channels(onnx.load(str(fp32))).SerializeToString())
            for variant, model in (("fixture", fp32), ("stress copy", stress)):
                ref = {name: outputs(model, images)
                       for name, images in (("photos", PHOTOS), ("test", TEST_IMAGES))}
                for precision in ("int8", "fp16"):
                    out = work / f"{family}.{variant[:6]}.{precision}.onnx"
                    quantize_model(model, out, QuantizeRequest(precision, data=str(CALIBRATION)))
                    got = {name: outputs(out, images)
                           for name, images in (("photos", PHOTOS), ("test", TEST_IMAGES))}
                    photos, test = (agreement(ref[n], got[n]) for n in ("photos", "test"))
                    classifier = "classifier" in title
                    rows.append(
                        f"| {title} | {variant} | {precision.upper()} | "
                        f"{photos.cosine:.5f} / {photos.cosine_min:.5f} | "
                        f"{test.cosine:.5f} / {test.cosine_min:.5f} | "
                        + (f"{100 * test.top1_agreement:.1f} % |" if classifier else "- |"))
    section = (
        "\n## The newer families in INT8 and FP16 (`benchmarks/families.py`)\n\n"
        f"Machine: {machine()}. Each family's test fixture (timm, depth 2, dim 96, perturbed "
        "random weights) and its stress copy, quantized with the defaults (INT8: `vit` "
        "scheme, percentile 99.99, equalisation; calibration on the 512 images of "
        "`calibration/fashion-mnist`), run with ONNX Runtime on the 4 bundled photos and on "
        f"{len(TEST_IMAGES)} shipped test images. Cosine of the output (embedding or logits) "
        "with FP32, mean / worst image; top-1 agreement for the classifiers.\n\n"
        "| family | model | precision | cosine, photos | cosine, test images | top-1 "
        "agreement |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    publish(section)


if __name__ == "__main__":
    main()
