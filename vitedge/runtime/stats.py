"""Stage timings of the pipeline: the latest calls' times per stage in fixed ring buffers
(a camera loop runs for days; memory does not grow) and their summary statistics (mean,
p50, p90, p99, max), which the pipeline, the camera loop, bench and serve report."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass
class Stats:
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    n: int

    @classmethod
    def of(cls, samples: Iterable[float]) -> Stats:
        a = np.fromiter(samples, np.float64)
        if not a.size:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0)
        p50, p90, p99 = np.percentile(a, PERCENTILES)
        return cls(float(a.mean()), float(p50), float(p90), float(p99), float(a.max()), len(a))



KEEP_SAMPLES = 10_000
"""Stage times kept per stage (the latest calls): a camera loop runs for days."""


class StageTimes:
    """The latest calls' stage times (ms), for percentiles, in ring buffers allocated
    once: memory does not grow however long the pipeline runs."""

    def __init__(self) -> None:
        self.keep = KEEP_SAMPLES
        self._rings: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}
        self._lock = threading.Lock()
        self.frames = 0

    def add(self, timings: dict[str, float], frames: int) -> None:
        with self._lock:
            for stage, ms in timings.items():
                ring = self._rings.get(stage)
                if ring is None:
                    ring = self._rings[stage] = np.zeros(self.keep, np.float64)
                    self._count[stage] = 0
                ring[self._count[stage] % self.keep] = ms
                self._count[stage] += 1
            self.frames += frames

    @property
    def samples(self) -> dict[str, np.ndarray]:
        """Each stage's kept times, oldest first."""
        out = {}
        for stage, ring in self._rings.items():
            n = self._count[stage]
            out[stage] = ring[:n].copy() if n <= self.keep else np.roll(ring, -(n % self.keep))
        return out
