"""Many cameras, one model: 1, 4, 8 and 16 loopback MJPEG cameras at 15 fps (320x240 JPEG,
served by another process), through the demo model and a ViT-S/16 INT8 (random weights):

- `multi_stream`, batched (the default: batch = cameras, at most 8; 20 ms wait);
- `multi_stream` with batch 1 (one pipeline, no batching);
- one `vitedge run` process per camera (what users do today).

Frames processed per second (all cameras), frames dropped at the source, p50 / p99 capture-
to-result latency (multi_stream only: a `vitedge run` process does not report it), CPU
seconds per second and RSS. Then 50,000 frames through the batched loop, RSS sampled along
the way (flat, or the loop leaks).

Run on demand: `.venv/bin/python benchmarks/cameras.py [--seconds 15] [--skip-vits]`.
Appends a section to benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, camera_models
from results import machine, publish

FPS = 15
PHOTO = ROOT / "vitedge" / "data" / "photos"


def serve_cameras(count: int, fps: float, ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """`count` MJPEG cameras on loopback (each its own port), `fps` frames a second each,
    each sending the same photo, until the process is killed."""
    from PIL import Image

    photo = sorted(PHOTO.glob("*.jpg"))[0]
    buf = io.BytesIO()
    Image.open(photo).convert("RGB").resize((320, 240)).save(buf, "JPEG", quality=85)
    serve_mjpeg([buf.getvalue()], count, fps, ready)


def serve_mjpeg(frames: list[bytes], count: int, fps: float,
                ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """`count` MJPEG cameras on loopback (each its own port, the ports put on `ready`), `fps`
    frames a second each, playing the JPEG `frames` in a loop, camera i from frame
    i * len / count, until the process is killed."""
    import threading

    def handler(offset: int) -> type:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                due, i = time.monotonic(), offset
                try:
                    while True:
                        jpg = frames[i % len(frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                         b"Content-Length: %d\r\n\r\n" % len(jpg) + jpg + b"\r\n")
                        i += 1
                        due += 1.0 / fps
                        time.sleep(max(due - time.monotonic(), 0.0))
                except (BrokenPipeError, ConnectionResetError):
                    return
        return Handler

    ports = []
    for c in range(count):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler(c * len(frames) // count))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ports.append(server.server_address[1])
    ready.put(ports)
    while True:
        time.sleep(3600)


class Cameras:
    """Loopback MJPEG cameras in a process of their own: `serve(*args, count, fps, ready)`
    (`serve_cameras` by default) serves them; `urls` are theirs."""

    def __init__(self, count: int, serve: Any = serve_cameras, args: tuple[Any, ...] = (),
                 fps: float = FPS):
        self.ready: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
        self.process = multiprocessing.Process(target=serve, args=(*args, count, fps, self.ready),
                                               daemon=True)
        self.process.start()
        self.urls = [f"http://127.0.0.1:{p}/stream" for p in self.ready.get(timeout=60)]

    def close(self) -> None:
        self.process.kill()
        self.process.join()


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_multi(artifact: Path, urls: list[str], seconds: float, batch: int | None
              ) -> dict[str, float]:
    import vitedge

    with vitedge.open(artifact) as pipe:
        multi = pipe.multi_stream({f"c{i}": u for i, u in enumerate(urls)}, batch=batch)
        latencies: list[float] = []
        results = iter(multi)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3:  # warm-up: counted from here
            next(results)
        cpu0, t0 = time.process_time(), time.monotonic()
        processed0 = sum(s.processed for s in multi.stats.values())
        dropped0 = sum(s.dropped for s in multi.stats.values())
        while time.monotonic() - t0 < seconds:
            latencies.append(next(results).latency_ms)
        elapsed = time.monotonic() - t0
        cpu = time.process_time() - cpu0
        processed = sum(s.processed for s in multi.stats.values()) - processed0
        dropped = sum(s.dropped for s in multi.stats.values()) - dropped0
        multi.close()
    lat = np.array(latencies)
    return {"fps": processed / elapsed, "dropped": dropped / elapsed,
            "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "cpu": cpu / elapsed, "rss": rss_mb()}


def run_processes(artifact: Path, urls: list[str], seconds: float) -> dict[str, float]:
    """One `vitedge run` per camera, each for `seconds` x FPS frames: the sum of each
    process's frames per second of its own loop."""
    frames = int(seconds * FPS)
    procs = [subprocess.Popen([sys.executable, "-m", "vitedge", "run", str(artifact), "--source",
                               url, "--max-frames", str(frames), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for url in urls]
    fps = 0.0
    for p in procs:
        out, _ = p.communicate(timeout=seconds * 20 + 120)
        summary = json.loads(out)
        fps += summary["frames"] / summary["seconds"]
    return {"fps": fps}


def soak(artifact: Path, frames: int) -> list[tuple[int, float]]:
    """RSS along `frames` frames of 16 cameras through the batched loop."""
    import vitedge

    cams = Cameras(16)
    samples = []
    try:
        with vitedge.open(artifact) as pipe:
            multi = pipe.multi_stream({f"c{i}": u for i, u in enumerate(cams.urls)})
            for n, _ in enumerate(multi, 1):
                if n % 5000 == 0:
                    samples.append((n, rss_mb()))
                if n >= frames:
                    break
            multi.close()
    finally:
        cams.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--skip-vits", action="store_true")
    parser.add_argument("--soak-frames", type=int, default=50_000)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = camera_models(work, args.skip_vits)
        for title, artifact in models.items():
            for count in (1, 4, 8, 16):
                cams = Cameras(count)
                try:
                    batched = run_multi(artifact, cams.urls, args.seconds, None)
                    single = run_multi(artifact, cams.urls, args.seconds, 1)
                    separate = run_processes(artifact, cams.urls, args.seconds)
                finally:
                    cams.close()
                row = (f"| {title} | {count} | {batched['fps']:.1f} | {single['fps']:.1f} | "
                       f"{separate['fps']:.1f} | {batched['fps'] / max(separate['fps'], 1e-9):.2f}x"
                       f" | {batched['dropped']:.1f} | {batched['p50']:.0f} / {batched['p99']:.0f}"
                       f" | {single['p50']:.0f} / {single['p99']:.0f} | {batched['cpu']:.2f} | "
                       f"{batched['rss']:.0f} |")
                rows.append(row)
                print(row, flush=True)
        samples = soak(models["demo model (FP32)"], args.soak_frames)
    soak_line = ", ".join(f"{n}: {mb:.0f} MB" for n, mb in samples)
    section = (
        "\n## Many cameras, one model (`benchmarks/cameras.py`)\n\n"
        f"Machine: {machine()}. Loopback MJPEG cameras at {FPS} fps each (320x240 JPEG, served "
        f"by another process), {args.seconds:.0f} s per run after 3 s of warm-up. Frames/s: "
        "frames processed per second, all cameras together (at most "
        f"{FPS} x cameras). Batched: `pipe.multi_stream`, defaults; batch 1: the same with "
        "batch=1; processes: one `vitedge run` per camera. Latency: capture to result, ms. "
        "CPU: CPU seconds per second of the batched process (2 = both cores).\n\n"
        "| model | cameras | frames/s batched | frames/s batch 1 | frames/s processes | "
        "batched vs processes | dropped/s (batched) | latency p50 / p99 batched | "
        "latency p50 / p99 batch 1 | CPU | RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + "\n\n"
        f"RSS of the batched loop with 16 cameras along {args.soak_frames} frames (demo model): "
        f"{soak_line}.\n")
    publish(section)


if __name__ == "__main__":
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    main()
