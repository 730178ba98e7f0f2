"""Many cameras, one model: `pipe.multi_stream(cameras)`.

Each camera is read by a capture thread of its own. A live one (camera, stream, GStreamer)
keeps only its latest frame: while the model is busy, older frames are replaced and counted
as dropped, never queued, so a slow model never builds a backlog. Files, folders and videos
are read at the model's pace, nothing dropped. A batcher takes frames from the cameras
round-robin into batches of up to `batch`, waiting at most `max_wait_ms` for a batch to fill
once it holds a frame (Triton's dynamic batcher, DeepStream's batched push timeout); one
inference per batch, and each camera's results come back in its own order. A camera that is
down at start is waited for like one that drops; one that fails or is gone never stops the
others; cameras can be added and removed while it runs.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.options import COLOR_ORDERS, MAX_WAIT_MS, SourceOptions
from vitedge.runtime.sources import FrameSource, describe, source_of
from vitedge.runtime.stats import StageTimes, Stats
from vitedge.runtime.token_gate import Restarts, restart

if TYPE_CHECKING:
    from vitedge.runtime.postprocess import Prediction


class PipelineStages(Protocol):
    """What the cameras use of `vitedge.runtime.Pipeline` (which makes a `MultiStream`, so
    this module names its stages rather than import it)."""

    model: Any
    color: str

    def _prepare(self, frames: list[Any], skip_unreadable: bool
                 ) -> tuple[list[Any], np.ndarray, dict[str, float]]: ...

    def _infer(self, x: np.ndarray, timings: dict[str, float],
               cameras: list[Any] | None = None) -> list[Prediction]: ...

    def _in_flight(self, chunks: Iterable[list[Any]], run: Callable[[list[Any]], Any]
                   ) -> Iterator[tuple[list[Any], Any]]: ...

LIVE = ("camera", "stream", "gstreamer")

@dataclass(frozen=True)
class Camera:
    """One camera: its name, what to read (anything `vitedge run --source` takes), an
    optional frame-rate cap and its colour order (None: the pipeline's)."""

    name: str
    uri: str
    fps: float | None = None
    color: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise VitedgeError(f"camera name '{self.name}' must be letters, digits, - _ or .",
                               "e.g. --source door=rtsp://10.0.0.5/stream")
        if not self.uri:
            raise VitedgeError(f"camera {self.name} has no URI")
        if self.fps is not None and not (isinstance(self.fps, (int, float)) and self.fps > 0):
            raise VitedgeError(f"camera {self.name}: fps must be a positive number, not "
                               f"{self.fps!r}")
        if self.color is not None and self.color not in COLOR_ORDERS:
            raise VitedgeError(f"camera {self.name}: color must be one of "
                               f"{', '.join(COLOR_ORDERS)}, not {self.color!r}")
        kind = describe(self.uri)  # a file that is not there is refused now, in one line
        if kind in ("video", "image") and not Path(self.uri).is_file():
            raise VitedgeError(f"no such file or folder: {self.uri}",
                               f"camera {self.name}: a video or image file must exist")


def parse_camera(spec: str) -> Camera:
    """NAME=URI (`vitedge run --source`)."""
    name, sep, uri = spec.partition("=")
    if not sep or "://" in name or not name:
        raise VitedgeError(f"--source '{spec}' is not NAME=URI",
                           "e.g. --source door=rtsp://10.0.0.5/stream (one --source per camera)")
    return Camera(name.strip(), uri.strip())


def read_cameras(path: str | Path) -> list[Camera]:
    """A cameras file: TOML, one `[[camera]]` table each with `name`, `uri` and optional
    `fps` and `color`."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - JetPack 6's Python 3.10
        import tomli as tomllib
    from vitedge.inputs import require_regular_file

    p = Path(path)
    require_regular_file(p, "cameras file")
    try:
        data = tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VitedgeError(f"{p} is not valid TOML: {exc}") from None
    tables = data.get("camera")
    if not isinstance(tables, list) or not tables:
        raise VitedgeError(f"{p} has no [[camera]] tables",
                           'e.g. [[camera]]\\nname = "door"\\nuri = "rtsp://10.0.0.5/stream"')
    cameras = []
    for i, t in enumerate(tables):
        unknown = sorted(set(t) - {"name", "uri", "fps", "color"}) if isinstance(t, dict) else []
        if not isinstance(t, dict) or unknown:
            raise VitedgeError(f"{p}: camera {i + 1}: unknown key '{unknown[0]}'" if unknown
                               else f"{p}: camera {i + 1} is not a table",
                               "keys: name, uri, fps, color")
        if not isinstance(t.get("name"), str) or not isinstance(t.get("uri"), str):
            raise VitedgeError(f"{p}: camera {i + 1} needs a name and a uri (strings)")
        try:
            cameras.append(Camera(t["name"], t["uri"], t.get("fps"), t.get("color")))
        except VitedgeError as exc:
            raise VitedgeError(f"{p}: {exc.message}", exc.hint) from None
    return cameras


def check_unique(cameras: list[Camera]) -> None:
    seen: set[str] = set()
    for c in cameras:
        if c.name in seen:
            raise VitedgeError(f"two cameras are named '{c.name}'", "give each camera its own name")
        seen.add(c.name)


class CameraResult(tuple):
    """(camera, frame, prediction), with the frame's `number` on its camera (from 0), its
    capture time (`captured`, Unix seconds, as the events carry it; `captured_monotonic`, the
    same instant on time.monotonic, for measuring against other monotonic times) and its
    capture-to-result `latency_ms`."""

    number: int
    captured: float
    captured_monotonic: float
    latency_ms: float

    def __new__(cls, camera: str, frame: Any, prediction: Prediction, number: int,
                captured: float, latency_ms: float,
                captured_monotonic: float | None = None) -> CameraResult:
        self = super().__new__(cls, (camera, frame, prediction))
        self.number, self.captured, self.latency_ms = number, captured, latency_ms
        self.captured_monotonic = captured if captured_monotonic is None else captured_monotonic
        return self

    @property
    def camera(self) -> str:
        return str(self[0])

    @property
    def frame(self) -> Any:
        return self[1]

    @property
    def prediction(self) -> Prediction:
        return self[2]


@dataclass
class CameraStats:
    name: str
    kind: str
    read: int = 0
    """Frames the capture thread read."""
    processed: int = 0
    dropped: int = 0
    """Frames replaced by a newer one before the model took them (live cameras only)."""
    capped: int = 0
    """Frames left out by the camera's fps cap."""
    failed_reads: int = 0
    reconnects: int = 0
    last_latency_ms: float = 0.0
    gone: str | None = None
    """Why the camera ended for good (gave up reconnecting, or an error), or None."""
    started: float = field(default_factory=time.monotonic)
    latency: StageTimes = field(default_factory=StageTimes, repr=False)

    def fps(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started
        return self.processed / elapsed if elapsed > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        stages = {k: vars(Stats.of(v)) for k, v in self.latency.samples.items() if len(v)}
        return {"camera": self.name, "kind": self.kind, "read": self.read,
                "processed": self.processed, "dropped": self.dropped, "capped": self.capped,
                "failed_reads": self.failed_reads, "reconnects": self.reconnects,
                "fps": round(self.fps(), 2), "last_latency_ms": round(self.last_latency_ms, 2),
                "gone": self.gone, "stages": stages}


class _Reader:
    """One camera's capture thread: the latest frame of a live camera, or the next frames
    of a file at the model's pace (at most `depth` waiting)."""

    def __init__(self, camera: Camera, flip: bool, options: SourceOptions | None,
                 wake: threading.Condition, depth: int, on_event: Callable[[str], None]):
        self.camera = camera
        self.source = FrameSource(camera.uri, options,
                                  on_event=lambda line: on_event(f"{camera.name}: {line}"))
        self.live = self.source.kind in LIVE
        self.stats = CameraStats(camera.name, self.source.kind)
        self.pending: deque[tuple[int, float, Any]] = deque()
        self.flip, self.wake, self.depth = flip, wake, depth
        self.stopped = False
        self.done = False
        self.restarts: list[int] = []
        """The index of the first frame read after each reconnect."""
        self._reconnects = 0
        self.thread = threading.Thread(target=self._run, name=f"vitedge-camera-{camera.name}",
                                       daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        interval = 1.0 / self.camera.fps if self.camera.fps else 0.0
        next_due = 0.0
        index = 0
        try:
            for frame in self.source:
                now = time.monotonic()
                if self.stopped:
                    break
                if interval and now < next_due:
                    if self.live:  # a live camera's extra frames are left out
                        with self.wake:
                            self.stats.capped += 1
                        continue
                    time.sleep(next_due - now)  # a file is paced, nothing left out
                    now = time.monotonic()
                next_due = max(next_due + interval, now) if interval else 0.0
                if self.flip and isinstance(frame, np.ndarray) and frame.ndim == 3:
                    frame = frame[..., ::-1]
                if self.source.stats.reconnects != self._reconnects:
                    self._reconnects = self.source.stats.reconnects
                    self.restarts.append(index)
                with self.wake:
                    self.stats.read += 1
                    if self.live:
                        if self.pending:
                            self.stats.dropped += len(self.pending)
                            self.pending.clear()
                    else:
                        while len(self.pending) >= self.depth and not self.stopped:
                            self.wake.wait(0.1)
                    self.pending.append((index, now, frame))
                    self.wake.notify_all()
                index += 1
                self._sync_source_stats()
        except VitedgeError as exc:
            self.stats.gone = exc.message
        except Exception as exc:  # noqa: BLE001 - one camera's failure never stops the others
            self.stats.gone = f"{type(exc).__name__}: {exc}"
        finally:
            self._sync_source_stats()
            if self.source.stats.gave_up and not self.stats.gone:
                self.stats.gone = self.source.stats.gave_up
            with contextlib.suppress(Exception):
                self.source.close()
            with self.wake:
                self.done = True
                self.wake.notify_all()

    def _sync_source_stats(self) -> None:
        s = self.source.stats
        self.stats.failed_reads, self.stats.reconnects = s.dropped, s.reconnects

    def stop(self) -> None:
        with self.wake:
            self.stopped = True
            self.wake.notify_all()


class MultiStream:
    """Iterate it for `CameraResult`s, as results are ready; `add` / `remove` cameras while
    it runs; `stats` per camera; `batch_sizes`, how many batches of each size the model
    ran. Use `pipe.multi_stream(...)` to make one, and `close()` (or `with`) to stop."""

    def __init__(self, pipe: PipelineStages, cameras: dict[str, Any] | list[Any] | list[Camera],
                 batch: int | None = None, max_wait_ms: float = MAX_WAIT_MS,
                 source_options: SourceOptions | None = None,
                 on_event: Callable[[str], None] | None = None):
        self.pipe = pipe
        specs = _cameras_of(cameras)
        check_unique(specs)
        if max_wait_ms < 0:
            raise VitedgeError("max_wait_ms must be 0 or more")
        self.batch = batch or min(max(len(specs), 1), pipe_max_batch(pipe))
        if self.batch < 1:
            raise VitedgeError("batch must be 1 or more")
        self.max_wait = max_wait_ms / 1e3
        self.source_options = source_options
        self.on_event = on_event or (lambda _line: None)
        self.wake = threading.Condition()
        self.readers: dict[str, _Reader] = {}
        self.stats: dict[str, CameraStats] = {}
        self.batch_sizes: Counter[int] = Counter()
        self._turn = 0
        self._restarts = Restarts()
        self._closed = False
        self._started = False
        for camera in specs:
            self.add(camera)

    def add(self, camera: Camera | str, uri: Any = None) -> None:
        """Add a camera (a Camera, or a name and a URI), started at once when running."""
        spec = camera if isinstance(camera, Camera) else Camera(camera, str(uri))
        with self.wake:
            if spec.name in self.readers:
                raise VitedgeError(f"a camera named '{spec.name}' is already running",
                                   "remove it first, or give the new one another name")
            flip = spec.color is not None and spec.color != self.pipe.color
            reader = _Reader(spec, flip, self.source_options, self.wake, self.batch,
                             self.on_event)
            self.readers[spec.name] = reader
            self.stats[spec.name] = reader.stats
            if self._started:
                reader.start()
            self.wake.notify_all()

    def remove(self, name: str) -> None:
        """Stop reading a camera; its frames not yet taken are left out."""
        with self.wake:
            reader = self.readers.pop(name, None)
            if reader is None:
                raise VitedgeError(f"no camera named '{name}'",
                                   f"cameras: {', '.join(self.readers) or 'none'}")
            reader.stop()
            reader.pending.clear()
            restart(self.pipe, name)  # a camera added again starts from a full inference
            self._restarts.forget(name)
            self.wake.notify_all()

    def __iter__(self) -> Iterator[CameraResult]:
        with self.wake:
            self._started = True
            for reader in self.readers.values():
                if not reader.thread.is_alive() and not reader.done:
                    reader.start()
        try:
            for _chunk, results in self.pipe._in_flight(self._batches(), self._run):
                yield from results
        finally:
            self.close()

    def _batches(self) -> Iterator[list[tuple[str, int, float, Any]]]:
        """Batches of (camera, index, capture time, frame), until every camera has ended."""
        while True:
            with self.wake:
                while not self._closed and not self._any_pending():
                    if all(r.done for r in self.readers.values()):
                        return
                    self.wake.wait(0.5)
                if self._closed:
                    return
                chunk = self._take(self.batch)
                deadline = time.monotonic() + self.max_wait
                while len(chunk) < self.batch and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0 or all(r.done for r in self.readers.values()
                                        if not r.pending):
                        break
                    self.wake.wait(left)
                    chunk += self._take(self.batch - len(chunk))
                self.wake.notify_all()  # file readers waiting for room
            if chunk:
                yield chunk

    def _any_pending(self) -> bool:
        return any(r.pending for r in self.readers.values())

    def _take(self, room: int) -> list[tuple[str, int, float, Any]]:
        """Up to `room` frames, one camera at a time round-robin (from where the last batch
        left off), each camera's frames in order."""
        names = list(self.readers)
        taken: list[tuple[str, int, float, Any]] = []
        while room > 0:
            progressed = False
            for i in range(len(names)):
                name = names[(self._turn + i) % len(names)]
                pending = self.readers[name].pending
                if pending and room > 0:
                    taken.append((name, *pending.popleft()))
                    room -= 1
                    progressed = True
            self._turn = (self._turn + 1) % max(len(names), 1)
            if not progressed:
                break
        return taken

    def _run(self, chunk: list[tuple[str, int, float, Any]]) -> list[CameraResult]:
        frames = [frame for _, _, _, frame in chunk]
        formed = time.monotonic()
        _kept, x, timings = self.pipe._prepare(frames, skip_unreadable=False)
        names = [name for name, _, _, _ in chunk]
        predictions: list[Prediction] = []
        for a, b in self._parts(chunk):  # a stream's state is per camera: see _parts
            predictions += self.pipe._infer(x[a:b], dict(timings), names[a:b])
        done = time.monotonic()
        to_unix = time.time() - time.monotonic()
        results = []
        with self.wake:
            self.batch_sizes[len(chunk)] += 1
            for (name, index, captured, frame), p in zip(chunk, predictions, strict=True):
                latency = (done - captured) * 1e3
                stats = self.stats[name]
                stats.processed += 1
                stats.last_latency_ms = latency
                stats.latency.add({"wait": (formed - captured) * 1e3,
                                   "pipeline": (done - formed) * 1e3, "latency": latency}, 1)
                p.source = source_of(frame)  # an image file of a folder camera, else None
                results.append(CameraResult(name, frame, p, index, captured + to_unix, latency,
                                            captured))
        return results

    def _parts(self, chunk: list[tuple[str, int, float, Any]]) -> Iterator[tuple[int, int]]:
        """The batch as parts run in turn: a camera whose source reconnected or whose frames
        changed size has its reuse states restarted (`token_gate.restart`) before that frame,
        and a part ends before such a frame where the part already holds one of its camera's
        (so that the restart comes between the two)."""
        start, seen = 0, set[str]()
        for i, (name, index, _, frame) in enumerate(chunk):
            reader = self.readers.get(name)
            epoch = bisect.bisect_right(reader.restarts, index) if reader is not None else 0
            if self._restarts.check(name, frame, epoch):
                if name in seen:
                    yield start, i
                    start, seen = i, set[str]()
                restart(self.pipe, name)
            seen.add(name)
        yield start, len(chunk)

    def close(self) -> None:
        with self.wake:
            self._closed = True
            readers = list(self.readers.values())
            for r in readers:
                r.stopped = True
                r.pending.clear()
            self.wake.notify_all()
        for r in readers:  # a read that blocks in OpenCV ends within its own timeout
            if r.thread.is_alive():
                r.thread.join(timeout=2.0)

    def __enter__(self) -> MultiStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _cameras_of(cameras: dict[str, Any] | list[Any]) -> list[Camera]:
    if isinstance(cameras, dict):
        return [Camera(str(name), str(uri)) for name, uri in cameras.items()]
    out = []
    for i, c in enumerate(cameras):
        out.append(c if isinstance(c, Camera) else Camera(f"camera{i}", str(c)))
    return out


DYNAMIC_MAX_BATCH = 8
"""The batch a model that takes any batch (a dynamic ONNX model) is given at most by
default: ONNX Runtime on the CPU gains little past 8 (`vitedge bench --batch 1,8`)."""


def pipe_max_batch(pipe: PipelineStages) -> int:
    """The largest batch the model takes: an engine's profile max, an ONNX model's fixed
    batch, else DYNAMIC_MAX_BATCH."""
    model = pipe.model
    return int(model.max_batch or getattr(model, "fixed_batch", None) or DYNAMIC_MAX_BATCH)
