"""Where annotated frames go, chosen by URI as jetson-inference's `videoOutput` does: a
video file (`out.mp4`, `out.avi`, `out.mkv`), a window (`display://0`, or `display`), or
nowhere (`None`, `none://`). The camera loop is capture -> classify -> render:

    from vitedge.runtime import open_output, open_source
    with vitedge.open(model) as pipe, open_output("out.mp4") as out:
        for frame, p in pipe.stream(open_source("rtsp://camera/stream")):
            if not out.render(frame, p):
                break                       # the window was closed, or 'q' pressed

A video file is written to a temporary file beside it and moved into place on `close()`,
only if frames were written and the file is not empty: an interrupted or failed run never
leaves a half-written or 0-byte video behind. Needs OpenCV (`vitedge[video]`) except for
`none`."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError, require

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".avi": "MJPG", ".mkv": "MJPG", ".mov": "mp4v"}
DISPLAY_PREFIXES = ("display://", "display")


def as_bgr(frame: Any) -> np.ndarray:
    """A frame as a BGR uint8 array for drawing (sources give BGR arrays or RGB PIL images)."""
    if isinstance(frame, np.ndarray):
        return frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(frame.convert("RGB"))[:, :, ::-1])


class FrameOutput:
    """Renders annotated frames; `render` returns False when the user asked to stop."""

    kind = "none"
    frames = 0
    fps = 0.0

    def __init__(self) -> None:
        self._last: float | None = None

    def render(self, frame: Any, prediction: Any = None) -> bool:
        """Draw the prediction and the running FPS on `frame` and show or write it."""
        now = time.perf_counter()
        if self._last is not None:
            instant = 1.0 / max(now - self._last, 1e-9)
            self.fps = instant if self.frames <= 1 else 0.9 * self.fps + 0.1 * instant
        self._last = now
        self.frames += 1
        return self._render(frame, prediction)

    def _render(self, frame: Any, prediction: Any) -> bool:
        return True

    def match_rate(self, fps: float | None) -> None:
        """The source's frame rate (None: unknown), for an output that needs one."""

    def _annotate(self, cv2: Any, frame: Any, prediction: Any) -> np.ndarray:
        image = as_bgr(frame).copy()
        if prediction is not None:
            draw_lines(cv2, image, [prediction.describe(), f"{self.fps:.1f} FPS"])
        return image

    def close(self) -> None:
        """Release the window or finish the file; a second call does nothing."""

    def __enter__(self) -> FrameOutput:
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        if exc_type is not None:
            self.abort()
        self.close()

    def abort(self) -> None:
        """Give up: a file output leaves nothing behind."""


class DisplayOutput(FrameOutput):
    """An OpenCV window ('q' or closing it stops the loop)."""

    kind = "display"

    def __init__(self, title: str = "vitedge") -> None:
        super().__init__()
        self.cv2 = require("cv2", "video", "showing frames in a window")
        self.title = title

    def _render(self, frame: Any, prediction: Any) -> bool:
        self.cv2.imshow(self.title, self._annotate(self.cv2, frame, prediction))
        return (self.cv2.waitKey(1) & 0xFF) != ord("q")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # no display left to close
            self.cv2.destroyAllWindows()


class VideoFileOutput(FrameOutput):
    """A video file, written atomically: a temporary file beside it, moved into place on
    `close()` when at least one frame was written and the file has bytes."""

    kind = "file"

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise VitedgeError(f"cannot write video {self.path}: unknown container '{suffix}'",
                               f"use one of {', '.join(sorted(VIDEO_CODECS))}")
        self.cv2 = require("cv2", "video", "writing video")
        from vitedge.fileio import output_file

        output_file(self.path)  # its folder made now: a file in the way fails before the run
        self.rate = fps
        """Frames a second the video plays at: `fps`, else the source's (`match_rate`),
        else DEFAULT_FPS."""
        from vitedge.fileio import temporary_path

        self.tmp = temporary_path(self.path)
        self._writer: Any = None
        self._closed = False

    def _render(self, frame: Any, prediction: Any) -> bool:
        image = self._annotate(self.cv2, frame, prediction)
        if self._writer is None:
            h, w = image.shape[:2]
            fourcc = self.cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.path.suffix.lower()])
            self._writer = self.cv2.VideoWriter(str(self.tmp), fourcc,
                                                self.rate or DEFAULT_FPS, (w, h))
            if not self._writer.isOpened():
                self.abort()
                raise VitedgeError(f"cannot write video {self.path}",
                                   "check the folder is writable, or use .avi")
        if self.frames % 16 == 1 and _free_bytes(self.tmp) < FREE_FLOOR:
            self.abort()  # the writer would fail frame by frame, silently or loudly
            raise VitedgeError(f"cannot write {self.path}: the disk is full (less than "
                               f"{FREE_FLOOR >> 20} MB left where it is written); nothing "
                               "written", "free space or choose another path")
        self._writer.write(image)
        return True

    def match_rate(self, fps: float | None) -> None:
        if self.rate is None and self._writer is None and fps:
            self.rate = float(fps)

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        from vitedge.fileio import release

        release(self.tmp)
        self._closed = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        from vitedge.errors import write_error
        from vitedge.fileio import publish, release

        written = self.tmp.stat().st_size if self.tmp.exists() else 0
        try:
            if self.frames == 0 or written == 0:
                if self.frames:
                    raise VitedgeError(f"{self.path}: the video writer wrote no bytes (is the "
                                       "disk full?); nothing written",
                                       "free space or choose another path")
                return
            stored = _frames_in(self.cv2, self.tmp)
            if stored is not None and stored < self.frames:
                raise VitedgeError(f"{self.path}: the video writer kept {stored} of "
                                   f"{self.frames} frames (is the disk full?); nothing written",
                                   "free space or choose another path")
            try:
                publish(self.tmp, self.path)
            except OSError as exc:
                raise write_error(self.path, exc) from exc
        finally:
            release(self.tmp)


DEFAULT_FPS = 30.0
"""The frame rate of a video written from a source that has none (images, a folder)."""


def draw_lines(cv2: Any, image: np.ndarray, lines: list[str]) -> None:
    """`lines` in green at the top left of `image`, one under the other, the font scaled
    down so that the longest fits the frame's width (a 112x112 frame shows all of it)."""
    h, w = image.shape[:2]
    margin = max(2, min(10, w // 40))
    font = cv2.FONT_HERSHEY_SIMPLEX
    widest = max(cv2.getTextSize(line, font, 1.0, 2)[0][0] for line in lines)
    scale = min(0.8, (w - 2 * margin - 2) / max(widest, 1))
    thickness = 2 if scale >= 0.5 else 1
    y = margin
    for line in lines:
        (tw, th), base = cv2.getTextSize(line, font, scale, thickness)
        y += th
        if y + base > h:
            break  # no room for another line
        cv2.putText(image, line, (margin, y), font, scale, (0, 255, 0), thickness)
        y += base + max(2, th // 3)


FREE_FLOOR = 4 << 20
"""Bytes a video keeps free on its disk while it is written, checked every 16 frames."""


def _free_bytes(path: Path) -> int:
    import shutil

    try:
        return shutil.disk_usage(path.parent).free
    except OSError:
        return FREE_FLOOR


def _frames_in(cv2: Any, path: Path) -> int | None:
    """How many frames the written video holds, as its container says (None: it does not)."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        return n if n > 0 else None
    finally:
        cap.release()


def open_output(uri: str | Path | None, fps: float | None = None) -> FrameOutput:
    """A frame output for `uri`: a video file path (playing at `fps` frames a second, else
    at the source's rate, `match_rate`), `display://N` / `display`, or `None` / `none://`
    for none."""
    if uri is None or str(uri) in ("none", "none://"):
        return FrameOutput()
    text = str(uri)
    if text.startswith(DISPLAY_PREFIXES) and not Path(text).suffix:
        return DisplayOutput()
    return VideoFileOutput(text, fps)
