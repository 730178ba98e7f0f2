"""Decoded image to model input, exactly as the manifest says (PIL path: the reference
libraries' eval transforms). Used by calibration, verification and inference alike, so
every stage sees the same pixels."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitedge.errors import VitedgeError
from vitedge.manifest import Preprocess

PIL_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


MAX_PIXELS = 64_000_000
"""An image declaring more pixels than this (an 8000x8000 photo) is refused before it is
decoded: a small file can declare 50000x50000 and take gigabytes."""


def load_image(path: str | Path | bytes) -> Image.Image:
    """An image file (or its encoded bytes: JPEG, PNG, ...) as RGB (grayscale, palette and
    RGBA are converted), turned upright by its EXIF orientation as a phone photo expects.
    Not a regular file, unreadable, or over the pixel budget: one VitedgeError."""
    import io

    from vitedge.inputs import require_regular_file

    if isinstance(path, bytes):
        source: Any = io.BytesIO(path)
        path = "(encoded bytes)"
    else:
        source = require_regular_file(path, "image")
    try:
        with Image.open(source) as im:
            if im.width * im.height > MAX_PIXELS:
                raise VitedgeError(f"cannot read image {path}: {im.width}x{im.height} is more "
                                   f"than {MAX_PIXELS // 1_000_000} megapixels")
            if im.width < 1 or im.height < 1:
                raise VitedgeError(f"cannot read image {path}: it is empty ({im.width}x{im.height})")
            return upright(im).convert("RGB")
    except Image.DecompressionBombError as exc:  # PIL's own, larger limit, met at open
        raise VitedgeError(f"cannot read image {path}: it declares more than "
                           f"{MAX_PIXELS // 1_000_000} megapixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise VitedgeError(f"cannot read image {path}: {_why(exc)}") from exc


def _why(exc: Exception) -> str:
    """Pillow's reason in words, without the Python object it names (`<_io.BytesIO object
    at 0x...>`, which tells a client or a log nothing)."""
    import re

    if isinstance(exc, UnidentifiedImageError):
        return "not an image format Pillow reads (JPEG, PNG, BMP, WebP, TIFF, GIF, ...)"
    said = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return said or type(exc).__name__


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a copy only when it must turn)."""
    from PIL import ImageOps

    try:
        turned = ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - a broken EXIF block: use the pixels as stored
        return image
    return turned if turned is not None else image


def resize_for(image: Image.Image, prep: Preprocess) -> Image.Image:
    w, h = image.size
    if prep.resize_mode == "shorter":
        short = prep.resize[0]
        size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    else:
        size = (prep.resize[1], prep.resize[0])
    return image.resize(size, PIL_FILTERS[prep.interpolation]) if size != image.size else image


def center_crop(image: Image.Image, prep: Preprocess) -> Image.Image:
    """Centre crop to `prep.crop`, its odd margins split by `prep.crop_offset`; pads with
    zeros when the image is smaller."""
    ch, cw = prep.crop
    w, h = image.size
    if w < cw or h < ch:
        padded = Image.new(image.mode, (max(w, cw), max(h, ch)))
        padded.paste(image, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
        image, (w, h) = padded, padded.size
    top, left = prep.crop_box(h, w)
    return image.crop((left, top, left + cw, top + ch))


@lru_cache(maxsize=16)
def normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(C, 256) float32: each uint8 level of each channel scaled to [0, 1] and normalised,
    in the float32 arithmetic the reference libraries use per pixel."""
    levels = np.arange(256, dtype=np.float32) * np.float32(1 / 255)
    table = (levels[:, None] - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(table.T, dtype=np.float32)


def normalize(pixels: np.ndarray, prep: Preprocess) -> np.ndarray:
    """HxWxC (or HxW grayscale) uint8 to CxHxW float32, scaled to [0, 1] and normalised
    per channel. Looked up per level in `normalize_table`: the same numbers as computing
    each pixel, in a sixth of the time."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    table = normalize_table(tuple(prep.mean), tuple(prep.std))
    planes = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    channels = max(len(table), len(planes))
    out = np.empty((channels, *planes.shape[1:]), np.float32)
    for c in range(channels):
        np.take(table[c % len(table)], planes[c % len(planes)], out=out[c])
    return out


def crop_pixels(image: Image.Image, prep: Preprocess) -> np.ndarray:
    """Resized and centre-cropped uint8 pixels, (H, W, C): RGB, or grayscale ("L", one
    channel) for a model whose preprocessing has one mean. What a `frames` model takes."""
    mode = "L" if len(prep.mean) == 1 else "RGB"
    pixels = np.asarray(center_crop(resize_for(image.convert(mode), prep), prep))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def preprocess_image(image: Image.Image, prep: Preprocess) -> np.ndarray:
    """One PIL image to the model's (C, H, W) float32 input."""
    return normalize(crop_pixels(image, prep), prep)


def input_from_pixels(pixels: np.ndarray, manifest: Any) -> np.ndarray:
    """Resized and cropped uint8 (H, W, C) pixels as the model described by `manifest`
    takes them, before any patchify: as they are (`frames`), float 0..255 (C, H, W)
    (`pixels`), else normalised float (C, H, W)."""
    if manifest.input == "frames":
        return pixels
    if manifest.input == "pixels":
        return np.ascontiguousarray(pixels.transpose(2, 0, 1), np.float32)
    return normalize(pixels, manifest.preprocess)


def model_input(image: Image.Image, manifest: Any) -> np.ndarray:
    """One decoded PIL image as the model described by `manifest` takes it (patch vectors
    (T, C*P*P) for a `patches` model): the one preprocessing that inference, calibration,
    evaluation and serving share."""
    from vitedge.runtime.patchify import patches_from_images

    x = input_from_pixels(crop_pixels(image, manifest.preprocess), manifest)
    if manifest.input == "patches":
        return patches_from_images(x[None], manifest.architecture.patch_size)[0]
    return x


class FastPreprocess:
    """The manifest's resize and centre crop with OpenCV on numpy RGB arrays. Not bit-exact
    with the reference libraries (OpenCV's resampling filters differ from PIL's); `vitedge
    bench` and the tests measure the effect on the logits. Normalisation is the exact
    path's."""

    CV2_FILTERS = {"nearest": "INTER_NEAREST", "bilinear": "INTER_LINEAR",
                   "bicubic": "INTER_CUBIC", "lanczos": "INTER_LANCZOS4"}

    def __init__(self, prep: Preprocess):
        from vitedge.errors import require

        self.cv2 = require("cv2", "video", "fast (OpenCV) preprocessing")
        self.prep = prep
        self.flag = getattr(self.cv2, self.CV2_FILTERS[prep.interpolation])
        self.gray = len(prep.mean) == 1

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


class Preprocessor:
    """Stage 2, preprocess: a decoded frame to what the model takes, by the manifest, on
    the exact (PIL) or the fast (OpenCV) path; both crop first, then normalise."""

    def __init__(self, manifest: Any, fast: bool = False):
        self.manifest = manifest
        self.fast = FastPreprocess(manifest.preprocess) if fast else None

    def pixels(self, decoded: Image.Image | np.ndarray) -> np.ndarray:
        """The resized and cropped uint8 (H, W, C) frame the model sees."""
        if self.fast is not None:
            return self.fast.crop(np.asarray(decoded))
        if not isinstance(decoded, Image.Image):
            decoded = Image.fromarray(decoded)
        return crop_pixels(decoded, self.manifest.preprocess)

    def __call__(self, decoded: Image.Image | np.ndarray) -> np.ndarray:
        """Float (C, H, W), or for a `frames` model uint8 (H, W, C) (the graph normalises)."""
        return input_from_pixels(self.pixels(decoded), self.manifest)
