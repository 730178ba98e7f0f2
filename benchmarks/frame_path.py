"""What the frame path adds to the model, per backend: a random-weight ViT-S/16 built INT8
for ONNX Runtime and for OpenVINO (`vitedge build`, profiles `cpu` and `cpu-openvino`), each
run as the model alone (a prepared input) and frame -> top-1 (a 640x480 BGR frame in, one
`Pipeline` call) on the exact path as it was (Pillow resizes the whole frame, then crops;
`np.take` normalisation), the exact path now (only what the crop keeps: by the C resampler
where it is built, else by Pillow in parts on two threads; VITEDGE_NATIVE_RESAMPLE=0 times
Pillow's) and the fast (OpenCV) path, all interleaved round by round in one process, one
runner per backend shared by its pipelines. The `infer` column is the pipeline's own
inference stage inside the exact frame path: the model's time with the preprocessing
threads around it; the last column times decode + preprocess alone (`Pipeline.prepare`),
without the model.

Run on demand:
    .venv/bin/python benchmarks/frame_path.py [--rounds 60] [--work FOLDER]
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from common import CALIBRATION, build_unverified, export_random
from PIL import Image
from results import machine, publish

from vitedge.backends import load_runner
from vitedge.bench import bench_frames
from vitedge.options import CalibrationOptions, QuantizeRequest
from vitedge.quantize import quantize_model
from vitedge.runtime import Pipeline, exact_resampler

ARCH = "vit_small_patch16_224"
PROFILES = {"ONNX Runtime": ("cpu", ".ort.onnx"), "OpenVINO": ("cpu-openvino", ".ov.xml")}
FILTERS = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


class PlainPillow:
    """The exact path before: the whole frame resized by Pillow, then cropped, then
    normalised by `np.take` (the same numbers as the exact path now)."""

    def __init__(self, manifest: Any):
        p = manifest.preprocess
        self.prep = p
        levels = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
        self.table = ((levels[:, None] - np.asarray(p.mean, np.float32))
                      / np.asarray(p.std, np.float32)).T.copy()

    def __call__(self, image: Any) -> np.ndarray:
        p = self.prep
        # a camera's array kept for the C resampler (FramePixels) has its PIL image made
        image = image.image() if hasattr(image, "image") else image.convert("RGB")
        w, h = image.size
        short = p.resize[0]
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        image = image.resize(size, FILTERS[p.interpolation])
        top, left = p.crop_box(size[1], size[0])
        pixels = np.asarray(image.crop((left, top, left + p.crop[1], top + p.crop[0])))
        planes = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        out = np.empty(planes.shape, np.float32)
        for c in range(len(planes)):
            np.take(self.table[c], planes[c], out=out[c])
        return out


def make(work: Path) -> dict[str, Path]:
    """One INT8 ViT-S/16 (random weights, calibrated on 64 images), built per backend (kept
    from an earlier run in `work` when there)."""
    built = {name: work / f"vits.int8{suffix}" for name, (_, suffix) in PROFILES.items()}
    if all(p.is_file() for p in built.values()):
        return built
    (work / "vits").mkdir(parents=True, exist_ok=True)
    fp32 = export_random(ARCH, work / "vits")
    q = work / "vits.int8.onnx"
    quantize_model(fp32, q, QuantizeRequest("int8", data=str(CALIBRATION),
                                            calibration=CalibrationOptions(num_images=64)))
    return {name: build_unverified(q, work / f"vits.int8{suffix}", profile)
            for name, (profile, suffix) in PROFILES.items()}


def measure(artifacts: dict[str, Path], rounds: int) -> dict[str, dict[str, list[float]]]:
    """ms per call of every case, interleaved round by round."""
    frames = bench_frames(None, 8)
    cases: dict[str, dict[str, Callable[[np.ndarray], Any]]] = {}
    infer: dict[str, list[float]] = {}
    runners = []
    for name, artifact in artifacts.items():
        runner = load_runner(artifact)
        runners.append(runner)
        exact, fast, before = Pipeline(runner), Pipeline(runner, fast=True), Pipeline(runner)
        before.preprocess = PlainPillow(runner.manifest)  # type: ignore[assignment]
        x = exact.prepare(frames[:1])
        infer[name] = []

        def exact_call(frame: np.ndarray, pipe: Pipeline = exact, name: str = name) -> None:
            infer[name].append(pipe(frame).timings["infer"])

        cases[name] = {"model": lambda _f, r=runner, x=x: r.infer(x),
                       "before": before, "exact": exact_call, "fast": fast,
                       "prepare before": lambda f, p=before: p.prepare([f]),
                       "prepare exact": lambda f, p=exact: p.prepare([f])}
    times = {n: {c: [] for c in (*cs, "infer")} for n, cs in cases.items()}
    for r in range(rounds + 3):
        for name, calls in cases.items():
            for case, call in calls.items():
                frame = frames[r % len(frames)]
                start = time.perf_counter()
                call(frame)
                if r >= 3:
                    times[name][case].append((time.perf_counter() - start) * 1e3)
    for name in cases:
        times[name]["infer"] = infer[name][3:]
    for runner in runners:
        runner.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds")
    parser.add_argument("--work", help="folder for the models, kept for the next run "
                        "(default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = make(Path(args.work or tmp))
        load_before = os.getloadavg()[0]
        times = measure(artifacts, args.rounds)
    load_after = os.getloadavg()[0]
    rows = []
    for name, cases in times.items():
        median = {k: statistics.median(v) for k, v in cases.items()}
        model = median["model"]

        def added(case: str, model: float = model, median: dict = median,
                  cases: dict = cases) -> str:
            # paired: each round's frame call less the same round's model call, measured
            # back to back, so that load drifting between rounds cancels
            extra = statistics.median(f - m for f, m in zip(cases[case], cases["model"],
                                                             strict=True))
            return f"{median[case]:.1f} ({extra:+.1f}, {extra / model:+.0%})"

        rows.append(f"| {name} | {model:.1f} | {added('before')} | {added('exact')} | "
                    f"{added('fast')} | {median['infer']:.1f} | {median['prepare before']:.2f}"
                    f" / {median['prepare exact']:.2f} |")
    section = (
        "\n## The frame path against the model alone (`benchmarks/frame_path.py`)\n\n"
        f"Machine: {machine()}; load average {load_before:.1f} before, {load_after:.1f} after "
        f"(a shared machine). ViT-S/16 ({ARCH}, random weights) INT8, batch 1, each backend's "
        "default threads; median ms of "
        f"{args.rounds} interleaved rounds; in brackets what the frame path adds to the model "
        "alone (the median of each round's difference, and its share of the model's "
        "median). Frames: random 640x480 BGR; the model's preprocessing: resize the "
        "shorter side to 248 (bicubic), centre crop 224. The exact path now resizes with "
        f"the {exact_resampler()} resampler (`vitedge.runtime.exact_resampler()`).\n\n"
        "| backend | model alone | frame -> top-1, exact before | exact now | fast (OpenCV) | "
        "infer stage inside the exact path | decode + preprocess alone, before / now |\n"
        "|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n")
    publish(section)


if __name__ == "__main__":
    main()
