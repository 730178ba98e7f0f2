"""Decoded image to model input, exactly as the manifest says (PIL path: the reference
libraries' eval transforms). Used by calibration, verification and inference alike, so
every stage sees the same pixels."""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitedge.errors import VitedgeError
from vitedge.manifest import Preprocess
from vitedge.runtime import resample
from vitedge.runtime.resample import PROBE_MOST, coefficients

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


def resized_size(width: int, height: int, prep: Preprocess) -> tuple[int, int]:
    """(width, height) an image of that size is resized to, before the centre crop."""
    if prep.resize_mode == "shorter":
        short = prep.resize[0]
        return (short, int(short * height / width)) if width <= height else (
            int(short * width / height), short)
    return prep.resize[1], prep.resize[0]


def resize_for(image: Image.Image, prep: Preprocess) -> Image.Image:
    size = resized_size(*image.size, prep)
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


# --- the exact resize and crop, computing only what the crop keeps ------------------------
#
# Pillow resamples in two separable passes, each rounding to uint8, with coefficients that
# depend only on (size in, size out, filter); a pass is skipped when its side keeps its size
# (libImaging/Resample.c). Pillow 13 runs the vertical pass first when the height shrinks by
# more than twice as many pixels as the width, earlier versions always the horizontal one
# first; NEAREST is an index lookup per axis (Geometry.c, ImagingScaleAffine), the same in
# either order. So the first pass, run on only the source lines the kept output lines read,
# gives those lines of Pillow's intermediate image, and the second pass, run on only the kept
# lines, the kept pixels: the same bytes as resizing the whole image and cropping, less
# work (at 640x480 -> 330x248 -> 224 bicubic, 13 % less), in strips that run on two cores
# (Pillow releases the GIL while it resamples). `resize(box=...)` is not used: its float
# box moves the filter centres by a rounding error, changing some pixels by a level.

SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
"""Pillow's filter support radius per interpolation, in source pixels at scale 1."""
MIN_STRIP_PIXELS = 8192
"""Output pixels below which a strip is not cut smaller (handing a strip to another thread
costs tens of microseconds)."""
STRIPS_PER_THREAD = 2
"""Strips per thread and pass: more cost about 40 us each (a crop, Pillow's coefficients),
fewer leave a frame waiting longer on a helper thread the machine preempts."""


def needed_span(size_in: int, size_out: int, first: int, count: int,
                interpolation: str) -> tuple[int, int]:
    """[start, stop) of the source lines that output lines `first .. first + count` of a
    `size_in` -> `size_out` resize read: Pillow's bounds (precompute_coeffs), widened by one
    line on each side."""
    scale = size_in / size_out
    support = SUPPORT[interpolation] * max(scale, 1.0)
    start = int((first + 0.5) * scale - support + 0.5) - 1
    stop = int((first + count - 0.5) * scale + support + 0.5) + 1
    return max(start, 0), min(stop, size_in)


def _always_horizontal_first(w: int, h: int, rw: int, rh: int) -> bool:
    return True


def _pillow13_horizontal_first(w: int, h: int, rw: int, rh: int) -> bool:
    return not (h - rh > 0 and h - rh > (w - rw) * 2)


@lru_cache(maxsize=1)
def pass_order() -> Any:
    """Which pass this Pillow runs first, as a function (w, h, resized w, resized h) ->
    horizontal first; None when neither known rule matches what it does (the plain path is
    used then). Found once by resizing small random images where the rules differ."""
    rng = np.random.default_rng(0)
    probes = [((64, 96), (48, 30)), ((50, 80), (40, 59)), ((50, 80), (40, 60)),
              ((20, 60), (30, 40)), ((96, 64), (40, 50))]
    rules = [_pillow13_horizontal_first, _always_horizontal_first]
    for (w, h), (rw, rh) in probes:
        image = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        whole = image.resize((rw, rh), Image.Resampling.BILINEAR).tobytes()
        hv = image.resize((rw, h), Image.Resampling.BILINEAR).resize(
            (rw, rh), Image.Resampling.BILINEAR).tobytes()
        vh = image.resize((w, rh), Image.Resampling.BILINEAR).resize(
            (rw, rh), Image.Resampling.BILINEAR).tobytes()
        rules = [r for r in rules if whole == (hv if r(w, h, rw, rh) else vh)]
    return rules[0] if rules else None


def _splits(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    edges = [start + (stop - start) * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def _in_strips(work: Any, start: int, stop: int, pixels_per_line: int) -> None:
    """work(a, b) over [start, stop), cut in `STRIPS_PER_THREAD` strips per thread where
    there are several (`preprocess_threads()`, the calling one included); see `_run_strips`."""
    threads = preprocess_threads()
    parts = 1 if threads == 1 else min(threads * STRIPS_PER_THREAD, max(
        1, (stop - start) * pixels_per_line // MIN_STRIP_PIXELS))
    _run_strips(work, _splits(start, stop, parts))


def _run_strips(work: Any, strips: list[tuple[int, int]]) -> None:
    """work(a, b) for every strip, on `preprocess_threads()` threads (the calling one
    included), each thread taking the next strip left until none is: on a busy machine, a
    helper thread that is not scheduled in time leaves its strips to the others, so a frame
    waits at most for the one strip a preempted helper holds. An error in any strip is
    raised here."""
    threads = preprocess_threads()
    if threads == 1 or len(strips) == 1:
        for a, b in strips:
            work(a, b)
        return
    lock = threading.Lock()
    left = iter(range(len(strips)))
    done = [threading.Event() for _ in strips]
    errors: list[BaseException] = []

    def take_strips() -> None:
        while True:
            with lock:
                i = next(left, None)
            if i is None:
                return
            try:
                work(*strips[i])
            except BaseException as exc:  # noqa: BLE001 - raised on the calling thread
                errors.append(exc)
            finally:
                done[i].set()

    for _ in range(min(threads, len(strips)) - 1):
        _pool().submit(take_strips)
    take_strips()
    for event in done:
        event.wait()
    if errors:
        raise errors[0]


def _one_strip(work: Any, start: int, stop: int, pixels_per_line: int) -> None:
    work(start, stop)


@lru_cache(maxsize=1)
def preprocess_threads() -> int:
    """Threads one exact resize runs on: two where the process may use two cores or more
    (a pass splits well in two; more strips gain little on a 224 crop), else one."""
    from vitedge.runtime.scheduler import available_cores

    return min(2, available_cores())


@lru_cache(maxsize=1)
def _pool() -> Any:
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max(1, preprocess_threads() - 1),
                              thread_name_prefix="vitedge-resize")


def _horizontal(source: Image.Image, width: int, rows: tuple[int, int],
                keep: tuple[int, int], interpolation: str, out: Image.Image, shift: int,
                strips: Any = _in_strips) -> None:
    """Horizontal-only resize of `source`'s `rows` to `width`, columns `keep` of it pasted
    into `out` at (0, row - shift); only the window of columns `_window` allows, rows cut
    by `strips`."""
    o0, o1, i0, i1 = _window(source.width, width, keep, interpolation)
    pil_filter = PIL_FILTERS[interpolation]

    def strip(a: int, b: int) -> None:
        piece = source.crop((i0, a, i1, b)).resize((o1 - o0, b - a), pil_filter)
        out.paste(piece.crop((keep[0] - o0, 0, keep[1] - o0, b - a)), (0, a - shift))

    strips(strip, *rows, o1 - o0)


def _vertical(source: Image.Image, height: int, columns: tuple[int, int],
              keep: tuple[int, int], interpolation: str, out: Image.Image, shift: int,
              strips: Any = _in_strips) -> None:
    """Vertical-only resize of `source`'s `columns` to `height`, rows `keep` of it pasted
    into `out` at (column - shift, 0); only the window of rows `_window` allows, columns
    cut by `strips`."""
    o0, o1, i0, i1 = _window(source.height, height, keep, interpolation)
    pil_filter = PIL_FILTERS[interpolation]

    def strip(a: int, b: int) -> None:
        piece = source.crop((a, i0, b, i1)).resize((b - a, o1 - o0), pil_filter)
        out.paste(piece.crop((0, keep[0] - o0, b - a, keep[1] - o0)), (a - shift, 0))

    strips(strip, *columns, o1 - o0)


# A resize from `size_in` to `size_out` pixels repeats its filter every `size_out / g`
# output pixels (`size_in / g` source pixels, g their gcd). So the output columns
# [o0, o1), both multiples of that period, are those a resize of source columns [i0, i1)
# alone (the same multiples of the source period) gives: the same scale, the same filter
# centres relative to the window. Whether Pillow's coefficients come out the same to the
# last bit (its centres are rounded doubles, and a window clips the filter at its edges)
# is not assumed but read from Pillow itself, once per size (`_window_is_exact`).

def _aligned_window(size_in: int, size_out: int, keep: tuple[int, int], interpolation: str
                    ) -> tuple[int, int, int, int]:
    """(o0, o1, i0, i1): the fewest whole periods of output lines that hold the kept ones
    and whose source lines [i0, i1) hold every line the kept ones read; (0, size_out, 0,
    size_in) where that is all of them."""
    g = math.gcd(size_in, size_out)
    period, source = size_out // g, size_in // g
    s0, s1 = needed_span(size_in, size_out, keep[0], keep[1] - keep[0], interpolation)
    i0, i1 = s0 // source * source, min(-(-s1 // source) * source, size_in)
    o0, o1 = i0 // source * period, size_out if i1 == size_in else i1 // source * period
    if o1 - o0 >= size_out:
        return 0, size_out, 0, size_in
    return o0, o1, i0, i1


def _window_is_exact(size_in: int, size_out: int, window: tuple[int, int, int, int],
                     keep: tuple[int, int], pil_filter: int) -> bool:
    """Whether Pillow, resizing only the window's source lines, gives the kept output lines
    the same integer coefficients as resizing the whole side. Read from Pillow: a 32-bit
    image whose row j is 2^22 at column j alone resizes, row for row, to each source line's
    coefficient in every output line, rounded as Pillow rounds its 8-bit coefficients (2^22
    is its fixed-point one, and the products are exact); both axes share the coefficients
    (`resample.coefficients`). Source sides over `PROBE_MOST` are not probed (False)."""
    o0, o1, i0, i1 = window
    if size_in > PROBE_MOST:
        return False
    whole = coefficients(size_in, size_out, pil_filter)[:, keep[0]:keep[1]]
    part = coefficients(i1 - i0, o1 - o0, pil_filter)[:, keep[0] - o0:keep[1] - o0]
    return (np.array_equal(whole[i0:i1], part) and not whole[:i0].any()
            and not whole[i1:].any())


@lru_cache(maxsize=64)
def _window(size_in: int, size_out: int, keep: tuple[int, int], interpolation: str
            ) -> tuple[int, int, int, int]:
    """The window one pass resizes for the kept output lines (`_aligned_window`), where
    Pillow gives it the same coefficients; else the whole side. Found once per size."""
    whole = (0, size_out, 0, size_in)
    if interpolation == "nearest":  # an index lookup, not these coefficients
        return whole
    window = _aligned_window(size_in, size_out, keep, interpolation)
    if window != whole and _window_is_exact(size_in, size_out, window, keep,
                                            PIL_FILTERS[interpolation]):
        return window
    return whole


# The first pass of a part can do better than a window: Pillow's `box` sets where the output
# lines sit in the source, and its filters still read the source past the box, so a pass
# over source lines [c0, c1) (the lines the kept outputs read, and the box) with the box
# [i0, i1) gives output lines [o0, o1) with no lines of margin to throw away. The box must
# start and end on the resize's period (its corners are float32 in Pillow, its centres
# `box start + (line + 0.5) * scale`): whether that gives the whole resize's coefficients
# to the last bit is again read from Pillow, once per size (`_boxed`).

@lru_cache(maxsize=64)
def _boxed(size_in: int, size_out: int, keep: tuple[int, int], interpolation: str
           ) -> tuple[int, int, int, int, int, int] | None:
    """(o0, o1, i0, i1, c0, c1): output lines [o0, o1) (whole periods holding the kept
    ones) are source lines [c0, c1) resized with the box [i0, i1) (both in the source's
    lines), the kept ones with the whole resize's coefficients; None where Pillow gives
    other coefficients (then the window is used). Found once per size."""
    if interpolation == "nearest" or size_in > PROBE_MOST:
        return None
    g = math.gcd(size_in, size_out)
    period, source = size_out // g, size_in // g
    o0 = keep[0] // period * period
    o1 = min(-(-keep[1] // period) * period, size_out)
    i0, i1 = o0 // period * source, size_in if o1 == size_out else o1 // period * source
    c0, c1 = needed_span(size_in, size_out, keep[0], keep[1] - keep[0], interpolation)
    c0, c1 = min(c0, i0), max(c1, i1)
    pil_filter = PIL_FILTERS[interpolation]
    whole = coefficients(size_in, size_out, pil_filter)[:, keep[0]:keep[1]]
    part = coefficients(c1 - c0, o1 - o0, pil_filter, (i0 - c0, i1 - c0))
    part = part[:, keep[0] - o0:keep[1] - o0]
    exact = (np.array_equal(whole[c0:c1], part) and not whole[:c0].any()
             and not whole[c1:].any())
    return (o0, o1, i0, i1, c0, c1) if exact else None


def _boxed_parts(size_in: int, size_out: int, keep: tuple[int, int], interpolation: str
                 ) -> list[tuple[int, int]] | None:
    """The kept lines `keep` of the first pass cut in parts that each run both passes on
    their own (`STRIPS_PER_THREAD` per thread of `preprocess_threads()`), at multiples of
    the resize's period so that no two parts' boxes (`_boxed`) share an output line: one
    hand-over to the helper threads a frame. None where Pillow's box is not exact at this
    size, or where several threads would get one part only (a period too long to cut:
    the passes are then cut in strips one after the other)."""
    threads = preprocess_threads()
    period = size_out // math.gcd(size_in, size_out)
    first, last = keep[0] // period + 1, -(-keep[1] // period) - 1  # interior boundaries
    if threads == 1:
        parts = [keep]
    elif last < first:
        return None
    else:
        wanted = min(threads * STRIPS_PER_THREAD, last - first + 2)
        cuts = sorted({min(max(round((keep[0] + (keep[1] - keep[0]) * i / wanted) / period),
                                   first), last) * period for i in range(1, wanted)})
        edges = [keep[0], *cuts, keep[1]]
        parts = [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]
    if any(_boxed(size_in, size_out, part, interpolation) is None for part in parts):
        return None
    return parts


def _first_pass(image: Image.Image, horizontal: bool, size_out: int, part: tuple[int, int],
                span: tuple[int, int], interpolation: str) -> Image.Image:
    """Lines `part` of resizing `image`'s width (`horizontal`), else its height, to
    `size_out`, over its lines `span` across that axis: Pillow's box on whole periods
    (`_boxed`, which `_boxed_parts` found exact for the part), the part's lines kept."""
    boxed = _boxed(image.width if horizontal else image.height, size_out, part, interpolation)
    assert boxed is not None  # _boxed_parts checked every part
    o0, o1, i0, i1, c0, c1 = boxed
    (a, b), (s0, s1), pil_filter = part, span, PIL_FILTERS[interpolation]
    if horizontal:
        piece = image.crop((c0, s0, c1, s1)).resize(
            (o1 - o0, s1 - s0), pil_filter, box=(i0 - c0, 0, i1 - c0, s1 - s0))
        return piece.crop((a - o0, 0, b - o0, s1 - s0))
    piece = image.crop((s0, c0, s1, c1)).resize(
        (s1 - s0, o1 - o0), pil_filter, box=(0, i0 - c0, s1 - s0, i1 - c0))
    return piece.crop((0, a - o0, s1 - s0, b - o0))


def resized_crop(image: Image.Image, prep: Preprocess) -> Image.Image:
    """`center_crop(resize_for(image, prep), prep)`, the same bytes, computing only the
    pixels the crop keeps (see above). `image` is "L" or "RGB"."""
    w, h = image.size
    rw, rh = resized_size(w, h, prep)
    ch, cw = prep.crop
    order = pass_order() if prep.interpolation != "nearest" else _always_horizontal_first
    if (rw < cw or rh < ch or (order is None and rw != w and rh != h)
            or ((rw, rh) == (cw, ch) and preprocess_threads() == 1)):
        # zero padding (a small image: the plain path is cheap), an unknown Pillow, or
        # nothing to leave out and no second core: Pillow's own resize
        return center_crop(resize_for(image, prep), prep)
    top, left = prep.crop_box(rh, rw)
    cols, rows = (left, left + cw), (top, top + ch)
    if (rw, rh) == (w, h):
        return image.crop((left, top, left + cw, top + ch))
    image.load()  # a lazily decoded file is read once, here, not by two strips at once
    out = Image.new(image.mode, (cw, ch))
    if rh == h:
        _horizontal(image, rw, rows, cols, prep.interpolation, out, top)
    elif rw == w:
        _vertical(image, rh, cols, rows, prep.interpolation, out, left)
    elif order(w, h, rw, rh):
        row_span = needed_span(h, rh, top, ch, prep.interpolation)
        parts = _boxed_parts(w, rw, cols, prep.interpolation)
        if parts:
            def columns(a: int, b: int) -> None:
                # kept columns [a, b) through both passes: the boxed first pass over the
                # rows the kept rows read, then the second over these columns alone
                tall = Image.new(image.mode, (b - a, h))  # rows left blank are never read
                tall.paste(_first_pass(image, True, rw, (a, b), row_span, prep.interpolation),
                           (0, row_span[0]))
                _vertical(tall, rh, (0, b - a), rows, prep.interpolation, out, left - a,
                          _one_strip)

            _run_strips(columns, parts)
            return out
        # the source rows the kept rows read, at their rows of an image as tall as the
        # source (the rows left blank are never read)
        tall = Image.new(image.mode, (cw, h))
        _horizontal(image, rw, row_span, cols, prep.interpolation, tall, 0)
        _vertical(tall, rh, (0, cw), rows, prep.interpolation, out, 0)
    else:
        col_span = needed_span(w, rw, left, cw, prep.interpolation)
        parts = _boxed_parts(h, rh, rows, prep.interpolation)
        if parts:
            def lines(a: int, b: int) -> None:
                wide = Image.new(image.mode, (w, b - a))
                wide.paste(_first_pass(image, False, rh, (a, b), col_span, prep.interpolation),
                           (col_span[0], 0))
                _horizontal(wide, rw, (0, b - a), cols, prep.interpolation, out, top - a,
                            _one_strip)

            _run_strips(lines, parts)
            return out
        wide = Image.new(image.mode, (w, ch))
        _vertical(image, rh, col_span, rows, prep.interpolation, wide, 0)
        _horizontal(wide, rw, (0, ch), cols, prep.interpolation, out, 0)
    return out


def normalize(pixels: np.ndarray, prep: Preprocess) -> np.ndarray:
    """HxWxC (or HxW grayscale) uint8 to CxHxW float32, scaled to [0, 1] and normalised
    per channel: (x * float32(1/255) - mean) / std, in float32, one channel plane at a time
    into the output (the reference libraries' arithmetic, so the same numbers; a third of
    the time of looking each level up in a table, which widens every index to 64 bits)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    mean, std = np.asarray(prep.mean, np.float32), np.asarray(prep.std, np.float32)
    channels = max(len(mean), pixels.shape[2])
    out = np.empty((channels, *pixels.shape[:2]), np.float32)
    for c in range(channels):
        plane = out[c]
        np.multiply(pixels[:, :, c % pixels.shape[2]], np.float32(1 / 255), out=plane,
                    dtype=np.float32)
        np.subtract(plane, mean[c % len(mean)], out=plane)
        np.divide(plane, std[c % len(std)], out=plane)
    return out


class FramePixels:
    """A camera's frame as it came, (H, W, 3) uint8 in `color` order ("bgr" or "rgb"): the
    native exact path (runtime/resample.py) resizes the array as it is and puts the crop's
    channels in RGB order, with no PIL image of the whole frame; `image()` is the RGB image
    Pillow's path takes."""

    def __init__(self, array: np.ndarray, color: str):
        self.array, self.color = array, color

    def image(self) -> Image.Image:
        h, w = self.array.shape[:2]
        raw = "BGR" if self.color == "bgr" else "RGB"  # PIL swaps while it copies
        return Image.frombuffer("RGB", (w, h), np.ascontiguousarray(self.array), "raw", raw,
                                0, 1)


def native_crop(pixels: np.ndarray, prep: Preprocess, bgr: bool = False) -> np.ndarray | None:
    """`resized_crop`'s bytes from an (H, W, C) array by the C resampler (from BGR pixels to
    RGB ones with `bgr`); None where it is not built or the case is Pillow's (zero padding,
    NEAREST, an unknown Pillow)."""
    if resample.library() is None:
        return None
    h, w = pixels.shape[:2]
    rw, rh = resized_size(w, h, prep)
    ch, cw = prep.crop
    order = pass_order()
    if rw < cw or rh < ch or (order is None and rw != w and rh != h):
        return None
    top, left = prep.crop_box(rh, rw)
    return resample.resized_crop(pixels, (rw, rh), (left, top, left + cw, top + ch),
                                 prep.interpolation, order is None or order(w, h, rw, rh), bgr)


def _native_may_cover(size: tuple[int, int], prep: Preprocess) -> bool:
    """Whether the C resampler is loaded and may take an image of this size: only then is a
    PIL image copied into an array for it."""
    return (resample.library() is not None and max(size) <= resample.PROBE_MOST
            and prep.interpolation in resample.FILTERS)


def crop_pixels(image: Image.Image | FramePixels, prep: Preprocess) -> np.ndarray:
    """Resized and centre-cropped uint8 pixels, (H, W, C): RGB, or grayscale ("L", one
    channel) for a model whose preprocessing has one mean. What a `frames` model takes.
    By the C resampler where it is built (the same bytes), else by Pillow."""
    mode = "L" if len(prep.mean) == 1 else "RGB"
    if isinstance(image, FramePixels):
        if mode == "RGB" and (pixels := native_crop(image.array, prep, image.color == "bgr")
                              ) is not None:
            return pixels
        image = image.image()
    if image.mode != mode:
        image = image.convert(mode)
    if _native_may_cover(image.size, prep):
        array = np.asarray(image)
        if (pixels := native_crop(array if array.ndim == 3 else array[:, :, None], prep)
                ) is not None:
            return pixels
    pixels = np.asarray(resized_crop(image, prep))
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
        size = resized_size(w, h, p)
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

    def pixels(self, decoded: Image.Image | FramePixels | np.ndarray) -> np.ndarray:
        """The resized and cropped uint8 (H, W, C) frame the model sees."""
        if self.fast is not None:
            return self.fast.crop(decoded.array if isinstance(decoded, FramePixels)
                                  else np.asarray(decoded))
        if isinstance(decoded, np.ndarray):
            decoded = Image.fromarray(decoded)
        return crop_pixels(decoded, self.manifest.preprocess)

    def __call__(self, decoded: Image.Image | FramePixels | np.ndarray) -> np.ndarray:
        """Float (C, H, W), or for a `frames` model uint8 (H, W, C) (the graph normalises)."""
        return input_from_pixels(self.pixels(decoded), self.manifest)
