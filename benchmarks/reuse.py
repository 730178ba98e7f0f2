"""Frame and token reuse on real footage (OpenCV's sample videos, `apt-get install
opencv-doc`): 8 loopback MJPEG cameras playing vtest.avi (a fixed camera over a plaza) from
different offsets at 10 fps each, served by another process, through one pipeline
(`pipe.multi_stream`, batch 1, the CPU's best), with no reuse and with frame reuse at the
threshold `tune_reuse` picks on the clip's first 200 frames (1 % budget); then the same
with Megamind.avi (a moving camera), where reuse must cost nothing. Models: the demo model
(FP32) and a ViT-S/16 INT8 (random weights).

Frames/s delivered (all cameras), frames inferred/s, dropped/s, p50 / p99 capture-to-result
latency, and fidelity: up to 150 reused results, sampled as they come, are compared after
the run with a full inference of the same frame (top-1 agreement, scaled to all delivered
frames, and the worst logit cosine; an inferred result is full inference by construction).
Frame + token reuse: the same 8 cameras through the streaming graph (`vitedge.open` on it:
one state per camera, each batch run frame by frame) with frame reuse in front, against
the plain graph of the same precision with no reuse, in FP32 (`--int8`: both built INT8
for ONNX Runtime, the streaming pair calibrated on vtest.avi's first frames in order; the
demo model and ViT-S/16 at the k the offline table below favours). Fidelity: every sampled result that was reused whole or
recomputed only some tokens, re-inferred by the plain graph. Token reuse offline on one
camera: frames/s and cosine with the plain graph on the first 200 frames of vtest.avi.

Run on demand: `.venv/bin/python benchmarks/reuse.py [--seconds 20] [--skip-vits]
[--only-token-rows [--int8]]`. Appends a section to benchmarks/RESULTS.md; `--only-token-rows` runs
and prints the frame + token reuse rows alone (publishing nothing)."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from cameras import Cameras, serve_mjpeg
from common import ROOT, camera_models
from results import machine, publish

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
CLIPS = {"vtest.avi (fixed camera)": DATA / "vtest.avi",
         "Megamind.avi (moving camera)": DATA / "Megamind.avi"}
FPS = 10
CAMERAS = 8
CHECKED = 150


def jpegs(path: Path) -> list[bytes]:
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, frame = cap.read()
        if not ok:
            return out
        out.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())


def serve(path: Path, count: int, fps: float, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """`count` MJPEG cameras on loopback playing the clip in a loop, camera i from frame
    i * len / count, until the process is killed."""
    serve_mjpeg(jpegs(path), count, fps, ready)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def run_live(artifact: Path, urls: list[str], seconds: float, reuse: float | None,
             reference: Path | None = None) -> dict[str, float]:
    """One row: `artifact` (a streaming graph runs token reuse) with frame reuse at `reuse`;
    its approximate results (reused whole, or some tokens reused) are sampled and judged
    against full inference by `reference` (default: the artifact)."""
    import vitedge

    rng = random.Random(0)
    with vitedge.open(artifact, keep_logits=True, reuse=reuse) as pipe:
        multi = pipe.multi_stream({f"c{i}": u for i, u in enumerate(urls)}, batch=1)
        results = iter(multi)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:  # warm-up (and the noise floors): counted from here
            next(results)
        before = pipe.reuse.counters() if pipe.reuse else None
        if pipe.tokens is not None:
            pipe.tokens.zero()
        dropped0 = sum(s.dropped for s in multi.stats.values())
        latencies: list[float] = []
        sample: list[tuple[np.ndarray, object]] = []
        reused_seen = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            r = next(results)
            latencies.append(r.latency_ms)
            p = r.prediction
            if p.reused or (p.tokens_recomputed or 1.0) < 1.0:  # reservoir sample
                reused_seen += 1
                if len(sample) < CHECKED:
                    sample.append((r.frame, r.prediction))
                elif rng.random() < CHECKED / reused_seen:
                    sample[rng.randrange(CHECKED)] = (r.frame, r.prediction)
        elapsed = time.monotonic() - t0
        dropped = sum(s.dropped for s in multi.stats.values()) - dropped0
        after = pipe.reuse.counters() if pipe.reuse else None
        tokens = pipe.tokens.counters() if pipe.tokens else None
        multi.close()
    delivered = len(latencies)
    inferred = delivered if after is None or before is None else \
        after["inferred"] - before["inferred"]
    if tokens is not None:
        inferred = tokens["frames"]
    agree, cosines = 1.0, [1.0]
    if sample:
        with vitedge.open(reference or artifact, keep_logits=True) as full:
            checks = [(full(frame), p) for frame, p in sample]
        wrong = sum(q.class_id != p.class_id for q, p in checks) / len(checks)  # type: ignore[attr-defined]
        agree = 1.0 - wrong * reused_seen / max(delivered, 1)
        cosines = [cosine(q.logits, p.logits) for q, p in checks]  # type: ignore[attr-defined]
    lat = np.array(latencies)
    return {"fps": delivered / elapsed, "inferred": inferred / elapsed,
            "dropped": dropped / elapsed, "p50": float(np.percentile(lat, 50)),
            "p99": float(np.percentile(lat, 99)), "agree": agree, "cos": min(cosines),
            "checked": len(sample),
            "tokens": tokens["tokens_recomputed"] if tokens else 1.0}


def live_row(title: str, clip: str, label: str, r: dict, tokens: bool = False) -> str:
    """One table row of a live run (`run_live`'s result), with the tokens column or not."""
    share = f" {r['tokens']:.1%} |" if tokens else ""
    return (f"| {title} | {clip} | {label} | {r['fps']:.1f} | {r['inferred']:.1f} |{share} "
            f"{r['dropped']:.1f} | {r['p50']:.0f} / {r['p99']:.0f} | {r['agree']:.2%} | "
            f"{r['cos']:.4f} ({r['checked']}) |")


def threshold(artifact: Path, clip: Path) -> float | None:
    """`tune_reuse` on the clip's first 200 frames, 1 % budget."""
    import itertools

    import vitedge
    from vitedge.runtime import open_source, tune_reuse

    with vitedge.open(artifact) as pipe:
        return tune_reuse(pipe, itertools.islice(open_source(str(clip)), 200), 0.01).threshold


def token_rows(title: str, checkpoint: Path, plain: Path, work: Path, ks: list[int],
               arch: str | None = None) -> list[str]:
    """Token reuse on one camera, offline: the streaming graph at each k (full pass every 30
    frames) against the plain FP32 graph, on vtest.avi's first 200 frames."""
    import itertools

    import vitedge
    from vitedge.export import export_streaming
    from vitedge.runtime import TokenReuse, open_source
    from vitedge.sessions import ort_session

    full = export_streaming(checkpoint, work / "full.onnx", arch=arch)
    with vitedge.open(plain) as pipe:
        xs = [pipe.prepare([f]) for f in itertools.islice(open_source(str(CLIPS[
            "vtest.avi (fixed camera)"])), 200)]
    session = ort_session(str(plain))
    name = session.get_inputs()[0].name
    t = time.perf_counter()
    want = [session.run(None, {name: x})[0][0] for x in xs]
    plain_fps = len(xs) / (time.perf_counter() - t)
    rows = [f"| {title} | plain graph | {full.tokens} | {plain_fps:.1f} | 1.0000 | 1.0000 |"]
    for k in ks:
        part = export_streaming(checkpoint, work / f"k{k}.onnx", k, arch=arch)
        runner = TokenReuse(part.output, full.output, refresh=30)
        t = time.perf_counter()
        got = [runner.run(x, "cam")[0][0] for x in xs]
        fps = len(xs) / (time.perf_counter() - t)
        cos = [cosine(a, b) for a, b in zip(got, want, strict=True)]
        rows.append(f"| {title} | streaming | {k} of {full.tokens} | {fps:.1f} | "
                    f"{min(cos):.4f} | {float(np.mean(cos)):.4f} |")
        print(rows[-1], flush=True)
    return rows


TOKEN_K = {"demo model (FP32)": 13, "ViT-S/16 (FP32)": 50, "demo model (INT8)": 13,
           "ViT-S/16 INT8": 50}
"""Tokens per gate in the live rows: the demo model's smallest export; ViT-S/16's k that
ran faster than its plain graph offline (100 of 197 did not)."""


def token_models(work: Path, skip_vits: bool, int8: bool = False
                 ) -> dict[str, tuple[Path, Path, str | None]]:
    """Per model of the frame + token rows: (its plain graph, checkpoint, arch); `int8`: the
    plain graph built INT8 for this CPU (calibrated as `camera_models` does)."""
    from common import CALIBRATION, export_random

    from vitedge.deploy import BuildOptions, build
    from vitedge.export import ExportOptions, export_onnx

    def plain(graph: Path) -> Path:
        return build(graph, graph.with_suffix(".int8.ort.onnx"), BuildOptions(
            backend="onnxruntime", precision="int8", data=str(CALIBRATION))).artifact \
            if int8 else graph

    demo = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
    export_onnx(demo, work / "demo-plain.onnx", ExportOptions())
    models: dict[str, tuple[Path, Path, str | None]] = {
        f"demo model ({'INT8' if int8 else 'FP32'})": (plain(work / "demo-plain.onnx"), demo,
                                                       None)}
    if not skip_vits:
        folder = work / "vits-fp32"
        folder.mkdir()
        graph = export_random("vit_small_patch16_224", folder)
        models["ViT-S/16 INT8" if int8 else "ViT-S/16 (FP32)"] = (
            plain(graph), folder / "model.safetensors", "vit_small_patch16_224")
    return models


TOKEN_INT8_FRAMES = 200
"""--int8: the streaming pair's calibration, vtest.avi's first frames (the cameras play the
whole clip, so these are among the frames judged)."""


def token_live_rows(work: Path, seconds: float, skip_vits: bool, int8: bool = False
                    ) -> list[str]:
    """The 8 cameras on each clip: the plain graph with no reuse, then its streaming graph
    with frame reuse in front (the threshold `tune_reuse` picks on the plain graph); `int8`:
    both built INT8 (the streaming pair calibrated on vtest.avi's first frames in order)."""
    from vitedge.deploy import BuildOptions, CalibrationOptions, build
    from vitedge.export import export_streaming

    rows = []
    for title, (plain, checkpoint, arch) in token_models(work, skip_vits, int8).items():
        k = TOKEN_K[title]
        slug = title.split()[0].lower().replace("/", "")
        stream = export_streaming(checkpoint, work / f"{slug}.k{k}.onnx", k,
                                  arch=arch)
        streaming = stream.output if not int8 else build(
            stream.output, None, BuildOptions(
                backend="onnxruntime", precision="int8",
                data=str(CLIPS["vtest.avi (fixed camera)"]),
                calibration=CalibrationOptions(num_images=TOKEN_INT8_FRAMES))).artifact
        threshold_k = threshold(plain, CLIPS["vtest.avi (fixed camera)"])
        for clip, path in CLIPS.items():
            cams = Cameras(CAMERAS, serve, (path,), FPS)
            try:
                for label, artifact, reuse in (
                        ("off", plain, None),
                        (f"frame {threshold_k:g} + tokens {k} of {stream.tokens}", streaming,
                         threshold_k)):
                    r = run_live(artifact, cams.urls, seconds, reuse, reference=plain)
                    row = live_row(title, clip, label, r, tokens=True)
                    rows.append(row)
                    print(row, flush=True)
            finally:
                cams.close()
    return rows


TOKEN_LIVE_HEADER = (
    "| model | clip | reuse | delivered/s | inferred/s | tokens recomputed | dropped/s | "
    "latency p50 / p99 | top-1 agreement | worst cosine (checked) |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--skip-vits", action="store_true")
    parser.add_argument("--only-token-rows", action="store_true",
                        help="Run and print the frame + token reuse rows alone.")
    parser.add_argument("--int8", action="store_true",
                        help="With --only-token-rows: the plain graph and the streaming pair "
                             "built INT8 (ONNX Runtime), not FP32.")
    args = parser.parse_args()
    if not all(p.is_file() for p in CLIPS.values()):
        raise SystemExit("OpenCV's sample videos are absent: apt-get install opencv-doc")
    if args.only_token_rows:
        with tempfile.TemporaryDirectory() as tmp:
            rows = token_live_rows(Path(tmp), args.seconds, args.skip_vits, args.int8)
        print(f"\nMachine: {machine()}\n\n{TOKEN_LIVE_HEADER}" + "\n".join(rows))
        return
    rows, token_table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = camera_models(work, args.skip_vits)
        for title, artifact in models.items():
            k = threshold(artifact, CLIPS["vtest.avi (fixed camera)"])
            for clip, path in CLIPS.items():
                cams = Cameras(CAMERAS, serve, (path,), FPS)
                try:
                    for reuse in (None, k):
                        r = run_live(artifact, cams.urls, args.seconds, reuse)
                        label = "off" if reuse is None else f"{reuse:g}"
                        row = live_row(title, clip, label, r)
                        rows.append(row)
                        print(row, flush=True)
                finally:
                    cams.close()
        (work / "live-tokens").mkdir()
        token_live = token_live_rows(work / "live-tokens", args.seconds, args.skip_vits)
        (work / "tokens").mkdir()
        token_table = token_rows("demo model", ROOT / "examples" / "fashion_mnist" /
                                 "vit_fmnist.safetensors", models["demo model (FP32)"],
                                 work / "tokens", [13, 25])
        if not args.skip_vits:
            (work / "vits-tokens").mkdir()
            token_table += token_rows("ViT-S/16", work / "vits" / "model.safetensors",
                                      work / "vits" / "fp32.onnx", work / "vits-tokens",
                                      [50, 100], arch="vit_small_patch16_224")
    section = (
        "\n## Frame and token reuse on real footage (`benchmarks/reuse.py`)\n\n"
        f"Machine: {machine()} (shared with other jobs: absolute figures are noisy, rows of "
        f"one model are comparable). {CAMERAS} loopback MJPEG cameras at {FPS} fps each "
        f"(offered: {CAMERAS * FPS} frames/s), each playing the clip from its own offset, "
        f"through one `pipe.multi_stream` (batch 1), {args.seconds:.0f} s after 3 s of "
        "warm-up. Reuse: the threshold `tune_reuse` picked on vtest.avi's first 200 frames "
        "(1 % budget, max age 30 frames). Delivered: results per second, all cameras; "
        "inferred: of which the model ran; latency: capture to result, ms. Top-1 agreement: "
        "with full inference of the same frame, over all delivered frames (from a sample of "
        "reused results, each re-inferred); worst cosine: of the sampled reused logits (how "
        "many in brackets).\n\n"
        "| model | clip | reuse | delivered/s | inferred/s | dropped/s | latency p50 / p99 | "
        "top-1 agreement | worst cosine (checked) |\n|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\n"
        "Frame + token reuse: the same cameras through the streaming graph (FP32: INT8 "
        "streaming does not exist yet), frame reuse in front at the threshold `tune_reuse` "
        "picked on the plain graph, against the plain FP32 graph with no reuse; tokens "
        "recomputed: the mean share per inferred frame (a full pass every 30 frames of a "
        "camera); fidelity judged against the plain graph.\n\n"
        + TOKEN_LIVE_HEADER + "\n".join(token_live) + "\n\n"
        "Token reuse, one camera, offline (streaming graph in FP32 through ONNX Runtime, "
        "not quantized yet, a full pass every 30 frames, against the plain FP32 graph; cosine "
        "of the logits on vtest.avi's first 200 frames):\n\n"
        "| model | graph | tokens per gate | frames/s | worst cosine | mean cosine |\n"
        "|---|---|---|---|---|---|\n"
        + "\n".join(token_table) + "\n")
    publish(section)


if __name__ == "__main__":
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    main()
