"""vitedge against the CPU peers a user would otherwise pick, on one machine, in one run:
Hugging Face eager FP32 (+ its `ViTImageProcessor`), OpenVINO FP32 and OpenVINO INT8 made by
NNCF's post-training quantization (+ `cv2.dnn.blobFromImage`, as OpenVINO's samples do),
ONNX Runtime's own static quantizer (QDQ, per channel; + the same blob), and vitedge's INT8
artifact on each CPU backend installed (`vitedge.open`, exact and fast preprocessing), and
the same with token merging in the graph (`vitedge export --merge 13`, issue 32), each also
exported for batch 1 (`--batch 1`: every shape static, a single camera's latency build), and
the same FLOPs merged in half the blocks (`--merge 24,0,24,0,...`, batch 1).

All start from the same random-weight Hugging Face `ViTForImageClassification` (ViT-S/16 or
ViT-B/16 at 224) and calibrate on the same images. Each contender runs in a process of its
own (PyTorch's or OpenVINO's idle threads never slow another's), 2 threads, batch 1, the
contenders interleaved round by round. Two times: the model alone on a prepared input, and
frame -> top-1 (a 640x480 BGR frame in, a class id out). Fidelity beside speed: logits
cosine and top-1 agreement with the FP32 model (Hugging Face eager) on the same prepared
inputs (held-out Fashion-MNIST images and the bundled photos).

Needs the peers' packages: `pip install -e '.[peers]'` (NNCF, OpenVINO); a contender whose
package is missing is listed as not run. Run on demand:
`.venv/bin/python benchmarks/peers.py [small base]`. Appends a section to RESULTS.md."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pipeline_vs_hf import PHOTOS, frames_640x480, make_hf
from results import machine, publish

ROOT = Path(__file__).parents[1]
CALIBRATION = ROOT / "calibration" / "fashion-mnist"
HELD_OUT = ROOT / "evaluation" / "fashion-mnist"
CALIBRATION_IMAGES, FIDELITY_IMAGES = 128, 64
ROUNDS, FRAMES, WARMUP, THREADS = 5, 20, 3, 2
MERGE_R = 13
"""Tokens merged per block (ToMe, `vitedge export --merge`) for the merged contenders: at
12 blocks of 197 tokens, about 40 % of the FLOPs removed."""
SPARSE = ",".join(["24", "0"] * 6)
"""The same 41 % of ViT-S's FLOPs in half the merging blocks (`--merge 24,0,24,0,...`): each
merge's gathers and one-hot products cost about the same at any r."""
CONTENDERS = {
    "hf": "HF eager FP32 (+ ViTImageProcessor)",
    "ov-fp32": "OpenVINO FP32 (+ cv2 blob)",
    "ov-nncf": "OpenVINO INT8, NNCF (+ cv2 blob)",
    "ort-quantizer": "ONNX Runtime INT8, its own quantizer (+ cv2 blob)",
    "vitedge-onnxruntime": "vitedge INT8, onnxruntime (`vitedge.open`, exact / fast)",
    "vitedge-openvino": "vitedge INT8, openvino (`vitedge.open`, exact / fast)",
    "vitedge-fp32": "vitedge FP32, onnxruntime (exact / fast)",
    "vitedge-merged-onnxruntime": f"vitedge INT8 + token merging r = {MERGE_R}, onnxruntime (exact / fast)",
    "vitedge-merged-openvino": f"vitedge INT8 + token merging r = {MERGE_R}, openvino (exact / fast)",
    "vitedge-b1-onnxruntime": "vitedge INT8, exported for batch 1 (`--batch 1`), onnxruntime (exact / fast)",
    "vitedge-b1-openvino": "vitedge INT8, exported for batch 1, openvino (exact / fast)",
    "vitedge-merged-b1-onnxruntime": f"vitedge INT8 + token merging r = {MERGE_R}, exported for batch 1, onnxruntime (exact / fast)",
    "vitedge-merged-b1-openvino": f"vitedge INT8 + token merging r = {MERGE_R}, exported for batch 1, openvino (exact / fast)",
    "vitedge-sparse-b1-onnxruntime": "vitedge INT8 + token merging r = 24 in every other block, exported for batch 1, onnxruntime (exact / fast)",
    "vitedge-sparse-b1-openvino": "vitedge INT8 + token merging r = 24 in every other block, exported for batch 1, openvino (exact / fast)",
}
ARTIFACTS = {"vitedge-onnxruntime": ["vitedge.int8.ort.onnx"],
             "vitedge-openvino": ["vitedge.int8.ov.xml", "vitedge.int8.ov.bin"],
             "vitedge-fp32": ["vitedge.fp32.ort.onnx"],
             "vitedge-merged-onnxruntime": ["vitedge.merged.int8.ort.onnx"],
             "vitedge-merged-openvino": ["vitedge.merged.int8.ov.xml", "vitedge.merged.int8.ov.bin"],
             "vitedge-b1-onnxruntime": ["vitedge.b1.int8.ort.onnx"],
             "vitedge-b1-openvino": ["vitedge.b1.int8.ov.xml", "vitedge.b1.int8.ov.bin"],
             "vitedge-merged-b1-onnxruntime": ["vitedge.merged.b1.int8.ort.onnx"],
             "vitedge-merged-b1-openvino": ["vitedge.merged.b1.int8.ov.xml",
                                            "vitedge.merged.b1.int8.ov.bin"],
             "vitedge-sparse-b1-onnxruntime": ["vitedge.sparse.b1.int8.ort.onnx"],
             "vitedge-sparse-b1-openvino": ["vitedge.sparse.b1.int8.ov.xml",
                                            "vitedge.sparse.b1.int8.ov.bin"]}


# --- made once (the Hugging Face model in a child process: torch stays out of this one) ---

def vitedge_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vitedge", *args, "--json"], check=True,
                   capture_output=True)


def prepared(fp32: Path, items: list[Any]) -> np.ndarray:
    """The model inputs (N, 3, 224, 224) of images or frames, by the model's preprocessing."""
    from vitedge.runtime import open_pipeline

    with open_pipeline(fp32) as pipe:
        return np.concatenate([pipe.prepare([item]) for item in items])


def make_all(size: str, work: Path) -> dict[str, str]:
    """Every contender's model, from the one Hugging Face folder; what could not be made,
    and why."""
    hf = work / "hf"
    subprocess.run([sys.executable, __file__, "--make-hf", size, str(hf)], check=True,
                   capture_output=True)
    calib = sorted(CALIBRATION.rglob("*.png"))[:CALIBRATION_IMAGES]
    vitedge_cli("export", str(hf), "-o", str(work / "fp32.onnx"))
    fp32 = work / "fp32.onnx"
    np.save(work / "calibration.npy", prepared(fp32, calib))
    held = sorted(HELD_OUT.rglob("*.png"))[:FIDELITY_IMAGES]
    np.save(work / "fidelity.npy", prepared(fp32, [*held, *PHOTOS]))
    missing: dict[str, str] = {}
    common = ["--precision", "int8", "--data", str(CALIBRATION),
              "--num-images", str(CALIBRATION_IMAGES)]
    vitedge_cli("build", str(fp32), *common, "--backend", "onnxruntime",
                "-o", str(work / "vitedge.int8.ort.onnx"))
    vitedge_cli("build", str(fp32), "--precision", "fp32", "--backend", "onnxruntime",
                "-o", str(work / "vitedge.fp32.ort.onnx"))
    merged = work / "merged.fp32.onnx"
    vitedge_cli("export", str(hf), "--merge", str(MERGE_R), "-o", str(merged))
    # a single camera's latency build: every shape static (batch 1), merged or not
    b1, merged_b1 = work / "b1.fp32.onnx", work / "merged.b1.fp32.onnx"
    vitedge_cli("export", str(hf), "--batch", "1", "-o", str(b1))
    vitedge_cli("export", str(hf), "--merge", str(MERGE_R), "--batch", "1", "-o", str(merged_b1))
    sparse_b1 = work / "sparse.b1.fp32.onnx"
    vitedge_cli("export", str(hf), "--merge", SPARSE, "--batch", "1", "-o", str(sparse_b1))
    static = {"vitedge.merged": merged, "vitedge.b1": b1, "vitedge.merged.b1": merged_b1,
              "vitedge.sparse.b1": sparse_b1}
    for stem, model in static.items():
        vitedge_cli("build", str(model), *common, "--backend", "onnxruntime",
                    "-o", str(work / f"{stem}.int8.ort.onnx"))
    try:
        import openvino  # noqa: F401
    except ImportError:
        missing.update({k: "openvino is not installed" for k in
                        ("ov-fp32", "ov-nncf", "vitedge-openvino", "vitedge-merged-openvino",
                         "vitedge-b1-openvino", "vitedge-merged-b1-openvino",
                         "vitedge-sparse-b1-openvino")})
    else:
        vitedge_cli("build", str(fp32), *common, "--backend", "openvino",
                    "-o", str(work / "vitedge.int8.ov.xml"))
        for stem, model in static.items():
            vitedge_cli("build", str(model), *common, "--backend", "openvino",
                        "-o", str(work / f"{stem}.int8.ov.xml"))
        try:
            make_nncf(fp32, work)
        except ImportError:
            missing["ov-nncf"] = "nncf is not installed (pip install -e '.[peers]')"
    make_ort_quantized(fp32, work)
    return missing


def make_nncf(fp32: Path, work: Path) -> None:
    """OpenVINO INT8 as OpenVINO's documentation makes it: NNCF post-training quantization
    with the transformer model type, on the same calibration inputs."""
    import nncf
    import openvino as ov

    data = np.load(work / "calibration.npy")
    model = ov.convert_model(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset([data[i:i + 1] for i in range(len(data))]),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(data))
    ov.save_model(quantized, str(work / "nncf.int8.xml"))


def make_ort_quantized(fp32: Path, work: Path) -> None:
    """ONNX Runtime's own static quantizer as its documentation recommends for CPUs:
    pre-processed, QDQ, INT8 weights per channel, on the same calibration inputs."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    data = np.load(work / "calibration.npy")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": data[i:i + 1]} for i in range(len(data))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = work / "ort.pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    quantize_static(str(pre), str(work / "ort.int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


# --- each contender, in a process of its own ------------------------------------------------

def blob(frame: np.ndarray) -> np.ndarray:
    """A BGR frame as (1, 3, 224, 224): resized, RGB, (x - 127.5) / 127.5 (mean and std 0.5)."""
    import cv2

    return cv2.dnn.blobFromImage(frame, 1 / 127.5, (224, 224), (127.5, 127.5, 127.5),
                                 swapRB=True)


def load(name: str, work: Path) -> tuple[Callable[[np.ndarray], np.ndarray],
                                         dict[str, Callable[[np.ndarray], int]]]:
    """(model: prepared input -> logits, {mode: frame -> top-1 class id})."""
    if name == "hf":
        import logging

        import torch
        from transformers import ViTForImageClassification, ViTImageProcessor

        logging.getLogger("transformers").setLevel(logging.ERROR)
        torch.set_num_threads(THREADS)
        model = ViTForImageClassification.from_pretrained(work / "hf").eval()
        processor = ViTImageProcessor.from_pretrained(work / "hf")

        def hf_model(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(pixel_values=torch.from_numpy(x)).logits.numpy()

        def hf_frame(frame: np.ndarray) -> int:
            with torch.inference_mode():
                inputs = processor(images=frame[:, :, ::-1], return_tensors="pt")
                return int(model(**inputs).logits.argmax())

        return hf_model, {"": hf_frame}
    if name.startswith("ov-"):
        import openvino as ov

        core = ov.Core()
        source = work / ("fp32.onnx" if name == "ov-fp32" else "nncf.int8.xml")
        compiled = core.compile_model(core.read_model(str(source)), "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": THREADS})
        request = compiled.create_infer_request()

        def ov_model(x: np.ndarray) -> np.ndarray:
            request.infer({0: x})
            return np.array(request.get_output_tensor(0).data)

        return ov_model, {"": lambda frame: int(ov_model(blob(frame)).argmax())}
    if name == "ort-quantizer":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        session = ort.InferenceSession(str(work / "ort.int8.onnx"), opts,
                                       providers=["CPUExecutionProvider"])

        def ort_model(x: np.ndarray) -> np.ndarray:
            return session.run(None, {"images": x})[0]

        return ort_model, {"": lambda frame: int(ort_model(blob(frame)).argmax())}
    from vitedge.runtime import open_pipeline

    artifact = ARTIFACTS[name][0]
    exact = open_pipeline(work / artifact, threads=THREADS)
    fast = open_pipeline(work / artifact, threads=THREADS, fast=True)
    return exact.model.infer, {"exact": lambda f: int(exact(f).class_id),
                               "fast": lambda f: int(fast(f).class_id)}


def measure(name: str, work: Path, fidelity: bool) -> None:
    """(child process) Milliseconds per call, model alone and frame -> top-1, as JSON; with
    `fidelity`, the logits on the fidelity inputs too."""
    model, frame_paths = load(name, work)
    x = np.load(work / "fidelity.npy")[:1]
    frames = frames_640x480()

    def timed(fn: Callable[[Any], Any], items: list[Any]) -> list[float]:
        times = []
        for i in range(WARMUP + FRAMES):
            start = time.perf_counter()
            fn(items[i % len(items)])
            if i >= WARMUP:
                times.append((time.perf_counter() - start) * 1e3)
        return times

    result: dict[str, Any] = {"model": timed(model, [x]),
                              "frames": {mode: timed(fn, frames) for mode, fn in frame_paths.items()}}
    if fidelity:
        inputs = np.load(work / "fidelity.npy")
        result["logits"] = np.concatenate([model(inputs[i:i + 1])
                                           for i in range(len(inputs))]).tolist()
    print(json.dumps(result))


# --- the run ---------------------------------------------------------------------------------

def fidelity_of(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(mean cosine of the logit vectors, top-1 agreement) against the reference."""
    cos = np.sum(logits * reference, 1) / (np.linalg.norm(logits, axis=1)
                                           * np.linalg.norm(reference, axis=1))
    return float(cos.mean()), float(np.mean(logits.argmax(1) == reference.argmax(1)))


def size_mb(work: Path, name: str) -> str:
    files = {"hf": ["hf/model.safetensors"], "ov-fp32": ["fp32.onnx"],
             "ov-nncf": ["nncf.int8.xml", "nncf.int8.bin"], "ort-quantizer": ["ort.int8.onnx"],
             **ARTIFACTS}[name]
    paths = [work / f for f in files]
    return f"{sum(p.stat().st_size for p in paths) / 1e6:.1f} MB" if all(
        p.is_file() for p in paths) else "-"


def run(size: str, work: Path) -> str:
    started = time.time()
    missing = make_all(size, work)
    made = time.time() - started
    names = [n for n in CONTENDERS if n not in missing]
    model_ms: dict[str, list[float]] = {n: [] for n in names}
    frame_ms: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    logits: dict[str, np.ndarray] = {}
    for r in range(ROUNDS):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--measure", name, str(work),
                                  str(int(r == 0))], check=True, capture_output=True, text=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            model_ms[name] += result["model"]
            for mode, times in result["frames"].items():
                frame_ms[name].setdefault(mode, []).extend(times)
            if "logits" in result:
                logits[name] = np.asarray(result["logits"], np.float32)
        print(f"round {r + 1}/{ROUNDS} done", flush=True)
    reference = logits["hf"]
    rows = []
    for name in names:
        frames = " / ".join(f"{statistics.median(v):.1f}" for v in frame_ms[name].values())
        cosine, top1 = fidelity_of(logits[name], reference)
        rows.append(f"| {CONTENDERS[name]} | {statistics.median(model_ms[name]):.1f} | {frames} "
                    f"| {cosine:.4f} | {top1:.1%} | {size_mb(work, name)} |")
    for name, why in missing.items():
        rows.append(f"| {CONTENDERS[name]} | not run: {why} | | | | |")
    best = {n: min(statistics.median(v) for v in frame_ms[n].values()) for n in names}
    ratios = []
    for peer in ("ov-nncf", "ort-quantizer", "ov-fp32", "hf"):
        ours = [n for n in ("vitedge-onnxruntime", "vitedge-openvino") if n in best]
        if peer in best and ours:
            fastest = min(ours, key=best.get)  # type: ignore[arg-type]
            ratios.append(f"{CONTENDERS[peer].split(' (')[0]} {best[peer] / best[fastest]:.2f}x")
    merging = []
    for ours in ("onnxruntime", "openvino"):
        for form, unmerged in (("", f"vitedge-{ours}"), ("b1-", f"vitedge-b1-{ours}")):
            m = f"vitedge-merged-{form}{ours}"
            if m in best:
                merging.append(
                    f"{ours}{' (batch-1 exports)' if form else ''}: {best[f'vitedge-{ours}'] / best[m]:.2f}x "
                    "vitedge INT8 unmerged" + (
                        f" ({best[unmerged] / best[m]:.2f}x its batch-1 export)" if form else "")
                    + (f", {best['ov-nncf'] / best[m]:.2f}x OpenVINO INT8, NNCF"
                       if "ov-nncf" in best else ""))
        sparse, unmerged = f"vitedge-sparse-b1-{ours}", f"vitedge-b1-{ours}"
        if sparse in best and unmerged in best:
            merging.append(
                f"{ours}, r = 24 in every other block (batch-1 exports): "
                f"{best[f'vitedge-{ours}'] / best[sparse]:.2f}x vitedge INT8 unmerged "
                f"({best[unmerged] / best[sparse]:.2f}x its batch-1 export)"
                + (f", {best['ov-nncf'] / best[sparse]:.2f}x OpenVINO INT8, NNCF"
                   if "ov-nncf" in best else ""))
    return (f"\n### ViT-{size[0].upper()}/16 at 224\n\n"
            "| contender | model ms | frame -> top-1 ms | logits cosine vs FP32 | top-1 agreement "
            "vs FP32 | size |\n|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "vitedge's faster INT8 artifact, frame -> top-1 (its faster path), against each "
            "peer's (above 1.00x: vitedge is faster): " + ", ".join(ratios)
            + ". With token merging (r = " + str(MERGE_R) + "), frame -> top-1 (faster path): "
            + "; ".join(merging) + f". Making every model took {made:.0f} s.\n")


def main(sizes: list[str]) -> None:
    import onnxruntime

    versions = [f"onnxruntime {onnxruntime.__version__}"]
    for package in ("openvino", "nncf", "torch", "transformers"):
        try:
            module = __import__(package)
            versions.append(f"{package} {str(module.__version__).split('-')[0]}")
        except ImportError:
            versions.append(f"no {package}")
    sections = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            sections.append(run(size, Path(tmp)))
            print(sections[-1], flush=True)
    publish(
        "\n## vitedge against its CPU peers (`benchmarks/peers.py`)\n\n"
        f"Machine: {machine()}; {', '.join(versions)}. Random-weight Hugging Face "
        f"ViTForImageClassification, 1000 classes; every quantizer calibrated on the same "
        f"{CALIBRATION_IMAGES} Fashion-MNIST images. Batch 1, {THREADS} threads, each contender in "
        f"its own process, {ROUNDS} interleaved rounds of {FRAMES} calls; medians. Model: a "
        "prepared input. Frame -> top-1: a 640x480 BGR frame in, a class id out (peers: their "
        "own preprocessing; vitedge: exact / fast). Fidelity: on "
        f"{FIDELITY_IMAGES} held-out images and {len(PHOTOS)} photos, the same prepared inputs "
        "for every contender, against Hugging Face eager FP32.\n" + "".join(sections))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-hf"]:
        make_hf(sys.argv[2], sys.argv[3])
    elif sys.argv[1:2] == ["--measure"]:
        measure(sys.argv[2], Path(sys.argv[3]), sys.argv[4] == "1")
    else:
        main(sys.argv[1:] or ["small"])
