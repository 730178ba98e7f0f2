"""Pillow's resize and centre crop, the same bytes, from a small C library (native/resample.c,
built with the package where a C compiler is): the exact frame path without Pillow's
per-pixel loops. Pillow's integer coefficients are read from Pillow itself (`coefficients`),
so only the adding up is vitedge's; where the library is not built, or a case is not
covered here (NEAREST, a side over `PROBE_MOST`, zero padding), the caller uses Pillow."""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PROBE_MOST = 4096
"""Source sides above this are left to Pillow (the coefficient probe is a square of that
side)."""
FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
           "lanczos": Image.Resampling.LANCZOS}
"""The filters resampled here: Pillow's convolutions (NEAREST is an index lookup)."""
OFF = "VITEDGE_NATIVE_RESAMPLE"
"""Set to 0 to resize with Pillow only (the library is then not loaded)."""


@lru_cache(maxsize=1)
def library() -> Any:
    """The C library built beside this module (`_resample` + the interpreter's extension
    suffix), or None: not built (no C compiler at install), or turned off by
    VITEDGE_NATIVE_RESAMPLE=0."""
    if os.environ.get(OFF, "1") == "0":
        return None
    here = Path(__file__).parent / "native"  # not a package: no module to import
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = here / f"_resample{suffix}"
        if path.is_file():
            try:
                lib = ctypes.CDLL(str(path))
                lines, transpose = lib.vitedge_lines, lib.vitedge_transpose
            except (OSError, AttributeError):  # not loadable here, or not this library
                return None
            u8, i32, size = ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long
            lines.argtypes = [u8, size, u8, size, ctypes.c_int, ctypes.c_int, i32, i32, i32,
                              ctypes.c_int]
            lines.restype = ctypes.c_int
            transpose.argtypes = [u8, size, u8, size, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_int]
            transpose.restype = None
            return lib
    return None


def exact_resampler() -> str:
    """Which resampler the exact frame path runs here: "C" (the library is loaded) or
    "Pillow" (not built, or VITEDGE_NATIVE_RESAMPLE=0); the bytes are the same."""
    return "C" if library() is not None else "Pillow"


def resampler_check() -> Any:
    """`vitedge doctor`'s line on the exact path's resampler, and how to get the C one."""
    from vitedge.backends.base import Check

    if library() is not None:
        return Check("exact resize", True, "C resampler (vitedge/runtime/native), Pillow's bytes")
    return Check("exact resize", False, "Pillow only: the C resampler is not built (no C "
                 "compiler when vitedge was installed) or is off (VITEDGE_NATIVE_RESAMPLE=0); "
                 "the same bytes, about 1 ms more a 640x480 frame on 2 cores",
                 f"install gcc (or cc), then pip install --force-reinstall --no-deps vitedge; "
                 f"unset {OFF}")


@lru_cache(maxsize=8)
def coefficients(size_in: int, size_out: int, resample: int,
                 box: tuple[int, int] | None = None) -> np.ndarray:
    """Pillow's integer coefficients of a `size_in` -> `size_out` resize (of the source
    lines `box` alone, as Pillow's resize `box` sets them), read from Pillow: a 32-bit image
    whose row j is 2^22 at column j alone resizes, row for row, to source line j's
    coefficient in every output line (size_in, size_out), rounded as Pillow rounds its 8-bit
    coefficients (2^22 is its fixed-point one, and the products are exact); both axes share
    them."""
    probe = Image.fromarray(np.eye(size_in, dtype=np.int32) * (1 << 22))
    start, stop = box or (0, size_in)
    return np.asarray(probe.resize((size_out, size_in), resample,
                                   box=(start, 0, stop, size_in)))


@lru_cache(maxsize=64)
def taps(size_in: int, size_out: int, keep: tuple[int, int], interpolation: str
         ) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(start, stop, first, count, coef) of output lines `keep`: the source lines
    [start, stop) they read; per kept line the first of its source lines (from start),
    how many, and their coefficients (kept lines x the most taps, zero padded)."""
    weights = coefficients(size_in, size_out, FILTERS[interpolation])[:, keep[0]:keep[1]]
    used = weights != 0
    if not used.any(axis=0).all():  # a line no source line reaches: cannot happen
        raise ValueError(f"a {size_in} -> {size_out} resize has an output line of no taps")
    first = used.argmax(axis=0)
    last = size_in - 1 - used[::-1].argmax(axis=0)
    count = last - first + 1
    coef = np.zeros((keep[1] - keep[0], int(count.max())), np.int32)
    for j, (f, n) in enumerate(zip(first, count, strict=True)):
        coef[j, :n] = weights[f:f + n, j]
    start, stop = int(first.min()), int(last.max()) + 1
    return start, stop, (first - start).astype(np.int32), count.astype(np.int32), coef


def _lines(lib: Any, source: np.ndarray, out: np.ndarray, tapped: tuple) -> None:
    """out's lines (axis 0) from source's (axis 0), each line all the rest of its axes."""
    _, _, first, count, coef = tapped
    width = int(np.prod(source.shape[1:]))
    if lib.vitedge_lines(source.ctypes.data, source.strides[0], out.ctypes.data,
                         out.strides[0], width, out.shape[0], first.ctypes.data,
                         count.ctypes.data, coef.ctypes.data, coef.shape[1]) != 0:
        raise MemoryError("resampling: out of memory")


def _transposed(lib: Any, source: np.ndarray, swap: bool = False) -> np.ndarray:
    """(rows, cols, px) -> (cols, rows, px), contiguous, the first and third channels
    exchanged with `swap`; source's pixels contiguous."""
    rows, cols, px = source.shape
    out = np.empty((cols, rows, px), np.uint8)
    lib.vitedge_transpose(source.ctypes.data, source.strides[0], out.ctypes.data,
                          out.strides[0], rows, cols, px, int(swap and px == 3))
    return out


def resized_crop(pixels: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int],
                 interpolation: str, horizontal_first: bool, swap: bool = False
                 ) -> np.ndarray | None:
    """Pillow's `Image.fromarray(pixels).resize(size, filter).crop(box)` as (H, W, C)
    uint8, computing only the kept pixels; None where the library is not there or the case
    is Pillow's (see the module's docstring). `pixels` is (H, W, C), C 1 or 3, its pixels
    contiguous; `horizontal_first` is the pass order this Pillow uses at these sizes.
    `swap`: BGR pixels, RGB out (exchanged while a transpose copies them anyway; each
    channel is resampled alone, so the order does not change the bytes)."""
    lib = library()
    h, w, px = pixels.shape
    rw, rh = size
    left, top, right, bottom = box
    if (lib is None or interpolation not in FILTERS or px not in (1, 3)
            or pixels.strides[1] != px or (px > 1 and pixels.strides[2] != 1)
            or max(w, h) > PROBE_MOST
            or not (0 <= left < right <= rw and 0 <= top < bottom <= rh)):
        return None
    ch, cw = bottom - top, right - left
    across = taps(w, rw, (left, right), interpolation) if rw != w else None
    down = taps(h, rh, (top, bottom), interpolation) if rh != h else None
    r0, r1 = (down[0], down[1]) if down else (top, bottom)
    c0, c1 = (across[0], across[1]) if across else (left, right)
    source = pixels[r0:r1, c0:c1]
    out = np.empty((ch, cw, px), np.uint8)
    if down is not None and across is None:
        _lines(lib, source, out, down)
    elif across is None:
        out[...] = source
    elif down is None or horizontal_first:
        # the horizontal pass as lines of the transposed source, then (if the height
        # changes) the vertical pass on its rows
        wide = np.empty((cw, r1 - r0, px), np.uint8)
        _lines(lib, _transposed(lib, source, swap), wide, across)
        if down is None:
            return _transposed(lib, wide)
        _lines(lib, _transposed(lib, wide), out, down)
        return out
    else:
        tall = np.empty((ch, c1 - c0, px), np.uint8)
        _lines(lib, source, tall, down)
        narrow = np.empty((cw, ch, px), np.uint8)
        _lines(lib, _transposed(lib, tall), narrow, across)
        return _transposed(lib, narrow, swap)
    return np.ascontiguousarray(out[:, :, ::-1]) if swap and px == 3 else out
