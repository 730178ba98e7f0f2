"""Where frames come from: an image, a folder, a glob, a video file, a camera (index or
/dev/videoN), an rtsp:// or http:// stream, or a GStreamer pipeline string (a Jetson CSI
camera: `nvarguscamerasrc ! ... ! appsink`). Images come as RGB PIL images; everything
OpenCV reads comes as BGR uint8 arrays, as OpenCV gives them (the pipeline's default
colour order)."""

from __future__ import annotations

import glob
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError, require

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".gif"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mjpeg", ".mjpg"}
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "tcp://")


@dataclass
class SourceStats:
    frames: int = 0
    dropped: int = 0
    """Reads that failed on a live source (each is retried; a file source just ends)."""
    reconnects: int = 0


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
    """An iterator of frames with counters; `close()` releases a capture device."""

    def __init__(self, source: Any, max_failures: int = 30, reconnect_after: float = 1.0,
                 max_reconnects: int = 5):
        self.source = source
        self.kind = describe(source)
        self.stats = SourceStats()
        self.max_failures = max_failures
        self.max_reconnects = max_reconnects
        self.reconnect_after = reconnect_after
        self._cap: Any = None
        if self.kind in ("image", "folder", "glob"):
            self.files = self._files()

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
        src: Any = self.source
        if self.kind == "camera":
            src = int(src) if str(src).isdigit() else str(src)
            cap = cv2.VideoCapture(src)
        elif self.kind == "gstreamer":
            cap = cv2.VideoCapture(str(src), cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(str(src))
        if not cap.isOpened():
            cap.release()
            hint = {"gstreamer": "OpenCV needs GStreamer support (cv2.getBuildInformation())",
                    "camera": "check the device exists and is not in use"}.get(self.kind)
            raise VitedgeError(f"cannot open {self.kind} {src}", hint)
        return cap

    def __iter__(self) -> Iterator[Any]:
        if self.kind in ("image", "folder", "glob"):
            from vitedge.runtime.preprocess import load_image

            for f in self.files:
                self.stats.frames += 1
                yield load_image(f)
            return
        yield from self._capture_frames()

    def _capture_frames(self) -> Iterator[Any]:
        live = self.kind in ("camera", "stream", "gstreamer")
        self._cap = self._open_capture()
        failures = reconnects = 0
        try:
            while True:
                ok, frame = self._cap.read()
                if ok and frame is not None:
                    failures = reconnects = 0
                    self.stats.frames += 1
                    yield frame
                    continue
                if not live:
                    return  # end of the file
                self.stats.dropped += 1
                failures += 1
                if failures >= self.max_failures:
                    # the stream dropped: reconnect, a few times at most without a frame
                    if reconnects >= self.max_reconnects:
                        return
                    reconnects += 1
                    self._cap.release()
                    time.sleep(self.reconnect_after)
                    try:
                        self._cap = self._open_capture()
                    except VitedgeError:
                        return  # it is gone: end cleanly
                    self.stats.reconnects += 1
                    failures = 0
        finally:
            self.close()

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def open_source(source: Any, **options: Any) -> FrameSource:
    return FrameSource(source, **options)
