"""The cost of serving: frames/s and p50 / p99 latency of one artifact through a real
Triton Inference Server (`vitedge serve`'s repository: the Python backend running vitedge)
at concurrency 1, 4 and 16, with dynamic batching and without, against the same artifact
in-process (`vitedge.open`), in one run on one machine. Clients send what a fleet's camera
sends: encoded image bytes (the `_image` model); also the preprocessed tensor (the plain
model). Requests go to 127.0.0.1 only, a bounded number of them.

Run on demand: `.venv/bin/python benchmarks/serve.py [--artifact X] [--requests N]`
(default: the demo model built to INT8 for ONNX Runtime). Appends a section to
benchmarks/RESULTS.md."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from results import machine, publish

ROOT = Path(__file__).parents[1]
CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
CALIBRATION = ROOT / "calibration" / "fashion-mnist"
IMAGES = sorted((ROOT / "evaluation" / "fashion-mnist").glob("*/*.png"))[:256]
CONCURRENCY = (1, 4, 16)


def percentiles(ms: list[float]) -> tuple[float, float]:
    ms = sorted(ms)
    return statistics.median(ms), ms[min(len(ms) - 1, int(0.99 * len(ms)))]


def load(call, concurrency: int, requests: int) -> tuple[float, float, float]:
    """(frames/s, p50 ms, p99 ms) of `requests` calls of call(i), `concurrency` at once."""
    latencies: list[float] = []
    per_client = requests // concurrency

    def client(k: int) -> None:
        for i in range(per_client):
            start = time.perf_counter()
            call(k * per_client + i)
            latencies.append(1e3 * (time.perf_counter() - start))

    for i in range(8):
        call(i)  # warm-up
    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    p50, p99 = percentiles(latencies)
    return len(latencies) / wall, p50, p99


class Sender:
    """One request of one image to the served model, each client thread with its own
    HTTP connection."""

    def __init__(self, url: str, name: str, blobs: list[bytes], tensors: np.ndarray,
                 input_name: str) -> None:
        self.url, self.name, self.blobs, self.tensors = url, name, blobs, tensors
        self.input_name = input_name
        self.local = threading.local()

    def _client(self):  # type: ignore[no-untyped-def]
        import tritonclient.http as http

        if not hasattr(self.local, "client"):
            self.local.client = http.InferenceServerClient(self.url)
        return self.local.client

    def image(self, i: int) -> None:
        import tritonclient.http as http

        inp = http.InferInput("image", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[self.blobs[i % len(self.blobs)]]], dtype=object))
        self._client().infer(f"{self.name}_image", [inp])

    def tensor(self, i: int) -> None:
        import tritonclient.http as http

        x = self.tensors[i % len(self.tensors)][None]
        inp = http.InferInput(self.input_name, list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        self._client().infer(self.name, [inp])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--artifact", help="a vitedge artifact (default: the demo INT8 build)")
    parser.add_argument("--requests", type=int, default=480, help="requests per measurement")
    args = parser.parse_args()

    import vitedge
    from vitedge.datasets import image_source, model_inputs
    from vitedge.deploy import BuildOptions, build
    from vitedge.options import ServeOptions
    from vitedge.serve import TritonServer, serving_repository

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        artifact = Path(args.artifact) if args.artifact else work / "fmnist.int8.ort.onnx"
        if not args.artifact:
            build(CHECKPOINT, str(artifact), BuildOptions(precision="int8", data=str(CALIBRATION)))
        blobs = [p.read_bytes() for p in IMAGES]
        (work / "list.txt").write_text("".join(f"{p}\n" for p in IMAGES))
        with vitedge.open(artifact) as pipe:
            tensors = np.stack(list(model_inputs(image_source(work / "list.txt"), pipe.manifest)))
            input_name = pipe.model.input_name  # what serve's tensor model takes
            rows = []
            for c in CONCURRENCY:
                fps, p50, p99 = load(lambda i: pipe(IMAGES[i % len(IMAGES)]), c, args.requests)
                rows.append(("in-process `vitedge.open` (image file)", c, fps, p50, p99))
        for label, options in (("Triton, dynamic batching (max 16, 1 ms)",
                                ServeOptions(max_batch=16, max_delay_us=1000)),
                               ("Triton, no batching", ServeOptions(max_batch=1))):
            repo = work / f"repo{len(rows)}"
            serving_repository([artifact], repo, options)
            name = repo.iterdir().__next__().name.removesuffix("_image")
            with TritonServer(repo) as server:
                sender = Sender(server.url, name, blobs, tensors, input_name)
                for what, call in (("image bytes", sender.image), ("tensor", sender.tensor)):
                    for c in CONCURRENCY:
                        fps, p50, p99 = load(call, c, args.requests)
                        rows.append((f"{label} ({what})", c, fps, p50, p99))
    base = {c: fps for what, c, fps, _, _ in rows if what.startswith("in-process")}
    table = "".join(f"| {what} | {c} | {fps:.0f} | {p50:.1f} | {p99:.1f} | {fps / base[c]:.2f}x |\n"
                    for what, c, fps, p50, p99 in rows)
    import onnxruntime

    section = (
        f"\n## Serving through Triton (`benchmarks/serve.py`, {artifact.name})\n\n"
        f"Machine: {machine()}, onnxruntime {onnxruntime.__version__}, tritonserver 2.51 "
        "(nvidia-pytriton 0.7.0, Python backend running vitedge), HTTP clients on the same "
        f"machine; {args.requests} requests of one image per row, the clients' threads and the "
        "server sharing the cores.\n\n"
        "| path | concurrent clients | frames/s | p50 ms | p99 ms | frames/s vs in-process |\n"
        "|---|---|---|---|---|---|\n" + table)
    publish(section)


if __name__ == "__main__":
    main()
