"""Streamed activation statistics and the ways to turn them into an INT8 range (amax).

A `TensorHistogram` holds |x| in fixed-width bins that grow as larger values arrive, so
batches are merged one by one and memory does not depend on the number of images. The
calibrators are the usual four: min-max (exact), percentile, entropy (TensorRT's KL
search) and MSE.
"""

from __future__ import annotations

import numpy as np

from vitedge.options import CALIBRATION_METHODS, HISTOGRAM_BINS

DEFAULT_BINS = HISTOGRAM_BINS
MAX_BINS = 8 * DEFAULT_BINS
SAMPLES_PER_BATCH = 1 << 18
"""Histogram at most this many values of a tensor per batch (a strided sample; the
maximum is always exact). 64 batches still give 16M samples, 1,600 above the 99.99th
percentile, at a fraction of the cost of binning every activation of a ViT-S."""
SAMPLE_STRIDES = (5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79)
"""Primes other than 2 and 3, so a stride never lines up with a channel count."""
INT8_MAX = 127
METHODS = CALIBRATION_METHODS


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
        flat = np.asarray(x, np.float32).ravel()
        if flat.size == 0:
            return
        batch_max = float(max(flat.max(), -flat.min()))
        if flat.size > SAMPLES_PER_BATCH:
            wanted = flat.size / SAMPLES_PER_BATCH
            step = next((p for p in SAMPLE_STRIDES if p >= wanted), SAMPLE_STRIDES[-1])
            flat = flat[self.total % step::step]
        a = np.abs(flat)
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
    candidates = np.arange(max(start_bin, num_quant_bins), n + 1, stride)
    kl = np.concatenate([_kl_at(counts, c, num_quant_bins) for c in np.array_split(
        candidates, max(1, len(candidates) // 64))])
    best = candidates[int(np.argmin(kl))]
    return float(min(h.amax, best * width))


def _kl_at(counts: np.ndarray, thresholds: np.ndarray, levels: int, eps: float = 1e-4
           ) -> np.ndarray:
    """KL(p || q) for each threshold i (bins kept): p is counts[:i] with the clipped mass
    added to its last bin; q merges the i bins into `levels` groups (bin k in group
    floor(k * levels / i)) and spreads each group's sum evenly over its non-empty bins.
    Both are smoothed as MXNet and TVM do: empty bins get `eps`, then renormalised."""
    n = len(counts)
    k = np.arange(n)
    i = thresholds[:, None]
    inside = k[None, :] < i
    nonzero = (counts > 0)[None, :] & inside
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    cum_nz = np.concatenate([[0.0], np.cumsum(counts > 0)])
    g = np.arange(levels)[None, :]
    starts = -(-(g * i) // levels)
    ends = np.minimum(-(-((g + 1) * i) // levels), i)
    level_mean = (cum[ends] - cum[starts]) / np.maximum(cum_nz[ends] - cum_nz[starts], 1)
    groups = np.minimum((k[None, :] * levels) // i, levels - 1)
    q = np.where(nonzero, np.take_along_axis(level_mean, groups, axis=1), 0.0)
    p = np.where(inside, counts[None, :], 0.0)
    p[np.arange(len(thresholds)), thresholds - 1] += cum[-1] - cum[thresholds]
    empty_q = q.sum(axis=1) == 0
    q[empty_q] = 1.0  # those thresholds are ruled out below
    p, q = _smooth_rows(p, inside, eps), _smooth_rows(q, inside, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / q), 0.0)
    return np.where(empty_q, np.inf, terms.sum(axis=1))


def _smooth_rows(d: np.ndarray, inside: np.ndarray, eps: float) -> np.ndarray:
    d = d / d.sum(axis=1, keepdims=True) + eps * ((d == 0) & inside)
    return d / d.sum(axis=1, keepdims=True)


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
