"""Where frames come from: an image, a folder, a glob, a video file, a camera (index or
/dev/videoN), an rtsp:// or http:// stream, or a GStreamer pipeline string (a Jetson CSI
camera: `nvarguscamerasrc ! ... ! appsink`). Images come as RGB PIL images; everything
OpenCV reads comes as BGR uint8 arrays, as OpenCV gives them (the pipeline's default
colour order)."""

from __future__ import annotations

import contextlib
import glob
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError, require
from vitedge.options import SourceOptions

__all__ = ["FrameSource", "SourceOptions", "SourceStats", "describe", "image_files",
           "open_source", "source_of"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mjpeg", ".mjpg"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")


@dataclass
class SourceStats:
    frames: int = 0
    dropped: int = 0
    """Reads that failed on a live source (each is retried; a file source just ends)."""
    reconnects: int = 0
    """Re-opens that succeeded."""
    reconnect_attempts: int = 0
    """Every re-open tried, failed ones included."""
    outage_seconds: float = 0.0
    """Time spent without frames while reconnecting."""
    skipped: list[str] = field(default_factory=list)
    """Image files that could not be read (a folder or glob goes on without them)."""
    gave_up: str | None = None
    """Why a live source ended for good (its reconnect budget ran out), or None."""

    def to_dict(self) -> dict[str, Any]:
        return {"dropped": self.dropped, "reconnects": self.reconnects,
                "reconnect_attempts": self.reconnect_attempts,
                "outage_seconds": round(self.outage_seconds, 2),
                "skipped": len(self.skipped), "skipped_files": self.skipped[:20],
                "gave_up": self.gave_up}


def describe(source: Any) -> str:
    """What kind of source `source` is: image, folder, glob, video, camera, stream, gstreamer."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return "camera"
    s = str(source)
    if s.startswith("/dev/video"):
        return "camera"
    if s.startswith(STREAM_PREFIXES):
        return "stream"
    if "!" in s and ("appsink" in s or "src" in s):
        return "gstreamer"
    if any(c in s for c in "*?["):
        return "glob"
    p = Path(s)
    if p.is_dir():
        return "folder"
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    if p.suffix.lower() in VIDEO_SUFFIXES:
        return "video"
    if not p.exists():
        raise VitedgeError(f"no such file or folder: {p}")
    raise VitedgeError(f"{p} is not an image, folder, video, camera or stream",
                       "images: " + ", ".join(sorted(IMAGE_SUFFIXES)))


class FrameSource:
    """An iterator of frames with counters; `close()` releases a capture device. A live
    source that drops is re-opened with growing waits until it comes back or
    `options.reconnect_for` seconds pass without a frame (then `stats.gave_up` says why and
    the iteration ends); `on_event` hears each drop and reconnect, one line each."""

    def __init__(self, source: Any, options: SourceOptions | None = None,
                 on_event: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.source = source
        self.kind = describe(source)
        self.options = options or SourceOptions()
        self.stats = SourceStats()
        self.on_event = on_event or (lambda _line: None)
        self._sleep, self._clock = sleep, clock
        self._cap: Any = None
        self.fps: float | None = None
        """The frame rate the video or camera declares, once it is open (None: unknown)."""
        if self.kind in ("image", "folder", "glob"):
            self.files = self._files()
        elif self.kind in ("gstreamer", "stream"):
            _check_backend(self.kind, source)  # one that can never open fails now

    def _files(self) -> list[Path]:
        if self.kind == "image":
            p = Path(str(self.source))
            if not p.is_file():
                raise VitedgeError(f"no such image: {p}")
            return [p]
        if self.kind == "folder":
            found = sorted(f for f in Path(str(self.source)).rglob("*")
                           if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        else:
            found = sorted(Path(f) for f in glob.glob(str(self.source), recursive=True)
                           if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise VitedgeError(f"no images in {self.source}")
        return found

    def _open_capture(self) -> Any:
        cv2 = require("cv2", "video", f"reading a {self.kind}")
        _quiet(cv2)
        src: Any = self.source
        if self.kind == "camera":
            src = int(src) if str(src).isdigit() else str(src)
            cap = cv2.VideoCapture(src)
        elif self.kind == "gstreamer":
            cap = cv2.VideoCapture(str(src), cv2.CAP_GSTREAMER)
        elif self.kind == "stream":  # FFmpeg gives up on a stall instead of waiting for ever
            open_ms, read_ms = self._timeouts_ms()
            cap = cv2.VideoCapture(str(src), cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms,
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms])
        else:
            cap = cv2.VideoCapture(str(src))
        if not cap.isOpened():
            cap.release()
            hint = {"gstreamer": "OpenCV needs GStreamer support (cv2.getBuildInformation())",
                    "camera": "check the device exists and is not in use"}.get(self.kind)
            raise VitedgeError(f"cannot open {self.kind} {src}", hint)
        rate = cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(rate) if 0 < rate < 1000 else self.fps
        return cap

    def _timeouts_ms(self) -> tuple[int, int]:
        """(open, read) timeouts for a network stream: within the reconnect budget."""
        budget = self.options.reconnect_for
        if budget is None:
            return 10_000, 5_000
        return int(min(max(budget / 2, 0.5), 5.0) * 1000), int(min(max(budget / 4, 0.25), 2.0) * 1000)

    def __iter__(self) -> Iterator[Any]:
        if self.kind in ("image", "folder", "glob"):
            yield from self._image_frames()
            return
        yield from self._capture_frames()

    def _image_frames(self) -> Iterator[Any]:
        from vitedge.runtime.preprocess import load_image

        for f in self.files:
            try:
                image = load_image(f)
            except VitedgeError as exc:
                self.stats.skipped.append(str(f))
                self.on_event(f"skipped {f}: {exc.message}")
                continue
            self.stats.frames += 1
            image.info[SOURCE_KEY] = str(f)  # which file: `source_of`
            yield image
        if self.files and not self.stats.frames:
            raise VitedgeError(f"none of the {len(self.files)} images in {self.source} could be "
                               f"read (first: {self.stats.skipped[0]})")

    def _capture_frames(self) -> Iterator[Any]:
        live = self.kind in ("camera", "stream", "gstreamer")
        self._last_frame = self._clock()
        self._cap = self._open_capture() if not live else self._open_or_wait()
        if self._cap is None:
            return
        failures = 0
        try:
            while True:
                ok, frame = self._cap.read()
                if ok and frame is not None:
                    failures = 0
                    self._last_frame = self._clock()
                    self.stats.frames += 1
                    yield frame
                    continue
                if not live:
                    return  # the end of the file
                self.stats.dropped += 1
                failures += 1
                if self._out_of_time():  # no frame that decodes: as gone as no frame at all
                    self._give_up()
                    return
                if failures >= self.options.max_failures:
                    if not self._reconnect():
                        return
                    failures = 0
        finally:
            self.close()

    def _out_of_time(self) -> bool:
        budget = self.options.reconnect_for
        return budget is not None and self._clock() - self._last_frame >= budget

    def _give_up(self) -> None:
        waited = self._clock() - self._last_frame
        self.stats.outage_seconds += waited
        self.stats.gave_up = (f"no frame for {waited:.1f} s after "
                              f"{self.stats.reconnect_attempts} reconnect attempts")

    def _open_or_wait(self) -> Any:
        """A live source that is not there at start (a camera that boots after the box) is
        waited for like one that drops: None once the reconnect budget is spent."""
        try:
            return self._open_capture()
        except VitedgeError as exc:
            budget = self.options.reconnect_for
            self.on_event(f"{self.kind} {self.source} is not there ({exc.message}); waiting "
                          + ("for it for ever (--reconnect-for SECONDS, or reconnect_for=, "
                             "bounds the wait)" if budget is None else
                             f"for it up to {budget:g} s"))
        return self._cap if self._reconnect(dropped=False) else None

    def _reconnect(self, dropped: bool = True) -> bool:
        """Re-open the live source with growing waits; False once the budget (seconds since
        the last frame that decoded) is spent (`stats.gave_up` then says why)."""
        opts = self.options
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        start = self._clock()
        wait = opts.backoff
        if dropped:
            self.on_event(f"{self.kind} {self.source} dropped after {self.stats.frames} frames; "
                          "reconnecting")
        while True:
            if self._out_of_time():
                self._give_up()
                return False
            if opts.reconnect_for is not None:
                left = opts.reconnect_for - (self._clock() - self._last_frame)
                wait = min(wait, max(left, 0.0))
            self._sleep(wait)
            wait = min(max(wait * 2, opts.backoff), opts.backoff_max)
            self.stats.reconnect_attempts += 1
            try:
                self._cap = self._open_capture()
            except VitedgeError:
                self.on_event(f"reconnect attempt {self.stats.reconnect_attempts} to "
                              f"{self.source} failed")
                continue
            self.stats.reconnects += 1
            self.stats.outage_seconds += self._clock() - start
            self.on_event(f"{self.source} is back after {self._clock() - start:.1f} s "
                          f"({self.stats.reconnect_attempts} attempts)")
            return True

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


SOURCE_KEY = "vitedge.source"
"""The key in a PIL image's `info` naming the file a folder or glob source read it from."""


def source_of(frame: Any) -> str | None:
    """The file a frame came from: a path itself, or an image a folder / glob source read
    (`FrameSource` names it in the image's `info`); None for pixels from elsewhere."""
    if isinstance(frame, (str, Path)):
        return str(frame)
    info = getattr(frame, "info", None)
    return info.get(SOURCE_KEY) if isinstance(info, dict) else None


def with_sources(pairs: Iterable[tuple[Any, Any]], named: str | None
                 ) -> Iterator[tuple[Any, Any]]:
    """(frame, prediction) with the prediction's `source` set: the frame's file, else
    `named` (the stream's URI)."""
    for frame, p in pairs:
        p.source = source_of(frame) or named
        yield frame, p


BACKENDS = {"gstreamer": "GStreamer", "stream": "FFMPEG"}
"""The OpenCV video backend each kind of source needs (cv2.getBuildInformation()'s names)."""
GSTREAMER_HINT = ("pip's opencv-python wheels have no GStreamer: use an OpenCV built with it "
                  "(JetPack's python3-opencv on a Jetson; Debian / Ubuntu: apt-get install "
                  "python3-opencv gstreamer1.0-plugins-good in a venv made with "
                  "--system-site-packages, pip uninstall opencv-python-headless; or build "
                  "OpenCV with -D WITH_GSTREAMER=ON)")


def _check_backend(kind: str, source: Any) -> None:
    """A VitedgeError, at once, when this OpenCV lacks the backend `kind` needs: waiting
    for such a source would wait for ever."""
    try:
        import cv2
    except ImportError:
        return  # opening it says what to install
    backend = BACKENDS[kind]
    info = ""
    with contextlib.suppress(Exception):  # no build information: try to open it as ever
        info = cv2.getBuildInformation()
    for line in info.splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip() == backend and not value.strip().upper().startswith("YES"):
            raise VitedgeError(
                f"cannot read {kind} {source}: this OpenCV ({cv2.__version__}) was built "
                f"without {backend}", GSTREAMER_HINT if kind == "gstreamer" else
                "use an OpenCV built with FFmpeg (pip install opencv-python-headless)")


def _quiet(cv2: Any) -> None:
    """FFmpeg's and OpenCV's own log lines (one per frame that does not decode) stay off the
    user's terminal: vitedge says what happened, once."""
    import os

    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    with contextlib.suppress(Exception):
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def image_files(specs: list[str] | tuple[str, ...]) -> list[Path]:
    """Image files from files, folders and globs; a video or camera is refused."""
    files: list[Path] = []
    for spec in specs:
        source = FrameSource(spec)
        if source.kind not in ("image", "folder", "glob"):
            raise VitedgeError(f"{spec} is a {source.kind}, not an image",
                               "use `vitedge run --source` for videos and cameras")
        files += source.files
    return files


def open_source(source: Any, **options: Any) -> FrameSource:
    return FrameSource(source, **options)
