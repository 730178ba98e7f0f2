"""The runtime pipeline a camera application embeds: frame -> decode -> preprocess ->
patchify -> infer -> postprocess -> prediction, every stage timed. Each stage is a module
of its own (decode.py, preprocess.py, patchify.py, the backend's runner, postprocess.py)
and when frames run is the scheduler's (scheduler.py); `Pipeline` composes them.

    import vitedge
    with vitedge.open("model.int8.ort.onnx") as pipe:
        p = pipe(frame)                 # HxWx3 uint8 BGR (OpenCV), RGB, gray, RGBA, PIL, path
        print(p.label, p.score, p.timings)

Torch-free. Thread safety: a pipeline runs at most `streams` inferences at once (default 1:
threads sharing it take turns); with ONNX Runtime, `streams=N` keeps N frames in flight,
each on its share of the cores (see `open_pipeline`). A TensorRT engine has one context: its
`stream()` overlaps preparing the next frame with inference; open one pipeline per thread.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends import Runner, load_runner
from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest
from vitedge.options import MAX_WAIT_MS, PipelineOptions, pipeline_options
from vitedge.runtime import scheduler
from vitedge.runtime.attention import Explanation
from vitedge.runtime.decode import decode_frame, frames_of, is_frame
from vitedge.runtime.patchify import patches_from_images
from vitedge.runtime.postprocess import Postprocessor, Prediction
from vitedge.runtime.preprocess import Preprocessor, input_from_pixels
from vitedge.runtime.scheduler import available_cores
from vitedge.runtime.stats import StageTimes
from vitedge.runtime.token_gate import reuse_gates

__all__ = ["STAGES", "Explanation", "Pipeline", "Prediction", "available_cores",
           "open_pipeline"]

STAGES = ("decode", "preprocess", "patchify", "host_to_device", "infer", "device_to_host",
          "postprocess")
"""host_to_device and device_to_host are CUDA-event times on TensorRT; 0 on the CPU."""


class Pipeline:
    def __init__(self, model: Runner, options: PipelineOptions | None = None,
                 clock: Callable[[], float] = time.perf_counter, **changes: Any):
        """`options` (or keyword changes to its defaults: color, fast, topk, keep_logits,
        batch, streams) say how to run `model`."""
        opts = pipeline_options(options, **changes)
        if opts.streams > 1 and not model.concurrent:
            raise VitedgeError(f"{model.name} runs one inference at a time (one {model.backend} "
                               "execution context), so streams must be 1",
                               "its stream() already prepares the next frame during inference")
        self.options = opts
        self.model = model
        self.manifest: Manifest = model.manifest
        self.warnings: list[str] = list(model.warnings)
        """What the user should know about this model on this machine, one line each (an
        INT8 artifact whose kernels can saturate on this CPU, say)."""
        self.color, self.fast, self.topk = opts.color, opts.fast, opts.topk
        self.keep_logits, self.normalize_embeddings = opts.keep_logits, opts.normalize_embeddings
        self.preprocess = Preprocessor(self.manifest, opts.fast)
        self.postprocess = Postprocessor(self.manifest, opts.topk, opts.keep_logits,
                                         opts.normalize_embeddings)
        self.times = StageTimes()
        self.clock = clock
        self.skipped: list[tuple[str, str]] = []
        """(path, why) of image files `stream()` could not read and left out."""
        self.batch_size = opts.batch
        """Frames `stream()` runs together: more throughput, more latency."""
        self.streams = opts.streams
        """Batches in flight at once in `stream()` and `batches()`."""
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(opts.streams)
        self._workers: Any = None
        self._closed = False
        self.reuse, self.tokens = reuse_gates(self)
        """Frame reuse (`reuse=K`), token reuse (a streaming graph), or None: `counters()`."""

    # --- the stages ------------------------------------------------------------------

    def _patchify(self, x: np.ndarray) -> np.ndarray:
        if self.manifest.input == "patches":
            return patches_from_images(x, self.manifest.architecture.patch_size)
        return x

    def prepare(self, frames: Iterable[Any]) -> np.ndarray:
        """The model input for frames (decode, preprocess, patchify), untimed."""
        return self._patchify(np.stack([self.preprocess(decode_frame(f, self.color, self.fast))
                                        for f in frames]))

    def _prepare(self, frames: list[Any], skip_unreadable: bool
                 ) -> tuple[list[Any], np.ndarray, dict[str, float]]:
        """(frames kept, model input, stage times): with `skip_unreadable`, an image file
        that cannot be read is left out and recorded in `skipped`; any other bad frame
        raises."""
        clock = self.clock
        t0 = clock()
        kept, decoded = [], []
        for f in frames:
            try:
                decoded.append(decode_frame(f, self.color, self.fast))
            except VitedgeError as exc:
                if not (skip_unreadable and isinstance(f, (str, Path))):
                    raise
                with self._lock:
                    self.skipped.append((str(f), exc.message))
                continue
            kept.append(f)
        if not kept:
            return [], np.zeros(0), {}
        t1 = clock()
        x = np.stack(xs) if len(xs := [self.preprocess(d) for d in decoded]) > 1 else xs[0][None]
        t2 = clock()
        x = self._patchify(x)
        t3 = clock()
        return kept, x, {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3,
                         "patchify": (t3 - t2) * 1e3}

    def _prepared(self, chunk: list[Any]) -> tuple[list[Any], np.ndarray, dict[str, float]] | None:
        """A chunk prepared for `stream`'s prefetch worker, unreadable image files left out;
        None when none is left."""
        kept, x, timings = self._prepare(chunk, skip_unreadable=True)
        return (kept, x, timings) if kept else None

    def _infer(self, x: np.ndarray, timings: dict[str, float],
               cameras: list[Any] | None = None) -> list[Prediction]:
        """infer + postprocess for a prepared input, timed into `timings`; with frame reuse
        (reuse.py) only the frames that changed on their camera (None: this pipeline's)."""
        if self.reuse is not None:
            return self.reuse.run(x, timings, cameras, self._infer_all)
        return self._infer_all(x, timings, cameras)

    def _infer_all(self, x: np.ndarray, timings: dict[str, float],
                   cameras: list[Any] | None = None) -> list[Prediction]:
        self._check_open()
        clock = self.clock
        t = clock()
        with self._slots:
            logits, device = self.model.infer_timed(x) if self.tokens is None \
                else self.tokens.infer_timed(x, cameras)
        t2 = clock()
        total = (t2 - t) * 1e3
        timings["host_to_device"] = device.get("host_to_device", 0.0)
        timings["device_to_host"] = device.get("device_to_host", 0.0)
        timings["infer"] = max(total - timings["host_to_device"] - timings["device_to_host"], 0.0)
        predictions = self.postprocess(logits, timings)
        if self.tokens is not None:
            self.tokens.mark(predictions)
        timings["postprocess"] = (clock() - t2) * 1e3
        self.times.add(timings, len(x))
        return predictions

    # --- calls --------------------------------------------------------------------------

    def __call__(self, frame: Any) -> Prediction:
        return self.batch([frame])[0]

    def batch(self, frames: Iterable[Any]) -> list[Prediction]:
        """One prediction per frame of `frames` (a list of frames, or an (N, H, W, C) uint8
        array), run as one batch."""
        self._check_open()
        frames = frames_of(frames)
        if not frames:
            return []
        _kept, x, timings = self._prepare(frames, skip_unreadable=False)
        return self._infer(x, timings)

    def _batch_skipping(self, chunk: list[Any]) -> tuple[list[Any], list[Prediction]]:
        """`batch` for `stream`: unreadable image files are left out, not fatal."""
        kept, x, timings = self._prepare(chunk, skip_unreadable=True)
        return (kept, self._infer(x, timings)) if kept else ([], [])

    def batches(self, chunks: Iterable[Any]) -> Iterator[list[Prediction]]:
        """The predictions of each batch of frames, in order, `streams` batches in flight
        at once: each goes through every stage on a worker thread of its own while the
        next are read. Each item is a batch (a list of frames, or an (N, H, W, C) array) or
        one frame (a batch of one). With one stream this is `batch` on each in turn."""
        batches = ([item] if is_frame(item) else frames_of(item) for item in chunks)
        for _chunk, predictions in self._in_flight(batches, self.batch):
            yield predictions

    def _in_flight(self, chunks: Iterable[list[Any]], run: Callable[[list[Any]], Any]
                   ) -> Iterator[tuple[list[Any], Any]]:
        self._check_open()
        if self.streams == 1:
            for chunk in chunks:
                yield chunk, run(chunk)
            return
        if self._workers is None:
            from concurrent.futures import ThreadPoolExecutor

            self._workers = ThreadPoolExecutor(self.streams, thread_name_prefix="vitedge-stream")
        yield from scheduler.in_flight(chunks, run, self._workers, self.streams,
                                       self._check_open)

    def stream(self, source: Any, max_frames: int | None = None, prefetch: int = 2,
               reconnect_for: float | None = None) -> Iterator[tuple[Any, Prediction]]:
        """(frame, prediction) for each frame of a source (anything `open_source` takes, or
        an iterable of frames), run `batch` frames at a time; each prediction's `source`
        names the image file it came from, or the source's URI. Double-buffered: a worker
        thread decodes and preprocesses the next batches while the model runs on this one
        (`prefetch=0` turns it off). With `streams` > 1, `streams` batches are in flight at
        once instead, each prepared and run on a worker of its own (see `batches`).

        A live source (camera, rtsp:// stream) that is not there yet or drops is waited for,
        reconnecting, for ever; `reconnect_for` seconds without a frame end the stream
        instead (pass an `open_source(...)` to read its `stats.gave_up`). A source that can
        never open here (a GStreamer pipeline on an OpenCV without GStreamer) raises at once."""
        from vitedge.options import SourceOptions
        from vitedge.runtime.sources import open_source, with_sources

        named = str(source) if isinstance(source, (str, Path, int)) else None
        frames = open_source(source, options=SourceOptions(reconnect_for=reconnect_for)) \
            if named is not None else source
        limited = itertools.islice(frames, max_frames)
        chunks = iter(lambda: list(itertools.islice(limited, self.batch_size)), [])
        try:
            if self.streams > 1 or prefetch <= 0:
                for _chunk, (kept, predictions) in self._in_flight(chunks, self._batch_skipping):
                    yield from with_sources(zip(kept, predictions, strict=True), named)
                return
            for kept, x, timings in scheduler.prefetched(chunks, self._prepared, prefetch):
                yield from with_sources(zip(kept, self._infer(x, timings), strict=True), named)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                # a generator the prefetch worker is still inside (a camera read that
                # blocks) cannot be closed from here; the worker drops it when it returns
                with contextlib.suppress(ValueError):
                    close()

    def multi_stream(self, cameras: Any, batch: int | None = None,
                     max_wait_ms: float | None = None, source_options: Any = None,
                     on_event: Callable[[str], None] | None = None) -> Any:
        """Many cameras through this one model (`vitedge.runtime.cameras.MultiStream`):
        `cameras` is a dict name -> source, a list of sources, or a list of `Camera`;
        iterating gives `(camera, frame, prediction)` as results are ready (each with its
        `number`, `captured` time and `latency_ms`). Live cameras keep only their latest frame
        (older ones are dropped and counted, never queued); files are read at the model's
        pace. Batches of up to `batch` frames (default: the cameras, at most the model's
        largest batch) wait at most `max_wait_ms` to fill; `streams` batches run at once."""
        from vitedge.runtime.cameras import MultiStream

        return MultiStream(self, cameras, batch, MAX_WAIT_MS if max_wait_ms is None
                           else max_wait_ms, source_options, on_event)

    # --- attention ----------------------------------------------------------------------

    def explain(self, frame: Any, method: str = "cls", layer: int = -1,
                head: str | int = "mean") -> np.ndarray:
        """The attention grid (H/P, W/P) of one frame: `cls`, the class token's attention
        in one layer (`layer`, the last by default), or `rollout` across all layers; over
        the heads' mean, max, or one head. See `vitedge.explain`."""
        return self.explanation(frame, method, layer, head).grid

    def explanation(self, frame: Any, method: str = "cls", layer: int = -1,
                    head: str | int = "mean") -> Explanation:
        """`explain` with the prediction and the pixels the model saw (`Runner.attention`)."""
        from vitedge.runtime.attention import attention_grid, parse_head

        self._check_open()
        head = parse_head(head)
        pixels = self.preprocess.pixels(decode_frame(frame, self.color, self.fast))
        x = input_from_pixels(pixels, self.manifest)
        with self._lock:
            logits, probs = self.model.attention(self._patchify(x[None]))
        grid = attention_grid(probs, self.manifest.architecture, method, layer, head)[0]
        return Explanation(grid, pixels, self.postprocess(logits, {})[0], method, layer, head)

    # --- lifetime -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise VitedgeError("this pipeline is closed", "open a new one with vitedge.open")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._workers is not None:
                self._workers.shutdown(wait=True, cancel_futures=True)
            self.model.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def open_pipeline(path: str | Path, options: PipelineOptions | None = None,
                  **changes: Any) -> Pipeline:
    """A pipeline on a built artifact (an engine or an ONNX model; `load_runner` decides the
    backend from the file), run as `options` (`vitedge.options.PipelineOptions`) or keyword
    changes to its defaults say: device, color, fast, topk, keep_logits, threads, batch,
    cuda_graph, streams, reuse, max_age (reuse.py) and token_refresh (token_gate.py).

    `streams`: frames in flight at once in `stream()`; 1, the default, puts every core on
    one frame (the lowest latency); more split the cores (`threads` = cores / streams) for
    more frames per second, each frame taking longer (`benchmarks/pipeline_vs_hf.py`)."""
    if path is None or not isinstance(path, (str, Path)):
        raise VitedgeError(f"a model path must be a str or a Path, not {type(path).__name__}")
    opts = pipeline_options(options, **changes)
    threads = opts.threads
    if opts.streams > 1 and threads is None:
        threads = max(1, available_cores() // opts.streams)
    model = load_runner(path, threads, device=opts.device, cuda_graph=opts.cuda_graph)
    try:
        return Pipeline(model, opts)
    except VitedgeError:
        model.close()  # an engine's device memory goes back at once
        raise

