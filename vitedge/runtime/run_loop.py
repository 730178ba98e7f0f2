"""`vitedge run`: the camera loop. Frames from a source through the pipeline, the label
and the FPS drawn on each, optionally written to a video or shown in a window; stage
timings summarised at the end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError, require
from vitedge.fileio import atomic_path
from vitedge.runtime.pipeline import open_pipeline
from vitedge.runtime.sources import FrameSource


def _as_bgr(frame: Any) -> np.ndarray:
    """The frame as a BGR array for drawing (sources give BGR arrays or RGB PIL images)."""
    if isinstance(frame, np.ndarray):
        return frame if frame.ndim == 3 else np.repeat(frame[:, :, None], 3, axis=2)
    return np.ascontiguousarray(np.asarray(frame.convert("RGB"))[:, :, ::-1])


def run_loop(artifact: str, source: str, output: str | None = None, display: bool = False,
             max_frames: int | None = None, color: str = "bgr", fast: bool = False,
             device: str | None = None, streams: int = 1,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    from vitedge.runtime.stats import Stats

    frames = FrameSource(source)
    cv2 = require("cv2", "video", "drawing on frames") if (output or display) else None
    writer = None
    fps = 0.0
    start = time.perf_counter()
    count = 0
    with open_pipeline(artifact, device=device, color=color, fast=fast, streams=streams) as pipe:
        with atomic_path(output) if output else contextlib.nullcontext() as tmp:
            try:
                last = time.perf_counter()
                for frame, p in pipe.stream(frames, max_frames=max_frames):
                    count += 1
                    now = time.perf_counter()
                    fps = 0.9 * fps + 0.1 / max(now - last, 1e-9) if count > 1 else 1 / max(now - last, 1e-9)
                    last = now
                    if cv2 is None:
                        continue
                    image = _as_bgr(frame).copy()
                    text = f"{p.label if p.label is not None else p.class_id} {p.score:.2f}  {fps:.1f} FPS"
                    cv2.putText(image, text, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 255, 0), 2)
                    if output:
                        if writer is None:
                            h, w = image.shape[:2]
                            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if output.endswith(".mp4") else "MJPG"))
                            writer = cv2.VideoWriter(str(tmp), fourcc, 30.0, (w, h))
                            if not writer.isOpened():
                                raise VitedgeError(f"cannot write video {output}",
                                                   "use .mp4 or .avi")
                        writer.write(image)
                    if display:
                        cv2.imshow("vitedge", image)
                        if cv2.waitKey(1) & 0xFF == ord("q"):
                            break
            finally:
                if writer is not None:
                    writer.release()
                if display and cv2 is not None:
                    cv2.destroyAllWindows()
                frames.close()
            if output and count == 0:
                raise VitedgeError(f"{source} gave no frames; nothing written")
        elapsed = time.perf_counter() - start
        stages = {k: asdict(Stats.of(v)) for k, v in pipe.times.samples.items() if len(v)}
        warnings = pipe.warnings
    if log:
        log(f"{count} frames from {frames.kind} {source} in {elapsed:.1f} s"
            + (f", written to {output}" if output else ""))
    return {"frames": count, "seconds": round(elapsed, 3), "fps": count / elapsed if elapsed else 0.0,
            "dropped": frames.stats.dropped, "reconnects": frames.stats.reconnects,
            "stages": stages, "output": output, "warnings": warnings}
