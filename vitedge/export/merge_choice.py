"""`--merge auto`: the token-merging schedule chosen within an accuracy budget, like
`--precision auto` chooses a precision. Candidates are ToMe's constant-r schedules; each is
judged on held-out images against the unmerged model (top-1 agreement, or the embedding's
cosine for a model without a head), and of those within `--max-drop` the one fastest
*measured here* (ONNX Runtime, batch 1) wins: fewer FLOPs is not always less time."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from vitedge.architecture import ViTConfig, max_merge, merge_schedule
from vitedge.errors import VitedgeError
from vitedge.report import Reporter

CANDIDATES = 8
"""Constant-r schedules tried, from a little merging to the most a block allows."""
TIMED = 3
"""Of the schedules within the budget, the cheapest this many (by FLOPs) are timed."""
CHOICE_IMAGES = 256
"""Held-out images the schedules are judged on (a seeded sample of `--merge-data`)."""


@dataclass
class Candidate:
    r: int
    schedule: list[int]
    gflops: float
    score: float
    """Top-1 agreement with the unmerged model in % (embeddings: mean cosine x 100)."""
    within: bool
    ms: float | None = None


@dataclass
class MergeChoice:
    schedule: tuple[int, ...]
    max_drop: float
    images: int
    measure: str
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": list(self.schedule), "max_drop": self.max_drop, "images": self.images,
                "measure": self.measure, "candidates": [asdict(c) for c in self.candidates]}


def candidate_schedules(cfg: ViTConfig, steps: int = CANDIDATES) -> list[tuple[int, tuple[int, ...]]]:
    """(r, schedule) for `steps` values of r up to the most the first block allows, spaced
    quadratically: a small budget is met by a small r, so the small values come densely."""
    most = max_merge(cfg.num_tokens, cfg.num_prefix_tokens)
    values = sorted({max(1, round(most * (i / steps) ** 2)) for i in range(1, steps + 1)})
    return [(r, merge_schedule(cfg, r)) for r in values]


def choose_schedule(imported: Any, max_drop: float, data: Any, rep: Reporter) -> MergeChoice:
    """The schedule for `imported` (`vitedge.model.importer.ImportedViT`) within `max_drop`
    on images from `data`; () when no merging stays within it or none is faster."""
    import torch

    from vitedge.datasets import image_source, model_inputs
    from vitedge.model.importer import with_merge

    if data is None:
        raise VitedgeError("--merge auto needs images to judge the schedules on",
                           "give --merge-data FOLDER (held-out images like the model's inputs)")
    source = image_source(data, CHOICE_IMAGES, seed=1)
    x = np.stack(list(model_inputs(source, imported.manifest("images"))))
    classifier = imported.config.num_classes > 0
    measure = "top-1 agreement %" if classifier else "mean cosine x 100"

    def outputs(model: Any) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([model(torch.from_numpy(x[i:i + 32])).numpy()
                                   for i in range(0, len(x), 32)])

    rep.step(f"merge auto: judging schedules on {len(x)} images")
    reference = outputs(imported.model)
    base_flops = 2 * imported.config.macs() / 1e9
    found: list[Candidate] = []
    misses = 0
    for r, schedule in candidate_schedules(imported.config):
        merged = with_merge(imported, schedule)
        got = outputs(merged.model)
        if classifier:
            score = 100.0 * float(np.mean(reference.argmax(-1) == got.argmax(-1)))
        else:
            cos = np.sum(reference * got, -1) / np.maximum(
                np.linalg.norm(reference, axis=-1) * np.linalg.norm(got, axis=-1), 1e-30)
            score = 100.0 * float(np.mean(cos))
        within = 100.0 - score <= max_drop
        found.append(Candidate(r, list(schedule), round(2 * merged.config.macs() / 1e9, 4),
                               round(score, 3), within))
        misses = 0 if within else misses + 1
        if misses == 2:  # merging more only loses more
            break
    fits = sorted((c for c in found if c.within), key=lambda c: c.gflops)[:TIMED]
    if not fits:
        return MergeChoice((), max_drop, len(x), measure, found)
    rep.step(f"merge auto: timing {len(fits)} schedules and the unmerged model")
    weights = imported.model.state_dict()
    unmerged_ms, *times = _latencies_ms([imported.config] + [
        imported.config.replace(merge=tuple(c.schedule)) for c in fits], weights)
    for c, ms in zip(fits, times, strict=True):
        c.ms = ms
    best = min(fits, key=lambda c: c.ms or 0.0)
    found.insert(0, Candidate(0, [], round(base_flops, 4), 100.0, True, unmerged_ms))
    if best.ms is None or best.ms >= unmerged_ms:
        return MergeChoice((), max_drop, len(x), measure, found)
    return MergeChoice(tuple(best.schedule), max_drop, len(x), measure, found)


def _latencies_ms(configs: list[ViTConfig], weights: Any, rounds: int = 40) -> list[float]:
    """Median ONNX Runtime latency of each graph at batch 1 on this machine, in ms, the
    graphs run in turn round after round, so that a busy spell hits all alike."""
    from vitedge.export.onnx_graph import onnx_from_vit
    from vitedge.sessions import ort_session

    sessions = [ort_session(onnx_from_vit(cfg, weights, "images", batch=1)) for cfg in configs]
    cfg = configs[0]
    x = np.random.default_rng(0).standard_normal((1, cfg.in_chans, *cfg.img_size)).astype(np.float32)
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(rounds + 3):
        for session, spent in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, {"images": x})
            if i >= 3:  # warm-up rounds left out
                spent.append(time.perf_counter() - start)
    return [round(1000 * float(np.median(t)), 3) for t in times]
