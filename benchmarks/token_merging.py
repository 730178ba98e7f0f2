"""Token merging (ToMe, `vitedge export --merge`): accuracy against r on the demo model
(examples/fashion_mnist) and its stress copy on the 10,000 test images (FP32 and INT8, and
what `--merge auto --max-drop 0.5` chooses), and speed against r at ViT-S/16 (random
weights; the speed does not depend on them): the model alone and frame -> top-1, batch 1,
FP32 and INT8 on ONNX Runtime and OpenVINO, measured interleaved in one run.

Run on demand (the test split needs `apt-get install dataset-fashion-mnist`):
    .venv/bin/python benchmarks/token_merging.py [--data FOLDER] [--speed-only [--arch vit_base_patch16_224]] [--accuracy-only]
Appends a section to benchmarks/RESULTS.md (`--speed-only`: the speed table alone (ViT-S/16, or --arch),
a few minutes; `--accuracy-only`: the demo model's table alone)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from common import CALIBRATION, ROOT, build_unverified, latency_ms
from fashion_mnist_accuracy import full_test_split
from results import machine, publish

from vitedge.backends import load_runner
from vitedge.evaluate import evaluate
from vitedge.export import ExportOptions, export_onnx
from vitedge.model import random_checkpoint
from vitedge.options import CalibrationOptions, EvalOptions, QuantizeRequest
from vitedge.quantize import quantize_model, with_outlier_channels
from vitedge.runtime import Pipeline

CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
DEMO_R = [0, 1, 2, 4]
SPEED_ARCH = "vit_small_patch16_224"
SPEED_NAMES = {"vit_small_patch16_224": "ViT-S/16", "vit_base_patch16_224": "ViT-B/16"}
SPEED_R: list[int | tuple[int, ...]] = [0, 4, 8, 13, (24, 0) * 6]
"""Constant r, and the same 41 % of ViT-S's FLOPs as r = 13 in half the merging blocks
(each merge's gathers and one-hot products cost about the same at any r)."""
CALIBRATION_IMAGES = 64


JUDGE_IMAGES = 5000
"""Held-out training images `--merge auto` judges on (its budget is a top-1 change, less two
standard errors: a few hundred images cannot vouch for half a point)."""


def judging_images(folder: Path) -> Path:
    """A seeded sample of the training split (not the test images the table is measured on)."""
    script = ROOT / "examples" / "fashion_mnist" / "fashion_mnist.py"
    subprocess.run([sys.executable, str(script), "images", "--split", "train", "--count",
                    str(JUDGE_IMAGES), "--seed", "7", "-o", str(folder)], check=True)
    return folder


def int8(model: Path, out: Path) -> Path:
    quantize_model(model, out, QuantizeRequest("int8", data=str(CALIBRATION),
                                               calibration=CalibrationOptions(
                                                   num_images=CALIBRATION_IMAGES)))
    return out


def accuracy(work: Path, data: Path) -> list[str]:
    """Rows: r, GFLOPs, then top-1 (change) per variant; agreement with the unmerged model."""
    plain = work / "demo.0.onnx"
    export_onnx(CHECKPOINT, plain, ExportOptions())
    stress_plain = work / "stress.0.onnx"
    stress_plain.write_bytes(with_outlier_channels(onnx.load(str(plain))).SerializeToString())
    base: dict[str, float] = {}
    rows = []
    judge = judging_images(work / "judge")
    autos: list[tuple[str, object, Path | None]] = []
    for batch in (None, 32):  # timed at batch 1 (a dynamic batch), and exported for 32
        chosen = export_onnx(CHECKPOINT, work / "demo.auto.onnx", ExportOptions(
            merge="auto", max_drop=0.5, merge_data=str(judge), merge_images=JUDGE_IMAGES,
            batch=batch)).manifest.architecture.merge
        auto = work / f"demo.auto{batch or 1}.onnx"  # the choice, with a dynamic batch
        export_onnx(CHECKPOINT, auto, ExportOptions(merge=chosen or None))
        autos.append((f"auto, --max-drop 0.5{f' --batch {batch}' if batch else ''}", "auto", auto))
    merges: list[tuple[str, object, Path | None]] = [
        (str(r), r, None) for r in DEMO_R] + autos
    for label, r, given in merges:
        fp32 = given or work / f"demo.{r}.onnx"
        if given is None and r:
            export_onnx(CHECKPOINT, fp32, ExportOptions(merge=r))  # type: ignore[arg-type]
        stress = work / f"stress.{label}.onnx"
        if fp32 != plain:
            stress.write_bytes(with_outlier_channels(onnx.load(str(fp32))).SerializeToString())
        else:
            stress = stress_plain
        cells = []
        for name, model, reference in (
                ("fp32", fp32, plain), ("int8", int8(fp32, work / f"q.{label}.onnx"), plain),
                ("stress int8", int8(stress, work / f"sq.{label}.onnx"), stress_plain)):
            result = evaluate(model, EvalOptions(data=data, reference=reference))
            assert result.agreement is not None
            base.setdefault(name, result.top1)
            cells.append(f"{result.top1:.2%} ({(result.top1 - base[name]) * 100:+.2f}) / "
                         f"{result.agreement.top1_agreement:.2%}")
            print(label, name, cells[-1], flush=True)
        with load_runner(fp32) as runner:
            cfg = runner.manifest.architecture
        schedule = ",".join(map(str, cfg.merge)) or "none"
        rows.append(f"| {label} | {schedule} | {2 * cfg.macs() / 1e6:.1f} | " + " | ".join(cells) + " |")
    return rows


def _label(r: int | tuple[int, ...]) -> str:
    """r, or a per-block schedule as its first blocks (`24,0,...`)."""
    return str(r) if isinstance(r, int) else ",".join(map(str, r[:2])) + ",... (every other block)"


def speed(work: Path, arch: str = SPEED_ARCH, batch: int | None = None) -> list[str]:
    """Rows: r, tokens left, GFLOPs, then median batch-1 ms per runtime and precision."""
    checkpoint = random_checkpoint(arch, work / "vits.safetensors")
    runners = {}
    flops = {}
    for i, r in enumerate(SPEED_R):
        fp32 = work / f"vits.{i}.onnx"
        result = export_onnx(checkpoint, fp32, ExportOptions(arch=arch, merge=r or None,
                                                             verify=False, batch=batch))
        cfg = result.manifest.architecture
        flops[r] = (2 * cfg.macs() / 1e9, cfg.tokens_per_block()[-1])
        q = int8(fp32, work / f"vits.{i}.int8.onnx")
        for precision, model in (("fp32", fp32), ("int8", q)):
            ort = build_unverified(model, work / f"vits.{i}.{precision}.ort.onnx", "cpu")
            runners[(r, "onnxruntime", precision)] = load_runner(ort)
            ov = build_unverified(model, work / f"vits.{i}.{precision}.ov.xml", "cpu-openvino")
            runners[(r, "openvino", precision)] = load_runner(ov)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)

    class Timed:
        """The model alone (a prepared input), or frame -> top-1 (`frames`: a 640x480 BGR
        frame through the exact frame path, one `Pipeline` call)."""

        def __init__(self, runner: object, frames: bool) -> None:
            self.runner = runner
            self.pipe = Pipeline(runner) if frames else None  # type: ignore[arg-type]

        def run(self, _outputs: object, feed: dict[str, np.ndarray]) -> object:
            if self.pipe is not None:
                return self.pipe(frame)
            return self.runner.infer(feed["images"])  # type: ignore[attr-defined]

    timed = {(*k, frames): Timed(v, frames) for k, v in runners.items()
             for frames in (False, True)}
    times = latency_ms(timed, x, rounds=30)
    for runner in runners.values():
        runner.close()
    rows = []
    columns = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"),
               ("openvino", "int8")]
    for r in SPEED_R:
        cells = [f"{times[(r, *c, False)]:.1f} ({times[(0, *c, False)] / times[(r, *c, False)]:.2f}x)"
                 f" / {times[(r, *c, True)]:.1f} ({times[(0, *c, True)] / times[(r, *c, True)]:.2f}x)"
                 for c in columns]
        rows.append(f"| {_label(r)} | {flops[r][1]} | {flops[r][0]:.2f} ({1 - flops[r][0] / flops[0][0]:.0%} "
                    f"fewer) | " + " | ".join(cells) + " |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", help="labelled test folder (default: the full test split)")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the speed table (no accuracy on the demo model)")
    parser.add_argument("--accuracy-only", action="store_true",
                        help="only the demo model's accuracy table (no speed table)")
    parser.add_argument("--batch", type=int, help="export the speed table's models for this "
                        "fixed batch (1: every shape static) instead of a dynamic one")
    parser.add_argument("--arch", default=SPEED_ARCH, choices=sorted(SPEED_NAMES),
                        help="the model of the speed table (random weights)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        accuracy_rows: list[str] = []
        images = 0
        if not args.speed_only:
            data = Path(args.data) if args.data else full_test_split(work / "test")
            images = sum(1 for _ in data.rglob("*.png"))
            accuracy_rows = accuracy(work, data)
        speed_rows = [] if args.accuracy_only else speed(work, args.arch, args.batch)
    demo = ("Accuracy against r on the demo model: the earlier run below (a speed-only run; "
            "the merging's arithmetic is checked against the reference by "
            "tests/test_token_merging.py).\n\n") if args.speed_only else (
        f"Demo model (Fashion-MNIST, 50 tokens, 6 blocks) on {images} test images: top-1 "
        "(change against r = 0, points) / top-1 agreement with the unmerged model of the same "
        f"precision; INT8 calibrated on {CALIBRATION_IMAGES} images of "
        "`calibration/fashion-mnist`, run on ONNX Runtime; the stress copy (outlier channels, "
        "the same function) INT8 against its own FP32. `auto` (--max-drop 0.5) chose on "
        f"{JUDGE_IMAGES} held-out images of the training split by their labels, timing ONNX "
        "Runtime here at batch 1 (a dynamic batch) and, exported with --batch 32, at batch 32 "
        "(its rows evaluate the chosen schedule exported with a dynamic batch).\n\n"
        "| r | schedule | MFLOPs | FP32 | INT8 | stress copy INT8 |\n|---|---|---|---|---|---|\n"
        + "\n".join(accuracy_rows) + "\n\n")
    section = (
        f"\n## Token merging: {'speed' if args.speed_only else 'accuracy' if args.accuracy_only else 'accuracy and speed'} against r "
        "(`benchmarks/token_merging.py`)\n\n"
        f"Machine: {machine()}. Token merging (ToMe, `vitedge export --merge R`) in the "
        "exported graph, r tokens merged per block (capped at half the tokens left).\n\n"
        + demo + ("" if args.accuracy_only else
        f"Speed at {SPEED_NAMES[args.arch]} ({args.arch}, random weights, 197 tokens): the "
        "model alone / frame -> top-1 (a 640x480 BGR frame, the exact frame path), batch "
        "1, median ms of 30 interleaved rounds (speed-up against r = 0), "
        + (f"exported for batch {args.batch} (`--batch {args.batch}`: static shapes), "
           if args.batch else "exported with a dynamic batch, ") + "artifacts of `vitedge "
        "build` (profiles `cpu` and `cpu-openvino`, INT8 calibrated on "
        f"{CALIBRATION_IMAGES} images).\n\n"
        "| r | tokens at the head | GFLOPs | ONNX Runtime FP32 | ONNX Runtime INT8 | "
        "OpenVINO FP32 | OpenVINO INT8 |\n|---|---|---|---|---|---|---|\n"
        + "\n".join(speed_rows) + "\n"))
    publish(section)


if __name__ == "__main__":
    main()
