"""Frame reuse: a fixed camera's frame that shows what the last inferred frame showed gets
that frame's result instead of a new inference (`vitedge.open(..., reuse=K)`,
`vitedge run --reuse K`, one state per camera in `multi_stream`).

The change measure is on the model's own input grid: the mean absolute difference, per
patch, between the incoming frame's model input and the last inferred frame's. It is
weighed against a noise floor learnt from the stream itself: for every frame, the lower
quartile over patches of the change since the previous frame that does not grow over two
frames (a fixed camera's background is most of the picture, and noise does not accumulate
while motion does, so this is its sensor noise and compression flicker, not a pan), the
median of the latest `WINDOW` of those, and never less than one pixel level over a patch
(a clean source's floor). A frame is reused when no patch changed by more than K floors and the
result is younger than `max_age` (frames or seconds); any patch above it (a person walking
in, the camera panning) makes a full inference. A camera's first frames (`WARMUP`) are
always inferred. `tune_reuse` picks K by measurement on a clip.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.options import parse_max_age
from vitedge.runtime.postprocess import Prediction

WINDOW = 64
"""Frames whose noise samples make the floor (their median)."""
WARMUP = 3
"""Noise samples a camera needs before a frame is reused: its first WARMUP + 1 frames are
always inferred while the noise floor is learnt."""
QUANTILE = 0.25
"""The patches' quantile of a frame's change taken as that frame's noise sample."""
CANDIDATES = (1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
"""Thresholds `tune_reuse` tries."""


@dataclass
class StreamReuse:
    """One camera's reuse state and counters."""

    reference: np.ndarray | None = None
    """The per-patch view of the last inferred frame's model input."""
    previous: np.ndarray | None = None
    before: np.ndarray | None = None
    """The frame before `previous`."""
    result: Prediction | None = None
    inferred_at: float = 0.0
    age: int = 0
    pending: bool = False
    """Its reference frame is being inferred (its result not yet back)."""
    level: float | None = None
    """One pixel level over a patch, the smallest nonzero change seen."""
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))
    frames: int = 0
    inferred: int = 0
    reused: int = 0

    def floor(self) -> float:
        learnt = float(np.median(self.samples)) if self.samples else 0.0
        return max(learnt, self.level or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "inferred": self.inferred, "reused": self.reused,
                "saving": round(self.reused / self.frames, 4) if self.frames else 0.0,
                "noise_floor": self.floor()}


def patch_view(x: np.ndarray, manifest: Any) -> np.ndarray:
    """One frame's model input as (patches, values per patch) float32: patch vectors as they
    are, (C, H, W) floats or (H, W, C) uint8 frames cut on the model's patch grid."""
    if manifest.input == "patches":
        return np.asarray(x, np.float32).reshape(x.shape[0], -1)
    a = np.asarray(x, np.float32)
    if manifest.input == "frames":
        a = a.transpose(2, 0, 1)
    p = manifest.architecture.patch_size
    c, h, w = a.shape
    a = a[:, :h // p * p, :w // p * p].reshape(c, h // p, p, w // p, p)
    return a.transpose(1, 3, 0, 2, 4).reshape((h // p) * (w // p), -1)


def change(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference per patch of two `patch_view`s."""
    return np.abs(a - b).mean(axis=1)


class FrameReuse:
    """The reuse gate of one pipeline: a `StreamReuse` per camera key (None: the pipeline's
    own stream). `run` infers only the frames of a batch that changed."""

    def __init__(self, manifest: Any, threshold: float, max_age: str = "30",
                 clock: Callable[[], float] = time.monotonic):
        self.manifest = manifest
        self.threshold = float(threshold)
        self.max_frames, self.max_seconds = parse_max_age(max_age)
        self.clock = clock
        self.streams: dict[Any, StreamReuse] = {}
        self._lock = threading.Lock()

    def state(self, key: Any) -> StreamReuse:
        with self._lock:
            return self.streams.setdefault(key, StreamReuse())

    def reset(self, key: Any) -> None:
        """Forget a camera (a reconnect or a resolution change starts from a full inference)."""
        with self._lock:
            self.streams.pop(key, None)

    @staticmethod
    def observe(s: StreamReuse, v: np.ndarray) -> None:
        """Learn the noise floor from the changes since the two previous frames: noise is
        as large over two frames as over one, motion grows, so 2 * (change over one frame) -
        (change over two) keeps the noise and cancels a steady motion (a panning camera
        learns no floor from its own movement)."""
        if s.previous is not None and s.previous.shape != v.shape:  # a new resolution
            s.samples.clear()
            s.reference, s.result, s.level, s.before = None, None, None, None
        elif s.previous is not None:
            diff = np.abs(v - s.previous)
            if len(s.samples) < WINDOW:  # the pixel level, learnt while the window fills
                nonzero = diff[diff > 0]
                if nonzero.size:
                    level = float(nonzero.min()) / v.shape[1]
                    s.level = level if s.level is None else min(s.level, level)
            if s.before is not None:
                noise = np.maximum(2 * diff.mean(axis=1) - change(v, s.before), 0.0)
                s.samples.append(float(np.quantile(noise, QUANTILE)))
        s.before, s.previous = s.previous, v

    def _reusable(self, s: StreamReuse, v: np.ndarray, now: float) -> bool:
        if s.result is None or s.pending or s.reference is None or len(s.samples) < WARMUP:
            return False
        if self.max_frames is not None and s.age + 1 >= self.max_frames:
            return False
        if self.max_seconds is not None and now - s.inferred_at >= self.max_seconds:
            return False
        return float(change(v, s.reference).max()) <= self.threshold * s.floor()

    def run(self, x: np.ndarray, timings: dict[str, float], keys: Iterable[Any] | None,
            infer: Callable[[np.ndarray, dict[str, float], list[Any]], list[Prediction]]
            ) -> list[Prediction]:
        """One prediction per frame of the prepared batch `x` (camera `keys`, None: one
        stream): reused where nothing changed, the others inferred together by `infer`
        (given their frames, the timings and their camera keys)."""
        keys = [None] * len(x) if keys is None else list(keys)
        now = self.clock()
        out: list[Prediction | None] = [None] * len(x)
        run_idx: list[int] = []
        views = [patch_view(xi, self.manifest) for xi in x]
        with self._lock:
            for i, (key, v) in enumerate(zip(keys, views, strict=True)):
                s = self.streams.setdefault(key, StreamReuse())
                s.frames += 1
                self.observe(s, v)
                if self._reusable(s, v, now) and s.result is not None:
                    s.age += 1
                    s.reused += 1
                    out[i] = replace(s.result, reused=True, age=s.age,
                                     age_ms=(now - s.inferred_at) * 1e3,
                                     timings={**timings, "infer": 0.0},
                                     tokens_recomputed=None if s.result.tokens_recomputed
                                     is None else 0.0)  # token reuse: nothing recomputed
                else:
                    s.reference, s.pending, s.age = v, True, 0
                    s.inferred += 1
                    run_idx.append(i)
        if run_idx:
            try:
                predictions = infer(x[run_idx], timings, [keys[i] for i in run_idx])
            except BaseException:
                with self._lock:
                    for i in run_idx:
                        failed = self.streams.get(keys[i])
                        if failed is not None:
                            failed.pending, failed.result = False, None
                raise
            with self._lock:
                for i, p in zip(run_idx, predictions, strict=True):
                    p.age = 0
                    s = self.streams[keys[i]]
                    if s.reference is views[i]:  # not overtaken by a later frame's inference
                        s.result, s.pending, s.inferred_at = p, False, now
                    out[i] = p
        return [p for p in out if p is not None]

    def counters(self) -> dict[str, Any]:
        """Frames, inferred, reused and the saving: in all and per camera key."""
        with self._lock:
            per = {str(k) if k is not None else "-": s.to_dict() for k, s in self.streams.items()}
        frames = sum(s["frames"] for s in per.values())
        reused = sum(s["reused"] for s in per.values())
        return {"threshold": self.threshold, "frames": frames,
                "inferred": sum(s["inferred"] for s in per.values()), "reused": reused,
                "saving": round(reused / frames, 4) if frames else 0.0, "cameras": per}


def reuse_gate(pipe: Any) -> FrameReuse | None:
    """The gate a pipeline's options ask for (`reuse`, `max_age`), or None."""
    opts = pipe.options
    if opts.reuse is None:
        return None
    return FrameReuse(pipe.manifest, opts.reuse, opts.max_age)


def agrees(full: Prediction, delivered: Prediction, min_cosine: float = 0.99) -> bool:
    """Whether a delivered result says what full inference of the same frame says: the same
    top-1 for a classifier, embedding cosine >= `min_cosine` for a headless model."""
    if full.embedding is not None and delivered.embedding is not None:
        a, b = full.embedding, delivered.embedding
        cos = float(a @ b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12)
        return cos >= min_cosine
    return full.class_id == delivered.class_id


@dataclass
class ReuseChoice:
    """`tune_reuse`'s answer: the largest threshold within the budget (None: none was) and,
    per threshold tried, the share of frames reused and the agreement with full inference
    over all frames."""

    threshold: float | None
    budget: float
    frames: int
    max_age: str
    rows: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "budget": self.budget, "frames": self.frames,
                "max_age": self.max_age, "rows": self.rows}


def tune_reuse(pipe: Any, frames: Iterable[Any], budget: float = 0.01, max_age: str = "30",
               fps: float = 10.0, candidates: Iterable[float] = CANDIDATES,
               progress: Callable[[int], None] | None = None) -> ReuseChoice:
    """The largest reuse threshold at which the results delivered on `frames` (a clip at
    `fps`, which times a `max_age` in seconds) agree with full inference of every frame on
    at least 1 - `budget` of them. Every frame is inferred once; each candidate then replays
    the clip through a real `FrameReuse` gate whose inferences are those results, so a
    reused frame is scored against its own full inference."""
    if getattr(pipe, "tokens", None) is not None:
        raise VitedgeError(f"{pipe.model.name} is a streaming graph (token reuse): the threshold "
                           "is measured against full inference",
                           "tune it on the plain graph of the same checkpoint; it holds for both")
    inputs, full = [], []
    for i, frame in enumerate(frames):
        x = pipe.prepare([frame])
        inputs.append(x[0])
        full.append(pipe.postprocess(pipe.model.infer(x), {})[0])
        if progress is not None:
            progress(i + 1)
    rows: list[dict[str, float]] = []
    best = None
    index = {"i": 0}

    def infer(_x: np.ndarray, _timings: dict[str, float], _keys: list[Any]
              ) -> list[Prediction]:
        return [replace(full[index["i"]])]

    for k in sorted(candidates):
        gate = FrameReuse(pipe.manifest, k, max_age, clock=lambda: index["i"] / fps)
        agree = reused = 0
        for i, x in enumerate(inputs):
            index["i"] = i
            p = gate.run(x[None], {}, None, infer)[0]
            reused += p.reused
            agree += agrees(full[i], p)
        n = max(len(inputs), 1)
        rows.append({"threshold": k, "reused": round(reused / n, 4),
                     "agreement": round(agree / n, 4)})
        if agree / n >= 1 - budget:
            best = k
    return ReuseChoice(best, budget, len(inputs), max_age, rows)
