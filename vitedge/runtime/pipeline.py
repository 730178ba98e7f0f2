"""The runtime pipeline a camera application embeds: frame -> decode -> preprocess ->
patchify -> infer -> postprocess -> prediction, every stage timed.

    import vitedge
    with vitedge.open("model.int8.ort.onnx") as pipe:
        p = pipe(frame)                 # HxWx3 uint8 BGR (OpenCV), RGB, gray, RGBA, PIL, path
        print(p.label, p.score, p.timings)

Torch-free. Thread safety: a pipeline runs at most `streams` inferences at once (default 1:
threads sharing it take turns). With ONNX Runtime, `vitedge.open(..., streams=N)` keeps N
frames in flight in `stream()` and `batches()`, each on its own share of the cores: more
frames per second on a CPU, each frame slower (see `open_pipeline`). A TensorRT engine has
one execution context, so one inference at a time; its `stream()` overlaps preparing the
next frame with the current one's inference. For parallel TensorRT inference open one
pipeline per thread.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitedge.backends import Runner, load_runner
from vitedge.compare import scores
from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest
from vitedge.options import PipelineOptions, pipeline_options
from vitedge.runtime.patchify import patches_from_images
from vitedge.runtime.preprocess import (
    MAX_PIXELS,
    crop_pixels,
    input_from_pixels,
    load_image,
    upright,
)
from vitedge.runtime.stats import StageTimes

STAGES = ("decode", "preprocess", "patchify", "host_to_device", "infer", "device_to_host",
          "postprocess")
"""host_to_device and device_to_host are CUDA-event times on TensorRT; 0 on the CPU."""


@dataclass
class Prediction:
    """A classifier's answer for one frame (class, label, score, top-k), or, from a model
    without a classification head (DINOv2, CLIP / SigLIP image towers), its `embedding`
    with class_id, label and score None and topk empty."""

    class_id: int | None
    label: str | None
    score: float | None
    topk: list[tuple[int, str | None, float]]
    timings: dict[str, float]
    """Milliseconds per stage for the call that made this prediction (shared by a batch)."""
    logits: np.ndarray | None = None
    embedding: np.ndarray | None = None
    """The image embedding of a headless model (L2-normalised with normalize_embeddings)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class_id": self.class_id, "label": self.label, "score": self.score,
                             "topk": [{"class_id": i, "label": lab, "score": s}
                                      for i, lab, s in self.topk],
                             "timings_ms": self.timings}
        if self.logits is not None:
            d["logits"] = self.logits.tolist()
        if self.embedding is not None:
            d["embedding"] = self.embedding.tolist()
        return d

    def describe(self) -> str:
        """One short line: the label and score, or the embedding's size and norm."""
        if self.embedding is not None:
            return (f"embedding ({self.embedding.shape[0]} floats, norm "
                    f"{float(np.linalg.norm(self.embedding)):.3f})")
        label = self.label if self.label is not None else self.class_id
        return f"{label} {self.score:.2f}"


@dataclass
class Explanation:
    """What the model attended to in one frame: `grid` (H/P, W/P) over the patches,
    `pixels` the resized and cropped uint8 frame the model saw, and its prediction."""

    grid: np.ndarray
    pixels: np.ndarray
    prediction: Prediction
    method: str
    layer: int
    head: str | int


class Pipeline:
    def __init__(self, model: Runner, options: PipelineOptions | None = None,
                 clock: Callable[[], float] = time.perf_counter, **changes: Any):
        """`options` (or keyword changes to its defaults: color, fast, topk, keep_logits,
        batch, streams) say how to run `model`."""
        opts = pipeline_options(options, **changes)
        self.options = opts
        color, fast, topk, batch, streams = opts.color, opts.fast, opts.topk, opts.batch, opts.streams
        keep_logits = opts.keep_logits
        self.model = model
        self.manifest: Manifest = model.manifest
        self.warnings: list[str] = list(model.warnings)
        """What the user should know about this model on this machine, one line each (an
        INT8 artifact whose kernels can saturate on this CPU, say)."""
        self.normalize_embeddings = opts.normalize_embeddings
        self.color = color
        self.fast = fast
        self.topk = topk
        self.keep_logits = keep_logits
        self.times = StageTimes()
        self._lock = threading.Lock()
        self._closed = False
        self._fast = _FastPreprocess(self.manifest) if fast else None
        self.clock = clock
        self.skipped: list[tuple[str, str]] = []
        """(path, why) of image files `stream()` could not read and left out."""
        self.batch_size = batch
        """Frames `stream()` runs together: more throughput, more latency."""
        if streams > 1 and not model.concurrent:
            raise VitedgeError(f"{model.name} runs one inference at a time (one {model.backend} "
                               "execution context), so streams must be 1",
                               "its stream() already prepares the next frame during inference")
        self.streams = streams
        """Batches in flight at once in `stream()` and `batches()`."""
        self._slots = threading.BoundedSemaphore(streams)
        self._workers: Any = None

    # --- frames -------------------------------------------------------------------------

    def _decode(self, frame: Any) -> Image.Image | np.ndarray:
        """A frame as an RGB (or L) PIL image for the exact path, or an RGB array for the
        fast path."""
        if isinstance(frame, (str, Path)):
            return load_image(frame) if not self.fast else np.asarray(load_image(frame))
        if isinstance(frame, Image.Image):
            if frame.width < 1 or frame.height < 1:
                raise VitedgeError(f"an empty frame ({frame.width}x{frame.height}) cannot be classified")
            frame = upright(frame)
            return frame if not self.fast else np.asarray(frame.convert("RGB"))
        if not isinstance(frame, np.ndarray):
            raise VitedgeError(f"a frame must be a numpy array, a PIL image or a path, not "
                               f"{type(frame).__name__}")
        if frame.dtype != np.uint8:
            raise VitedgeError(f"a frame must be uint8 pixels, not {frame.dtype}")
        if frame.ndim >= 2 and (frame.shape[0] < 1 or frame.shape[1] < 1):
            raise VitedgeError(f"an empty frame ({frame.shape[1]}x{frame.shape[0]}) cannot be "
                               "classified")
        if frame.ndim >= 2 and frame.shape[0] * frame.shape[1] > MAX_PIXELS:
            raise VitedgeError(f"a frame of {frame.shape[1]}x{frame.shape[0]} is more than "
                               f"{MAX_PIXELS // 1_000_000} megapixels")
        if frame.ndim == 3 and frame.shape[2] == 3 and not self.fast:
            # PIL swaps BGR while it copies: no numpy pass over the frame
            h, w = frame.shape[:2]
            raw = "BGR" if self.color == "bgr" else "RGB"
            return Image.frombuffer("RGB", (w, h), np.ascontiguousarray(frame), "raw", raw, 0, 1)
        if frame.ndim == 2:
            rgb = np.repeat(frame[:, :, None], 3, axis=2)
        elif frame.ndim == 3 and frame.shape[2] in (3, 4):
            rgb = frame[:, :, :3]
            if self.color == "bgr":
                rgb = rgb[:, :, ::-1]
        else:
            raise VitedgeError(f"a frame of shape {frame.shape} is not HxW, HxWx3 or HxWx4")
        rgb = np.ascontiguousarray(rgb)
        return rgb if self.fast else Image.fromarray(rgb)

    def _preprocess(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Float (C, H, W), or for a `frames` model uint8 (H, W, C) resized and cropped
        (the graph normalises)."""
        return input_from_pixels(self._pixels(image), self.manifest)

    def _pixels(self, decoded: Image.Image | np.ndarray) -> np.ndarray:
        """The resized and cropped uint8 (H, W, C) frame the model sees."""
        if self._fast is not None:
            assert isinstance(decoded, np.ndarray)
            return self._fast.crop(decoded)
        assert isinstance(decoded, Image.Image)
        return crop_pixels(decoded, self.manifest.preprocess)

    # --- calls --------------------------------------------------------------------------

    def __call__(self, frame: Any) -> Prediction:
        return self.batch([frame])[0]

    def batch(self, frames: Iterable[Any]) -> list[Prediction]:
        self._check_open()
        frames = list(frames)
        if not frames:
            return []
        x, timings = self._prepare_timed(frames)
        return self._predict_prepared(x, timings)

    def _patchify(self, x: np.ndarray) -> np.ndarray:
        if self.manifest.input == "patches":
            return patches_from_images(x, self.manifest.architecture.patch_size)
        return x

    def prepare(self, frames: Iterable[Any]) -> np.ndarray:
        """The model input for frames (decode, preprocess, patchify), untimed."""
        return self._patchify(np.stack([self._preprocess(self._decode(f)) for f in frames]))

    def _postprocess(self, logits: np.ndarray, timings: dict[str, float]) -> list[Prediction]:
        logits = logits.astype(np.float32, copy=False)
        if not self.manifest.is_classifier:
            return [Prediction(None, None, None, [], timings, None, self._embedding(row))
                    for row in logits]
        probs = scores(logits, self.manifest.score)
        k = min(self.topk, probs.shape[1])
        top = np.argsort(-probs, axis=1)[:, :k]
        labels = self.manifest.labels
        out = []
        for row, idx in enumerate(top):
            ranked = [(int(i), labels[i] if labels else None, float(probs[row, i])) for i in idx]
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked[0][2], ranked, timings,
                                  logits[row].copy() if self.keep_logits else None))
        return out

    def _embedding(self, row: np.ndarray) -> np.ndarray:
        if not self.normalize_embeddings:
            return row.copy()
        return row / max(float(np.linalg.norm(row)), 1e-12)

    def batches(self, chunks: Iterable[list[Any]]) -> Iterator[list[Prediction]]:
        """The predictions of each batch of frames, in order, `streams` batches in flight
        at once: each goes through every stage on a worker thread of its own while the
        next are read. With one stream this is `batch` on each in turn."""
        for _chunk, predictions in self._in_flight(chunks):
            yield predictions

    def _in_flight(self, chunks: Iterable[list[Any]], run: Callable[[list[Any]], Any] | None = None
                   ) -> Iterator[tuple[list[Any], Any]]:
        self._check_open()
        run = run or self.batch
        if self.streams == 1:
            for chunk in chunks:
                yield chunk, run(chunk)
            return
        from collections import deque
        from concurrent.futures import Future, ThreadPoolExecutor

        if self._workers is None:
            self._workers = ThreadPoolExecutor(self.streams, thread_name_prefix="vitedge-stream")
        pending: deque[tuple[list[Any], Future[list[Prediction]]]] = deque()
        try:
            for chunk in chunks:
                self._check_open()  # a generator made before close() and read after it
                pending.append((chunk, self._workers.submit(run, chunk)))
                if len(pending) > self.streams:  # one batch queued behind the busy workers
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _chunk, future in pending:
                future.cancel()

    def stream(self, source: Any, max_frames: int | None = None, prefetch: int = 2
               ) -> Iterator[tuple[Any, Prediction]]:
        """(frame, prediction) for each frame of a source (anything `open_source` takes, or
        an iterable of frames), run `batch` frames at a time. Double-buffered: a worker
        thread decodes and preprocesses the next batches while the model runs on this one
        (`prefetch=0` turns it off). With `streams` > 1, `streams` batches are in flight at
        once instead, each prepared and run on a worker of its own (see `batches`)."""
        from vitedge.runtime.sources import open_source

        frames = open_source(source) if isinstance(source, (str, Path, int)) else source
        limited = itertools.islice(frames, max_frames)
        chunks = iter(lambda: list(itertools.islice(limited, self.batch_size)), [])
        try:
            if self.streams > 1:
                for _chunk, (kept, predictions) in self._in_flight(chunks, self._batch_skipping):
                    yield from zip(kept, predictions, strict=True)
                return
            if prefetch <= 0:
                for chunk in chunks:
                    kept, predictions = self._batch_skipping(chunk)
                    yield from zip(kept, predictions, strict=True)
                return
            for kept, x, timings in _prefetched(self, chunks, prefetch):
                yield from zip(kept, self._predict_prepared(x, timings), strict=True)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                # a generator the prefetch worker is still inside (a camera read that
                # blocks) cannot be closed from here; the worker drops it when it returns
                with contextlib.suppress(ValueError):
                    close()

    def _batch_skipping(self, chunk: list[Any]) -> tuple[list[Any], list[Prediction]]:
        """`batch` for `stream`: image files that cannot be read are left out (recorded in
        `skipped`) instead of ending the stream."""
        kept, x, timings = self._prepare_skipping(chunk)
        return (kept, self._predict_prepared(x, timings)) if kept else ([], [])

    def _prepare_skipping(self, frames: list[Any]
                          ) -> tuple[list[Any], np.ndarray, dict[str, float]]:
        """(frames kept, model input, stage times): an image file that cannot be read is
        left out and recorded in `skipped`; any other bad frame raises."""
        return self._prepare(frames, skip_unreadable=True)

    def _prepare_timed(self, frames: list[Any]) -> tuple[np.ndarray, dict[str, float]]:
        _kept, x, timings = self._prepare(frames, skip_unreadable=False)
        return x, timings

    def _prepare(self, frames: list[Any], skip_unreadable: bool
                 ) -> tuple[list[Any], np.ndarray, dict[str, float]]:
        clock = self.clock
        t0 = clock()
        kept, decoded = [], []
        for f in frames:
            try:
                decoded.append(self._decode(f))
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
        x = np.stack([self._preprocess(d) for d in decoded])
        t2 = clock()
        x = self._patchify(x)
        t3 = clock()
        return kept, x, {"decode": (t1 - t0) * 1e3, "preprocess": (t2 - t1) * 1e3,
                         "patchify": (t3 - t2) * 1e3}

    def _predict_prepared(self, x: np.ndarray, timings: dict[str, float]) -> list[Prediction]:
        """infer + postprocess for an input the worker prepared."""
        self._check_open()
        clock = self.clock
        t = clock()
        with self._slots:
            logits, device = self.model.infer_timed(x)
        t2 = clock()
        total = (t2 - t) * 1e3
        timings["host_to_device"] = device.get("host_to_device", 0.0)
        timings["device_to_host"] = device.get("device_to_host", 0.0)
        timings["infer"] = max(total - timings["host_to_device"] - timings["device_to_host"], 0.0)
        predictions = self._postprocess(logits, timings)
        timings["postprocess"] = (clock() - t2) * 1e3
        self.times.add(timings, len(x))
        return predictions

    # --- attention ----------------------------------------------------------------------

    def explain(self, frame: Any, method: str = "cls", layer: int = -1,
                head: str | int = "mean") -> np.ndarray:
        """The attention grid (H/P, W/P) of one frame: `cls`, the class token's attention
        in one layer (`layer`, the last by default), or `rollout` across all layers; over
        the heads' mean, max, or one head. See `vitedge.explain`."""
        return self.explanation(frame, method, layer, head).grid

    def explanation(self, frame: Any, method: str = "cls", layer: int = -1,
                    head: str | int = "mean") -> Explanation:
        """`explain` with the prediction and the pixels the model saw. The attention is read
        from this pipeline's artifact itself (`Runner.attention`)."""
        from vitedge.runtime.attention import attention_grid, parse_head

        self._check_open()
        head = parse_head(head)
        pixels = self._pixels(self._decode(frame))
        x = input_from_pixels(pixels, self.manifest)
        with self._lock:
            logits, probs = self.model.attention(self._patchify(x[None]))
        grid = attention_grid(probs, self.manifest.architecture, method, layer, head)[0]
        return Explanation(grid, pixels, self._postprocess(logits, {})[0], method, layer, head)

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


def _prefetched(pipe: Pipeline, chunks: Iterator[list[Any]], depth: int
                ) -> Iterator[tuple[list[Any], np.ndarray, dict[str, float]]]:
    """(frames kept, prepared input, its stage times), prepared `depth` chunks ahead by a
    worker thread; unreadable image files are left out. An error in the worker is raised
    here, at the chunk it happened in. Leaving early never waits on a producer that blocks
    (a camera read): the worker is told to stop and left to finish on its own."""
    import queue

    done = object()
    items: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    return
                kept, x, timings = pipe._prepare_skipping(chunk)
                if kept and not put((kept, x, timings)):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    worker = threading.Thread(target=work, name="vitedge-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()  # the worker sees it at its next put or chunk; nobody waits for that


class _FastPreprocess:
    """The manifest's resize and centre crop with OpenCV on numpy RGB arrays. Not bit-exact
    with the reference libraries (OpenCV's resampling filters differ from PIL's); `vitedge
    bench` and the tests measure the effect on the logits. Normalisation is the exact
    path's."""

    CV2_FILTERS = {"nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR",
                   "bicubic": "INTER_CUBIC", "lanczos": "INTER_LANCZOS4"}

    def __init__(self, manifest: Manifest):
        from vitedge.errors import require

        self.cv2 = require("cv2", "video", "fast (OpenCV) preprocessing")
        p = manifest.preprocess
        self.prep = p
        self.flag = getattr(self.cv2, self.CV2_FILTERS[p.interpolation])
        self.gray = len(p.mean) == 1

    def crop(self, rgb: np.ndarray) -> np.ndarray:
        """Resized and centre-cropped uint8 pixels, (H, W, C)."""
        cv2, p = self.cv2, self.prep
        if self.gray:
            rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        h, w = rgb.shape[:2]
        if p.resize_mode == "shorter":
            short = p.resize[0]
            size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        else:
            size = (p.resize[1], p.resize[0])
        if size != (w, h):
            rgb = cv2.resize(rgb, size, interpolation=self.flag)
        ch, cw = p.crop
        h, w = rgb.shape[:2]
        if h < ch or w < cw:  # zero padding, centred, as the exact path does
            canvas = np.zeros((max(h, ch), max(w, cw), *rgb.shape[2:]), rgb.dtype)
            y0, x0 = (canvas.shape[0] - h) // 2, (canvas.shape[1] - w) // 2
            canvas[y0:y0 + h, x0:x0 + w] = rgb
            rgb, (h, w) = canvas, canvas.shape[:2]
        top, left = p.crop_box(h, w)
        crop = rgb[top:top + ch, left:left + cw]
        return crop if crop.ndim == 3 else crop[:, :, None]


def open_pipeline(path: str | Path, options: PipelineOptions | None = None,
                  **changes: Any) -> Pipeline:
    """A pipeline on a built artifact (an engine or an ONNX model; `load_runner` decides the
    backend from the file), run as `options` (`vitedge.options.PipelineOptions`) or keyword
    changes to its defaults say: device, color, fast, topk, keep_logits, threads, batch,
    cuda_graph, streams.

    `streams` (ONNX Runtime): frames in flight at once in `stream()`. 1, the default, puts
    every core on one frame: the lowest latency. More streams split the cores between
    frames (`threads` defaults to cores / streams), which on a CPU gives more frames per
    second, since a batch-1 ViT's small operators do not keep several cores busy: on 2
    cores, ViT-S/16 INT8 runs 1.25-1.3x the frames per second with `streams=2`
    (`benchmarks/pipeline_vs_hf.py`), each frame taking longer."""
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


def available_cores() -> int:
    """The cores this process may run on."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
