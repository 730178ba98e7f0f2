"""The runtime pipeline end to end against the way a user would do it without vitedge:
Hugging Face `ViTForImageClassification` + its `ViTImageProcessor` in PyTorch eager, FP32,
same weights, same 640x480 BGR frames, batch 1, measured in one run with the two
interleaved frame by frame. Then a memory check: RSS over 10,000 frames of `stream()` on
a video file.

Run on demand: `.venv/bin/python benchmarks/pipeline_vs_hf.py [tiny small base]`.
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "RESULTS.md"
PHOTOS = sorted((ROOT / "vitedge" / "data" / "photos").glob("*.jpg"))
SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
FRAMES, WARMUP = 40, 5


def frames_640x480() -> list[np.ndarray]:
    import cv2

    return [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in PHOTOS]


def hf_model(size: str, folder: Path) -> object:
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    hidden, heads = SIZES[size]
    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
        num_hidden_layers=12, image_size=224, patch_size=16, num_labels=1000)).eval()
    processor = ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                                  image_std=[0.5] * 3)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


def run(size: str, work: Path) -> str:
    import torch

    from vitedge.build import BuildOptions, build
    from vitedge.quantize.calibrate import CalibrationOptions
    from vitedge.runtime.pipeline import open_pipeline

    folder = work / f"hf_{size}"
    model, processor = hf_model(size, folder)
    built = build(folder, BuildOptions(precision="int8", data=str(ROOT / "calibration" / "fashion-mnist"),
                                       profile="cpu", output=str(work / f"{size}.int8.ort.onnx"),
                                       calibration=CalibrationOptions(num_images=64)))
    frames = frames_640x480()

    def hf(frame: np.ndarray) -> int:
        with torch.inference_mode():
            inputs = processor(images=frame[:, :, ::-1], return_tensors="pt")
            return int(model(**inputs).logits.softmax(-1).argmax())

    exact = open_pipeline(built.artifact)
    fast = open_pipeline(built.artifact, fast=True)
    runners = {"hf": hf, "vitedge exact": lambda f: exact(f).class_id,
               "vitedge fast": lambda f: fast(f).class_id}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for i in range(WARMUP + FRAMES):
        frame = frames[i % len(frames)]
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(frame)
            if i >= WARMUP:
                times[name].append((time.perf_counter() - start) * 1e3)
    ms = {k: statistics.mean(v) for k, v in times.items()}
    row = []
    for pipe, label in ((exact, "exact"), (fast, "fast")):
        s = {k: statistics.mean(v[-FRAMES:]) for k, v in pipe.times.samples.items() if v}
        overhead = (s["preprocess"] + s["patchify"] + s["postprocess"]) / s["infer"]
        row.append(f"{ms['hf'] / ms['vitedge ' + label]:.2f}x ({ms['vitedge ' + label]:.1f} ms; "
                   f"pre+patchify+post = {overhead:.0%} of infer)")
    exact.close()
    fast.close()
    return f"| ViT-{size[0].upper()}/16 | {ms['hf']:.1f} ms | {row[0]} | {row[1]} |"


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 1e6


def memory_check(work: Path, frames: int = 10_000) -> str:
    import cv2

    from vitedge.build import BuildOptions, build
    from vitedge.runtime.pipeline import open_pipeline

    video = work / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    small = [cv2.resize(f, (160, 120)) for f in frames_640x480()]
    for i in range(frames):
        writer.write(small[i % len(small)])
    writer.release()
    ckpt = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
    built = build(ckpt, BuildOptions(precision="int8", data=str(ROOT / "calibration" / "fashion-mnist"),
                                     output=str(work / "fmnist.int8.ort.onnx")))
    samples = []
    with open_pipeline(built.artifact) as pipe:
        for n, _ in enumerate(pipe.stream(str(video)), 1):
            if n % 1000 == 0:
                samples.append((n, rss_mb()))
    first, last = samples[0][1], samples[-1][1]
    return (f"`stream()` over {samples[-1][0]:,} frames of a video file (demo model, INT8): RSS "
            f"{first:.1f} MB after 1,000 frames, {last:.1f} MB after {samples[-1][0]:,} "
            f"({last - first:+.1f} MB); samples every 1,000: "
            + ", ".join(f"{mb:.1f}" for _, mb in samples) + ".")


def main(sizes: list[str]) -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            rows.append(run(size, work))
            print(rows[-1], flush=True)
        memory = memory_check(work)
    print(memory)
    section = (
        "\n## Runtime pipeline vs Hugging Face eager (`benchmarks/pipeline_vs_hf.py`)\n\n"
        f"Machine: {platform.machine()}, 2 cores, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads). Batch 1, {FRAMES} 640x480 BGR frames (the bundled photos), mean end-to-end "
        "time per frame, the three interleaved frame by frame in one process. Baseline: "
        "`ViTImageProcessor` + `ViTForImageClassification` in PyTorch eager FP32. vitedge: "
        "`vitedge build --precision int8` (ONNX Runtime, CPU) of the same weights, through "
        "`vitedge.open` with exact (PIL) or fast (OpenCV) preprocessing. Random weights, 1000 "
        "classes.\n\n"
        "| model | HF eager FP32 | vitedge INT8, exact: speed-up | vitedge INT8, fast: speed-up |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + memory + "\n")
    with open(RESULTS, "a") as f:
        f.write(section)
    print(section)


if __name__ == "__main__":
    main(sys.argv[1:] or ["tiny", "small", "base"])
