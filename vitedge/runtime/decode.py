"""Stage 1, decode: whatever a camera application hands the pipeline (an OpenCV BGR array,
an RGB or gray array, RGBA, a PIL image, an image file) as the pixels preprocessing takes:
an RGB (or L) PIL image for the exact path, an RGB array for the fast one. Every frame that
cannot be one is a VitedgeError naming why. And what a frame is, and a batch of them
(`is_frame`, `frames_of`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitedge.errors import VitedgeError
from vitedge.runtime import resample
from vitedge.runtime.preprocess import MAX_PIXELS, FramePixels, load_image, upright


def decode_frame(frame: Any, color: str = "bgr", fast: bool = False
                 ) -> Image.Image | FramePixels | np.ndarray:
    """One frame, decoded: a PIL image or, for a 3-channel array where the C resampler is
    built, the array itself (`FramePixels`: resized as it is, no whole-frame copy) on the
    exact path; an RGB uint8 array (`fast`). `color` is the channel order of a 3- or
    4-channel array (OpenCV gives BGR)."""
    if isinstance(frame, (str, Path)):
        return load_image(frame) if not fast else np.asarray(load_image(frame))
    if isinstance(frame, Image.Image):
        if frame.width < 1 or frame.height < 1:
            raise VitedgeError(f"an empty frame ({frame.width}x{frame.height}) cannot be classified")
        frame = upright(frame)
        return frame if not fast else np.asarray(frame.convert("RGB"))
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
    if frame.ndim == 3 and frame.shape[2] == 3 and not fast:
        pixels = FramePixels(frame, "bgr" if color == "bgr" else "rgb")
        return pixels if resample.library() is not None else pixels.image()
    if fast and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (3, 4))):
        swapped = _rgb_by_opencv(frame, color)
        if swapped is not None:
            return swapped
    if frame.ndim == 2:
        rgb = np.repeat(frame[:, :, None], 3, axis=2)
    elif frame.ndim == 3 and frame.shape[2] in (3, 4):
        rgb = frame[:, :, :3]
        if color == "bgr":
            rgb = rgb[:, :, ::-1]
    else:
        raise VitedgeError(f"a frame of shape {frame.shape} is not HxW, HxWx3 or HxWx4")
    rgb = np.ascontiguousarray(rgb)
    return rgb if fast else Image.fromarray(rgb)


def _rgb_by_opencv(frame: np.ndarray, color: str) -> np.ndarray | None:
    """The fast path's RGB copy of a gray, BGR(A) or RGBA frame in one OpenCV pass (numpy's
    reversed-stride copy of a 640x480 frame takes 40 times as long); None without OpenCV."""
    try:
        import cv2
    except ImportError:
        return None
    if frame.ndim == 2:
        code = cv2.COLOR_GRAY2RGB
    elif frame.shape[2] == 3:
        if color != "bgr":
            return np.ascontiguousarray(frame)
        code = cv2.COLOR_BGR2RGB
    else:
        code = cv2.COLOR_BGRA2RGB if color == "bgr" else cv2.COLOR_RGBA2RGB
    return cv2.cvtColor(np.ascontiguousarray(frame), code)


def is_frame(item: Any) -> bool:
    """One frame: an image file's path, a PIL image, an HxW or HxWxC (C 1, 3 or 4) array."""
    if isinstance(item, (str, Path, Image.Image)):
        return True
    return isinstance(item, np.ndarray) and (item.ndim == 2 or (
        item.ndim == 3 and item.shape[2] in (1, 3, 4)))


def frames_of(batch: Any) -> list[Any]:
    """The frames of one batch: a list or tuple of frames, an (N, H, W, C) array, or any
    iterable of frames; one frame alone (which would be read row by row) is refused."""
    if is_frame(batch):
        raise VitedgeError("a batch is a list of frames (or an (N, H, W, C) array), not one "
                           f"frame{f' of shape {batch.shape}' if hasattr(batch, 'shape') else ''}",
                           "for one frame call pipe(frame), or pass [frame]")
    if isinstance(batch, np.ndarray):
        if batch.ndim != 4:
            raise VitedgeError(f"an array of shape {batch.shape} is neither one frame (HxW, "
                               "HxWxC) nor a batch of them (N, H, W, C)",
                               "pass a list of frames")
        return list(batch)
    try:
        return list(batch)
    except TypeError:
        raise VitedgeError(f"a batch must be a list of frames, not {type(batch).__name__}") from None
