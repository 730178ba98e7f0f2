"""Token reuse in the pipeline: `vitedge.open(streaming graph)` (an export whose manifest
names `token_reuse`) runs every inferred frame through `vitedge.runtime.tokens.TokenReuse`,
one state per camera, and marks each result with the share of tokens it recomputed.

The streaming graph is batch 1 and its state belongs to one camera, so a batch (several
cameras in `multi_stream`, or `batch=N`) is run frame by frame, each frame with its own
camera's state. A camera's first frame, one after a reconnect or a change of resolution
(`restart`: `multi_stream` and `vitedge run` see them; around `pipe.stream` of a live
source, wrap it in `restarting` with `prefetch=0`), and every `token_refresh`-th frame go
through the full pass. With frame reuse as well (`reuse=K`), a frame reused whole never
reaches the streaming graph (its result says 0.0 tokens recomputed); one that is inferred
goes through token reuse. Fixed k cannot follow a frame where more patches moved than a
partial pass recomputes (a moving camera, a cut): such a frame is a full pass too
(`_Motion`), so that a moving camera falls back to full work. Torch-free."""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.runtime.postprocess import Prediction
from vitedge.runtime.reuse import WARMUP, FrameReuse, StreamReuse, change, patch_view, reuse_gate
from vitedge.runtime.tokens import TOKEN_REUSE_KEY, TokenReuse

MOVED = 32.0
"""A patch has moved when its mean absolute change since its tokens were last computed is
over this many noise floors (the stream's own, learnt as frame reuse learns it). On the demo
model this kept a fixed camera (vtest.avi) from any extra full pass and took the moving one
(Megamind.avi) from 94 % to 99.5 % top-1 agreement with full inference."""


@dataclass
class CameraTokens:
    """One camera's token-reuse counters."""

    frames: int = 0
    """Frames run through the streaming graph (inferred, not reused whole)."""
    full_passes: int = 0
    recomputed: float = 0.0
    """The sum of the frames' shares of tokens recomputed."""
    restarts: int = 0
    """Reconnects and resolution changes that made the next frame a full pass."""
    moved: int = 0
    """Full passes run because more patches moved than a partial pass recomputes."""

    def to_dict(self) -> dict[str, Any]:
        share = self.recomputed / self.frames if self.frames else 0.0
        return {"frames": self.frames, "full_passes": self.full_passes,
                "tokens_recomputed": round(share, 4),
                "saving": round(1 - share, 4) if self.frames else 0.0,
                "restarts": self.restarts, "moved": self.moved}


@dataclass
class _Motion:
    """One camera's view of its input, mirroring the gates: the noise floor, and per patch
    the input its tokens were last computed from (a partial pass updates the k - 1 patches
    that moved most, as the first gate picks them; a full pass every one)."""

    noise: StreamReuse = field(default_factory=StreamReuse)
    reference: np.ndarray | None = None
    moved: np.ndarray | None = None
    """Each patch's change from `reference`, as `too_much` measured it for this frame."""

    def too_much(self, v: np.ndarray, patches: int) -> bool:
        """Whether more than `patches` patches of `v` moved (the next pass must be full)."""
        FrameReuse.observe(self.noise, v)
        self.moved = None
        if self.reference is None or self.reference.shape != v.shape:
            return False
        self.moved = change(v, self.reference)
        return len(self.noise.samples) >= WARMUP and \
            int((self.moved > MOVED * self.noise.floor()).sum()) > patches

    def computed(self, v: np.ndarray, full: bool, patches: int) -> None:
        if full or self.moved is None:
            self.reference = v.copy()
            return
        assert self.reference is not None  # `moved` was measured against it
        top = np.argsort(-self.moved)[:patches]
        self.reference[top] = v[top]


LAPS = 1000
"""Pass times kept for the medians: the latest, so a camera that runs for days keeps a
bounded list."""


@dataclass
class _Laps:
    full: deque[float] = field(default_factory=lambda: deque(maxlen=LAPS))
    partial: deque[float] = field(default_factory=lambda: deque(maxlen=LAPS))


def _median(laps: deque[float]) -> float | None:
    return round(statistics.median(laps), 3) if laps else None


class TokenGate:
    """A pipeline's token reuse: `infer_timed(x, cameras)` in place of the runner's, then
    `mark(predictions)`; `reset(camera)`; `counters()` say what was recomputed."""

    def __init__(self, tokens: TokenReuse, refresh: int, k: int, count: int,
                 manifest: Any = None):
        self.tokens = tokens
        self.manifest = manifest
        """The streaming graph's manifest (its patch grid for `_Motion`); None: no motion
        check, full passes only at a camera's start, a restart and the refresh."""
        self.motion: dict[Any, _Motion] = {}
        self.refresh = refresh
        self.k, self.count = k, count
        """Tokens recomputed per gate, of `count`."""
        self.cameras: dict[Any, CameraTokens] = {}
        self.laps = _Laps()
        self._lock = threading.Lock()
        self._shares = threading.local()

    def infer_timed(self, x: np.ndarray, cameras: list[Any] | None = None
                    ) -> tuple[np.ndarray, dict[str, float]]:
        """The main output for a prepared batch, frame by frame through each frame's camera
        state (None: the pipeline's own stream), as `Runner.infer_timed` gives it."""
        keys = [None] * len(x) if cameras is None else list(cameras)
        outputs, shares = [], []
        with self._lock:
            for xi, key in zip(x, keys, strict=True):
                cam = self.cameras.setdefault(key, CameraTokens())
                start = time.perf_counter()
                motion, v = self.motion.setdefault(key, _Motion()), None
                if self.manifest is not None:
                    v = patch_view(xi, self.manifest)
                    if motion.too_much(v, self.k - 1):  # the class token is one of the k
                        self.tokens.reset(key)
                        cam.moved += 1
                out, share = self.tokens.run(xi[None], key)
                if v is not None:
                    motion.computed(v, share >= 1.0, self.k - 1)
                ms = (time.perf_counter() - start) * 1e3
                (self.laps.full if share >= 1.0 else self.laps.partial).append(ms)
                cam.frames += 1
                cam.full_passes += share >= 1.0
                cam.recomputed += share
                outputs.append(out)
                shares.append(share)
        self._shares.last = shares
        return np.concatenate(outputs), {}

    def mark(self, predictions: list[Prediction]) -> None:
        """Each prediction of the batch this thread's `infer_timed` ran gets its share."""
        for p, share in zip(predictions, getattr(self._shares, "last", []), strict=True):
            p.tokens_recomputed = share

    def reset(self, camera: Any = None) -> None:
        """The camera's next frame is a full pass (a reconnect, a new resolution)."""
        with self._lock:
            self.tokens.reset(camera)
            self.motion.pop(camera, None)
            if camera in self.cameras:
                self.cameras[camera].restarts += 1

    def zero(self) -> None:
        """Counters and timings back to zero, the cameras' states kept (after a warm-up)."""
        with self._lock:
            self.cameras = {key: CameraTokens() for key in self.cameras}
            self.laps = _Laps()

    def counters(self) -> dict[str, Any]:
        """Frames through the streaming graph, full passes, the mean share of tokens
        recomputed and the saving, median milliseconds of full and partial passes: in all
        and per camera key."""
        with self._lock:
            per = {str(k) if k is not None else "-": c.to_dict() for k, c in self.cameras.items()}
            total = CameraTokens(*(sum(getattr(c, name) for c in self.cameras.values())
                                   for name in ("frames", "full_passes", "recomputed",
                                                "restarts", "moved")))
            full_ms, partial_ms = _median(self.laps.full), _median(self.laps.partial)
        return {"k": self.k, "tokens": self.count, "refresh": self.refresh, **total.to_dict(),
                "full_pass_ms": full_ms, "partial_pass_ms": partial_ms, "cameras": per}


def token_gate(pipe: Any) -> TokenGate | None:
    """Token reuse for a pipeline whose artifact is a streaming graph, or None."""
    entry = pipe.manifest.source.get(TOKEN_REUSE_KEY) if pipe.manifest.source else None
    if not isinstance(entry, dict):
        return None
    opts = pipe.options
    if opts.streams > 1:
        raise VitedgeError(f"{pipe.model.name} is a streaming graph: each camera's state goes "
                           "from one frame to the next, so streams must be 1",
                           "several cameras share it through multi_stream (vitedge run)")
    return TokenGate(TokenReuse.adopt(pipe.model, refresh=opts.token_refresh,
                                      threads=opts.threads), opts.token_refresh,
                     int(entry["k"]), int(entry["tokens"]), pipe.manifest)


def reuse_gates(pipe: Any) -> tuple[FrameReuse | None, TokenGate | None]:
    """A pipeline's frame-reuse gate (`reuse=K`, reuse.py) and token reuse, each or None."""
    return reuse_gate(pipe), token_gate(pipe)


def restart(pipe: Any, camera: Any = None) -> None:
    """A camera's reuse states forgotten (frame and token reuse): its next frame is
    inferred in full."""
    for gate in (pipe.reuse, getattr(pipe, "tokens", None)):
        if gate is not None:
            gate.reset(camera)


def frame_size(frame: Any) -> tuple[Any, ...] | None:
    """A frame's resolution and channels: an array's shape, an image's size and mode; None
    for a path (not decoded here)."""
    if isinstance(frame, np.ndarray):
        return tuple(frame.shape)
    size = getattr(frame, "size", None)
    return (*size, getattr(frame, "mode", None)) if isinstance(size, tuple) else None


class Restarts:
    """Which frames start a camera afresh: the frame of another size than the camera's
    last, or the first read after its source reconnected (`reconnects`, the source's count
    when the frame was read)."""

    def __init__(self) -> None:
        self.seen: dict[Any, tuple[tuple[Any, ...] | None, int]] = {}

    def check(self, camera: Any, frame: Any, reconnects: int = 0) -> bool:
        size = frame_size(frame)
        last = self.seen.get(camera)
        self.seen[camera] = (size, reconnects)
        return last is not None and (last[0] != size or last[1] != reconnects)

    def forget(self, camera: Any) -> None:
        self.seen.pop(camera, None)


def restarting(pipe: Any, frames: Iterable[Any], camera: Any = None) -> Iterator[Any]:
    """`frames` (a `FrameSource`, or any frames) as they come, the pipeline's reuse state
    for `camera` restarted before a frame of another size or the first after a reconnect.
    The restart happens as the frame is read, so read it unbuffered: `pipe.stream(...,
    prefetch=0)` with one stream, which runs each batch before the next is read."""
    restarts = Restarts()
    for frame in frames:
        stats = getattr(frames, "stats", None)
        if restarts.check(camera, frame, stats.reconnects if stats is not None else 0):
            restart(pipe, camera)
        yield frame
