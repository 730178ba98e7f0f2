"""`--backend auto` on the CPU: every CPU backend that can build the precision here builds
its artifact, each is verified, and the one whose runner takes the least time per image at
batch 1 on this machine is kept (measured, never guessed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import vitedge.backends as backends
from vitedge.backends.base import BuiltArtifact, median_ms
from vitedge.target import Target, load_profile, target_for

MEASURE_SECONDS = 1.0
"""Time each contender runs batch-1 inferences for, after its warm-up."""


@dataclass
class Contender:
    """One artifact a build makes: for which target, and where it goes once verified."""

    target: Target
    output: Path


@dataclass
class Candidate:
    """A contender that built and passed its verification."""

    contender: Contender
    tmp: Path
    """Where the artifact waits until it is kept."""
    built: BuiltArtifact
    verification: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measurement:
    """The race's outcome: the candidate kept, every one's median milliseconds per image,
    and why, in words."""

    kept: Candidate
    times: dict[str, float]
    reason: str
    float_parts: dict[str, str | None] = field(default_factory=dict)
    """What each candidate's float arithmetic ran in (like with like: an fp32 race is FP32)."""

    def record(self) -> dict[str, Any]:
        """What the build result and the kept artifact record of it."""
        return {"backends_ms": self.times, "kept": self.kept.contender.target.backend.name,
                "float_parts": self.float_parts}


def cpu_contenders(chosen: Target, folder: Path, stem: str) -> list[Contender]:
    """The other CPU backends that can build `chosen`'s precision here, each with its own
    default profile and artifact name."""
    found = []
    for other in backends.all_backends():
        if other is chosen.backend or not other.runs_on_cpu or other.unavailable() is not None:
            continue
        target = target_for(load_profile(other.default_profile), other, chosen.precision)
        if target.accelerates(chosen.precision):
            found.append(Contender(target, folder / f"{stem}.{chosen.precision}{other.suffix}"))
    return found


def fastest(candidates: list[Candidate], inputs: Any,
            timed: Callable[[str, Callable[[], dict[str, float]]], dict[str, float]]
            ) -> Measurement:
    """The candidate whose runner takes the least time per image at batch 1 on this machine
    (median), measured as the step `measure`."""
    x = inputs[0][:1] if inputs is not None else None
    floats: dict[str, str | None] = {}

    def measure() -> dict[str, float]:
        times: dict[str, float] = {}
        for c in candidates:
            backend = c.contender.target.backend
            with backend.load_built(c.built) as runner:
                floats[backend.name] = runner.float_parts
                sample = x if x is not None else runner.zero_input()
                times[backend.name] = median_ms(partial(runner.infer, sample), MEASURE_SECONDS)
        return times

    times = timed("measure", measure)
    kept = min(candidates, key=lambda c: times[c.contender.target.backend.name])
    words = ", ".join(f"{name} {ms:.2f} ms" + (f" (float parts {floats[name]})"
                                               if floats.get(name) else "")
                      for name, ms in sorted(times.items(), key=lambda kv: kv[1]))
    return Measurement(kept, times, f"the fastest CPU backend here, measured on the verified "
                                    f"artifacts (median per image at batch 1: {words})", floats)
