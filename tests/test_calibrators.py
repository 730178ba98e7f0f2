"""Calibrators against distributions whose answer is known by hand."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from vitedge.quantize.histogram import (
    MAX_BINS,
    TensorHistogram,
    amax_entropy,
    amax_minmax,
    amax_mse,
    amax_percentile,
)
from vitedge.quantize.table import CalibrationTable, tensorrt_cache

rng = np.random.default_rng(0)


def histogram_of(*batches: np.ndarray) -> TensorHistogram:
    h = TensorHistogram()
    for b in batches:
        h.add(b)
    return h


def test_minmax_is_the_exact_largest_magnitude_over_all_batches():
    batches = [rng.standard_normal(1000).astype(np.float32) for _ in range(5)]
    batches[3][17] = -7.25
    h = histogram_of(*batches)
    assert amax_minmax(h) == pytest.approx(7.25, abs=0)
    assert h.total == 5000


def test_percentile_matches_numpy_within_one_bin():
    x = rng.uniform(-1, 1, 200_000).astype(np.float32)
    h = histogram_of(*np.split(x, 4))
    for p in (50.0, 99.0, 99.99):
        expected = np.percentile(np.abs(x), p)
        assert abs(amax_percentile(h, p) - expected) <= 2 * h.width


def test_streamed_histogram_does_not_depend_on_batch_order():
    small = rng.uniform(0, 1, 10_000).astype(np.float32)
    large = rng.uniform(0, 50, 10_000).astype(np.float32)
    a, b = histogram_of(small, large), histogram_of(large, small)
    assert a.total == b.total == 20_000
    assert len(a.counts) <= MAX_BINS
    # a grows from narrow bins, b starts wide: their percentiles agree to b's bin width
    assert abs(amax_percentile(a, 99.0) - amax_percentile(b, 99.0)) <= 2 * max(a.width, b.width)


def test_growth_past_the_bin_limit_merges_bins_and_keeps_counts():
    h = histogram_of(np.array([1e-3], np.float32), rng.uniform(0, 1e3, 1000).astype(np.float32))
    assert len(h.counts) <= MAX_BINS
    assert int(h.counts.sum()) == h.total == 1001


def test_entropy_clips_a_rare_outlier_and_keeps_a_uniform_range():
    uniform = histogram_of(rng.uniform(0, 1, 100_000).astype(np.float32))
    assert amax_entropy(uniform) == pytest.approx(1.0, abs=0.02)
    body = rng.standard_normal(100_000).astype(np.float32)
    with_outlier = histogram_of(np.concatenate([body, np.array([100.0], np.float32)]))
    assert amax_minmax(with_outlier) == 100.0
    # one value in 100k at 25 sigma is not worth most of the int8 levels
    assert 3.0 < amax_entropy(with_outlier) < 0.2 * amax_minmax(with_outlier)


def smoothed(d: list[float], eps: float = 1e-4) -> list[float]:
    """Normalise, give each empty bin eps, normalise again."""
    total = sum(d)
    d = [x / total if x else eps for x in d]
    total = sum(d)
    return [x / total for x in d]


def entropy_by_definition(counts: np.ndarray, width: float, levels: int = 128) -> float:
    """TensorRT's entropy calibration written out loop by loop, as its documentation
    describes it: for each threshold, clip into the last bin, merge into `levels` levels,
    expand back over the non-empty bins, smooth, and keep the threshold of least KL divergence."""
    best, best_kl = len(counts), float("inf")
    for i in range(levels, len(counts) + 1):
        p = [float(c) for c in counts[:i]]
        p[-1] += float(sum(counts[i:]))
        q = [0.0] * i
        for level in range(levels):
            members = [k for k in range(i) if min(k * levels // i, levels - 1) == level]
            nonzero = [k for k in members if counts[k] > 0]
            for k in nonzero:
                q[k] = sum(float(counts[m]) for m in members) / len(nonzero)
        if sum(q) == 0:
            continue
        p, q = smoothed(p), smoothed(q)
        kl = sum(pk * np.log(pk / qk) for pk, qk in zip(p, q, strict=True) if pk > 0)
        if kl < best_kl:
            best, best_kl = i, kl
    return best * width


def test_entropy_matches_the_algorithm_written_out_on_a_known_histogram():
    h = TensorHistogram()
    h.width = 0.05
    k = np.arange(400)
    h.counts = np.round(1e5 * np.exp(-k / 25.0)).astype(np.int64)  # Laplace-like, long tail
    h.counts[390] = 3  # a few outliers far out
    h.amax, h.total = 400 * h.width, int(h.counts.sum())
    expected = entropy_by_definition(h.counts, h.width)
    assert amax_entropy(h, stride=1) == pytest.approx(expected, abs=1e-9)
    assert expected < 390 * h.width  # the outliers are clipped


def test_mse_finds_the_known_optimal_clip_of_a_laplace_distribution():
    uniform = histogram_of(rng.uniform(0, 1, 100_000).astype(np.float32))
    assert amax_mse(uniform) == pytest.approx(1.0, abs=0.03)
    # Banner et al. (ACIQ, 2019): for Laplace(0, b) at 8 bits the MSE-optimal clip is 9.89 b
    laplace = histogram_of(rng.laplace(0, 1, 1_000_000).astype(np.float32))
    assert amax_mse(laplace, stride=1) == pytest.approx(9.89, rel=0.06)
    assert amax_mse(laplace) < amax_minmax(laplace)


def test_tensorrt_cache_holds_scale_as_big_endian_float_hex():
    table = CalibrationTable({"method": "entropy"}, "x", {}, {"images": {"amax": 2.54, "absmax": 3.0},
                                                               "blocks.0.norm1": {"amax": 12.7, "absmax": 20.0}})
    lines = tensorrt_cache(table).splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    parsed = {name: struct.unpack(">f", bytes.fromhex(h))[0]
              for name, h in (ln.split(": ") for ln in lines[1:])}
    assert parsed["images"] == pytest.approx(2.54 / 127)
    assert parsed["blocks.0.norm1"] == pytest.approx(0.1)
