"""The runtime pipeline end to end against the way a user would do it without vitedge:
Hugging Face `ViTForImageClassification` + its `ViTImageProcessor` in PyTorch eager, FP32,
same weights, same 640x480 BGR frames, batch 1. vitedge is measured two ways: one frame at
a time (`pipe(frame)`, every core on it: the latency), and `stream()` with one stream per
core (frames in flight at once, each on one core: the throughput). Then a memory check:
RSS over 10,000 frames of `stream()` on a video file.

One run of this script measures both, alternating in rounds, each in a process of its
own as an application would have it: the Hugging Face baseline in a child process, vitedge
in this one, which never imports torch (PyTorch's idle OpenMP threads would otherwise
slow ONNX Runtime's, and the reverse). The model is made and built in child processes
too (`vitedge build`, the CLI).

Run on demand: `.venv/bin/python benchmarks/pipeline_vs_hf.py [tiny small base]`.
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from results import machine, publish

ROOT = Path(__file__).parents[1]
PHOTOS = sorted((ROOT / "vitedge" / "data" / "photos").glob("*.jpg"))
SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
FRAMES, WARMUP, ROUNDS = 40, 5, 3


def frames_640x480() -> list[np.ndarray]:
    import cv2

    return [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in PHOTOS]


def make_hf(size: str, folder: str) -> None:
    """(child process) A random-weight ViT-{size}/16 and its processor, saved."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    hidden, heads = SIZES[size]
    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
        num_hidden_layers=12, image_size=224, patch_size=16, num_labels=1000)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(folder)


def measure_hf(folder: str) -> None:
    """(child process) Milliseconds per frame of processor + eager model, as JSON."""
    import logging

    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = ViTForImageClassification.from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    frames = frames_640x480()
    times = []
    with torch.inference_mode():
        for i in range(WARMUP + FRAMES):
            start = time.perf_counter()
            inputs = processor(images=frames[i % len(frames)][:, :, ::-1], return_tensors="pt")
            int(model(**inputs).logits.softmax(-1).argmax())
            if i >= WARMUP:
                times.append((time.perf_counter() - start) * 1e3)
    print(json.dumps({"times": times, "torch": torch.__version__, "threads": torch.get_num_threads()}))


def measure_vitedge(artifact: Path, fast: bool) -> tuple[list[float], dict[str, float]]:
    from vitedge.runtime import open_pipeline

    frames = frames_640x480()
    times = []
    with open_pipeline(artifact, fast=fast) as pipe:
        for i in range(WARMUP + FRAMES):
            start = time.perf_counter()
            pipe(frames[i % len(frames)])
            if i >= WARMUP:
                times.append((time.perf_counter() - start) * 1e3)
        stages = {k: statistics.median(list(v)[WARMUP:]) for k, v in pipe.times.samples.items() if len(v)}
    return times, stages


def measure_vitedge_streams(artifact: Path, fast: bool) -> float:
    """Milliseconds per frame of `stream()` over the frames, one stream per core."""
    from vitedge.runtime import available_cores, open_pipeline

    frames = frames_640x480()
    sequence = [frames[i % len(frames)] for i in range(FRAMES)]
    with open_pipeline(artifact, fast=fast, streams=available_cores()) as pipe:
        for _ in pipe.stream(sequence[:WARMUP]):
            pass
        start = time.perf_counter()
        count = sum(1 for _ in pipe.stream(sequence))
        return (time.perf_counter() - start) * 1e3 / count


def child(*args: str) -> str:
    return subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True,
                          text=True).stdout


def run(size: str, work: Path) -> tuple[str, dict[str, str]]:
    folder = work / f"hf_{size}"
    child("--make-hf", size, str(folder))
    artifact = work / f"{size}.int8.ort.onnx"
    subprocess.run([sys.executable, "-m", "vitedge", "build", str(folder), "--precision", "int8",
                    "--data", str(ROOT / "calibration" / "fashion-mnist"), "--profile", "cpu",
                    "--num-images", "64", "-o", str(artifact), "--json"], check=True,
                   capture_output=True)
    hf: list[float] = []
    exact: list[float] = []
    fast: list[float] = []
    streamed: dict[str, list[float]] = {"exact": [], "fast": []}
    info: dict[str, str] = {}
    for _ in range(ROUNDS):
        result = json.loads(child("--measure-hf", str(folder)))
        hf += result["times"]
        info = {"torch": result["torch"], "threads": str(result["threads"])}
        t, exact_stages = measure_vitedge(artifact, fast=False)
        exact += t
        t, fast_stages = measure_vitedge(artifact, fast=True)
        fast += t
        for mode in streamed:
            streamed[mode].append(measure_vitedge_streams(artifact, fast=mode == "fast"))
    ms = {"hf": statistics.median(hf), "exact": statistics.median(exact),
          "fast": statistics.median(fast)}
    cells = []
    for label, stages in (("exact", exact_stages), ("fast", fast_stages)):
        overhead = (stages["preprocess"] + stages["patchify"] + stages["postprocess"]) / stages["infer"]
        cells.append(f"{ms['hf'] / ms[label]:.2f}x ({ms[label]:.1f} ms: infer {stages['infer']:.1f}, "
                     f"pre+patchify+post {overhead:.0%} of infer)")
    for values in streamed.values():
        per_frame = statistics.median(values)
        cells.append(f"{ms['hf'] / per_frame:.2f}x ({per_frame:.1f} ms/frame)")
    return f"| ViT-{size[0].upper()}/16 | {ms['hf']:.1f} ms | " + " | ".join(cells) + " |", info


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 1e6


def memory_check(work: Path, frames: int = 10_000) -> str:
    import cv2

    from vitedge.runtime import open_pipeline

    video = work / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (160, 120))
    small = [cv2.resize(f, (160, 120)) for f in frames_640x480()]
    for i in range(frames):
        writer.write(small[i % len(small)])
    writer.release()
    artifact = work / "fmnist.int8.ort.onnx"
    subprocess.run([sys.executable, "-m", "vitedge", "build",
                    str(ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"),
                    "--precision", "int8", "--data", str(ROOT / "calibration" / "fashion-mnist"),
                    "-o", str(artifact), "--json"], check=True, capture_output=True)
    from vitedge.runtime import available_cores

    lines = []
    for streams in sorted({1, available_cores()}):
        samples = []
        with open_pipeline(artifact, streams=streams) as pipe:
            for n, _ in enumerate(pipe.stream(str(video)), 1):
                if n % 1000 == 0:
                    samples.append((n, rss_mb()))
        first, last = samples[0][1], samples[-1][1]
        lines.append(
            f"`stream()` over {samples[-1][0]:,} frames of a video file (demo model, INT8, "
            f"streams={streams}): RSS {first:.1f} MB after 1,000 frames, {last:.1f} MB after "
            f"{samples[-1][0]:,} ({last - first:+.1f} MB); samples every 1,000: "
            + ", ".join(f"{mb:.1f}" for _, mb in samples) + ".")
    return "\n\n".join(lines)


def main(sizes: list[str]) -> None:
    rows = []
    info: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for size in sizes:
            row, info = run(size, work)
            rows.append(row)
            print(row, flush=True)
        memory = memory_check(work)
    print(memory)
    import onnxruntime

    section = (
        "\n## Runtime pipeline vs Hugging Face eager (`benchmarks/pipeline_vs_hf.py`)\n\n"
        f"Machine: {machine()}; torch {info.get('torch')} ({info.get('threads')} "
        f"threads), onnxruntime {onnxruntime.__version__}. Batch 1, 640x480 BGR frames (the "
        f"bundled photos), median end-to-end time per frame over {ROUNDS} rounds of {FRAMES} "
        "frames, baseline and vitedge alternating, each in its own process. Baseline: "
        "`ViTImageProcessor` + `ViTForImageClassification` in PyTorch eager FP32. vitedge: "
        "`vitedge build --precision int8` (ONNX Runtime, CPU) of the same Hugging Face folder, "
        "through `vitedge.open` with exact (PIL) or fast (OpenCV) preprocessing, one frame at "
        "a time (`pipe(frame)`: latency), and as a stream with one frame in flight per core "
        f"(`streams={os.cpu_count()}`: throughput, median of the rounds). Random weights, 1000 "
        "classes. Speed-up = HF time per frame / vitedge time per frame.\n\n"
        "| model | HF eager FP32 | one frame at a time, exact | one frame at a time, fast "
        "| stream, exact | stream, fast |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + memory + "\n")
    publish(section)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-hf"]:
        make_hf(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--measure-hf"]:
        measure_hf(sys.argv[2])
    else:
        main(sys.argv[1:] or ["tiny", "small", "base"])
