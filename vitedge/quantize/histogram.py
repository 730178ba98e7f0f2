"""Streamed activation statistics and the ways to turn them into an INT8 range (amax).

A `TensorHistogram` holds |x| in fixed-width bins that grow as larger values arrive, so
batches are merged one by one and memory does not depend on the number of images. The
calibrators are the usual four: min-max (exact), percentile, entropy (TensorRT's KL
search) and MSE.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 2048
MAX_BINS = 8 * DEFAULT_BINS
INT8_MAX = 127
METHODS = ("entropy", "percentile", "minmax", "mse")


class TensorHistogram:
    """|x| histogram with bins [i*width, (i+1)*width); the bin width doubles (adjacent
    bins merged) rather than let the number of bins pass MAX_BINS."""

    def __init__(self, bins: int = DEFAULT_BINS):
        self.initial_bins = bins
        self.counts = np.zeros(0, np.int64)
        self.width = 0.0
        self.amax = 0.0
        self.total = 0

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, np.float32)).ravel()
        if a.size == 0:
            return
        batch_max = float(a.max())
        if not np.isfinite(batch_max):
            a = a[np.isfinite(a)]
            batch_max = float(a.max()) if a.size else 0.0
        self.total += a.size
        if self.width == 0.0:
            if batch_max == 0.0:
                self.counts = np.zeros(max(len(self.counts), 1), np.int64)
                self.counts[0] += a.size
                return
            self.width = batch_max / self.initial_bins
            self.counts = np.pad(self.counts, (0, self.initial_bins - len(self.counts)))
        self.amax = max(self.amax, batch_max)
        needed = int(np.floor(self.amax / self.width)) + 1
        while needed > MAX_BINS:
            if len(self.counts) % 2:
                self.counts = np.append(self.counts, 0)
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.width *= 2
            needed = int(np.floor(self.amax / self.width)) + 1
        if needed > len(self.counts):
            self.counts = np.pad(self.counts, (0, needed - len(self.counts)))
        idx = np.minimum((a * np.float32(1.0 / self.width)).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    @property
    def edges(self) -> np.ndarray:
        return np.arange(len(self.counts) + 1, dtype=np.float64) * self.width


def amax_minmax(h: TensorHistogram) -> float:
    return h.amax


def amax_percentile(h: TensorHistogram, percentile: float = 99.99) -> float:
    """The upper edge of the bin where the cumulative share of |x| reaches `percentile`."""
    if h.total == 0 or h.width == 0.0:
        return h.amax
    cdf = np.cumsum(h.counts) / h.total
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(h.amax, (i + 1) * h.width))


def amax_mse(h: TensorHistogram, start_bin: int = 128, stride: int = 8) -> float:
    """The clipping range that minimises the expected squared error of int8 rounding and
    clipping over the histogram (bin centres stand for their values)."""
    if h.width == 0.0 or h.total == 0:
        return h.amax
    centres = (np.arange(len(h.counts)) + 0.5) * h.width
    weights = h.counts.astype(np.float64)
    best, best_err = h.amax, np.inf
    for stop in range(min(start_bin, len(h.counts)), len(h.counts) + 1, stride):
        amax = stop * h.width
        scale = amax / INT8_MAX
        q = np.clip(np.round(centres / scale), -INT8_MAX, INT8_MAX) * scale
        err = float(np.dot(weights, (centres - q) ** 2))
        if err < best_err:
            best, best_err = amax, err
    return float(best)


def amax_entropy(h: TensorHistogram, num_quant_bins: int = 128, stride: int = 2,
                 start_bin: int = 128) -> float:
    """TensorRT's entropy calibration: the threshold whose 128-level quantised histogram
    is closest, in KL divergence, to the clipped reference histogram (searched over at
    most DEFAULT_BINS bins, every `stride`-th)."""
    counts = h.counts.astype(np.float64)
    width = h.width
    if len(counts) > DEFAULT_BINS:
        factor = -(-len(counts) // DEFAULT_BINS)
        counts = np.pad(counts, (0, -len(counts) % factor)).reshape(-1, factor).sum(axis=1)
        width *= factor
    n = len(counts)
    if width == 0.0 or n <= num_quant_bins or counts.sum() == 0:
        return h.amax
    best_i, best_kl = n, np.inf
    for i in range(max(start_bin, num_quant_bins), n + 1, stride):
        p = counts[:i].copy()
        p[-1] += counts[i:].sum()
        nonzero = counts[:i] != 0
        # merge the first i bins into 128 levels, then spread each level back over the
        # bins of its group that were non-zero
        groups = np.minimum((np.arange(i) * num_quant_bins) // i, num_quant_bins - 1)
        level_sum = np.bincount(groups, weights=counts[:i], minlength=num_quant_bins)
        level_nonzero = np.bincount(groups, weights=nonzero, minlength=num_quant_bins)
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.where(nonzero, level_sum[groups] / level_nonzero[groups], 0.0)
        kl = _kl(p, q)
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(min(h.amax, best_i * width))


def _kl(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) with empty bins given `eps` and the rest renormalised (as MXNet and TVM
    smooth), so one empty bin beside the clipped mass does not rule a threshold out."""
    if p.sum() <= 0 or q.sum() <= 0:
        return np.inf
    p, q = _smooth(p, eps), _smooth(q, eps)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


def _smooth(d: np.ndarray, eps: float) -> np.ndarray:
    d = d / d.sum() + eps * (d == 0)
    return d / d.sum()


def amax_from_histogram(h: TensorHistogram, method: str, percentile: float = 99.99) -> float:
    if method == "minmax":
        return amax_minmax(h)
    if method == "percentile":
        return amax_percentile(h, percentile)
    if method == "mse":
        return amax_mse(h)
    if method == "entropy":
        return amax_entropy(h)
    raise ValueError(f"unknown calibration method {method!r} ({', '.join(METHODS)})")
