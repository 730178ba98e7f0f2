"""`--merge auto`: the token-merging schedule chosen within an accuracy budget, like
`--precision auto` chooses a precision. Candidates are ToMe's constant-r schedules; each is
judged on held-out images against the unmerged model (top-1 agreement, or the embedding's
cosine for a model without a head), and of those within `--max-drop` the one fastest
*measured here* wins: fewer FLOPs is not always less time. `vitedge export` times the
schedules with ONNX Runtime; `vitedge build` with the backend it builds for
(`backend_timer`)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
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


ONNXRUNTIME = "ONNX Runtime, batch 1"


@dataclass
class MergeChoice:
    schedule: tuple[int, ...]
    max_drop: float
    images: int
    measure: str
    candidates: list[Candidate] = field(default_factory=list)
    timed_on: str = ONNXRUNTIME
    """What the schedules' milliseconds were measured with, in words."""

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": list(self.schedule), "max_drop": self.max_drop, "images": self.images,
                "measure": self.measure, "candidates": [asdict(c) for c in self.candidates],
                "timed_on": self.timed_on}


@dataclass(frozen=True)
class ScheduleTimer:
    """How the schedules within the budget are timed: `latencies(graphs)` is each FP32
    graph's (an onnx.ModelProto with its manifest) median milliseconds at batch 1 on this
    machine, the graphs run in turn round after round so that a busy spell hits all alike;
    `where` says with what."""

    where: str
    latencies: Callable[[list[Any]], list[float]]


def candidate_schedules(cfg: ViTConfig, steps: int = CANDIDATES) -> list[tuple[int, tuple[int, ...]]]:
    """(r, schedule) for `steps` values of r up to the most the first block allows, spaced
    quadratically: a small budget is met by a small r, so the small values come densely."""
    most = max_merge(cfg.num_tokens, cfg.num_prefix_tokens)
    values = sorted({max(1, round(most * (i / steps) ** 2)) for i in range(1, steps + 1)})
    return [(r, merge_schedule(cfg, r)) for r in values]


def choose_schedule(imported: Any, max_drop: float, data: Any, rep: Reporter,
                    timer: ScheduleTimer | None = None) -> MergeChoice:
    """The schedule for `imported` (`vitedge.model.importer.ImportedViT`) within `max_drop`
    on images from `data`, the fastest as `timer` measures (default: ONNX Runtime); ()
    when no merging stays within it or none is faster."""
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
    timer = timer or onnxruntime_timer()
    if not fits:
        return MergeChoice((), max_drop, len(x), measure, found, timer.where)
    rep.step(f"merge auto: timing {len(fits)} schedules and the unmerged model "
             f"({timer.where})")
    unmerged_ms, *times = timer.latencies([_graph(imported, imported.config)] + [
        _graph(imported, imported.config.replace(merge=tuple(c.schedule))) for c in fits])
    for c, ms in zip(fits, times, strict=True):
        c.ms = ms
    best = min(fits, key=lambda c: c.ms or 0.0)
    found.insert(0, Candidate(0, [], round(base_flops, 4), 100.0, True, unmerged_ms))
    if best.ms is None or best.ms >= unmerged_ms:
        return MergeChoice((), max_drop, len(x), measure, found, timer.where)
    return MergeChoice(tuple(best.schedule), max_drop, len(x), measure, found, timer.where)


def _graph(imported: Any, cfg: ViTConfig) -> Any:
    """The FP32 graph of `imported` with `cfg`'s merging (a dynamic batch), its manifest in."""
    from vitedge.export.onnx_graph import onnx_from_vit
    from vitedge.manifest import set_onnx_manifest

    model = onnx_from_vit(cfg, imported.model.state_dict(), "images", batch=None)
    manifest = imported.manifest("images")
    manifest.architecture = cfg
    set_onnx_manifest(model, manifest)
    return model


def onnxruntime_timer() -> ScheduleTimer:
    """The schedules timed with ONNX Runtime (what `vitedge export` runs them with)."""
    from vitedge.sessions import ort_session

    def latencies(graphs: list[Any]) -> list[float]:
        sessions = [ort_session(g) for g in graphs]
        return _interleaved_ms([partial(_run_session, s) for s in sessions], graphs[0])

    return ScheduleTimer(ONNXRUNTIME, latencies)


def _run_session(session: Any, x: np.ndarray) -> Any:
    return session.run(None, {"images": x})


def backend_timer(backend: Any, profile: Any, batch: Any, precision: str,
                  report: Reporter | None = None) -> ScheduleTimer:
    """The schedules timed as `backend` (`vitedge.backends.Backend`) runs them here: each
    graph built by it for `profile` at `precision` (one it computes from the FP32 graph,
    or fp32), loaded as the build's verification loads it, and timed at batch 1. Where its
    artifacts cannot run on this machine, ONNX Runtime times them, and `where` says so."""
    from vitedge.backends.base import BuildRequest
    from vitedge.graph import save_onnx

    cannot = backend.cannot_run_here()
    if cannot is not None:
        ort = onnxruntime_timer()
        return ScheduleTimer(f"{ort.where} ({backend.product} cannot run here: {cannot})",
                             ort.latencies)

    def latencies(graphs: list[Any]) -> list[float]:
        with tempfile.TemporaryDirectory(prefix="vitedge-merge-") as folder:
            runners = []
            try:
                for i, graph in enumerate(graphs):
                    path = Path(folder) / f"schedule{i}.onnx"
                    save_onnx(graph, path)
                    manifest = _manifest(graph)
                    manifest.precision = precision
                    out = Path(folder) / f"schedule{i}{backend.suffix}"
                    built = backend.build(BuildRequest(path, manifest, profile, batch,
                                                       None, report), out)
                    runners.append(backend.load_built(built))
                return _interleaved_ms([r.infer for r in runners], graphs[0])
            finally:
                for runner in runners:
                    runner.close()

    return ScheduleTimer(f"{backend.product} ({precision}), batch 1", latencies)


def _interleaved_ms(runs: list[Callable[[np.ndarray], Any]], graph: Any, rounds: int = 40
                    ) -> list[float]:
    """Median milliseconds of each `run(x)` at batch 1 (x: random images the size `graph`
    takes), the runs made in turn round after round, warm-up rounds left out."""
    cfg = _manifest(graph).architecture
    x = np.random.default_rng(0).standard_normal((1, cfg.in_chans, *cfg.img_size)).astype(np.float32)
    times: list[list[float]] = [[] for _ in runs]
    for i in range(rounds + 3):
        for run, spent in zip(runs, times, strict=True):
            start = time.perf_counter()
            run(x)
            if i >= 3:  # warm-up rounds left out
                spent.append(time.perf_counter() - start)
    return [round(1000 * float(np.median(t)), 3) for t in times]


def _manifest(graph: Any) -> Any:
    from vitedge.manifest import manifest_from_onnx

    manifest = manifest_from_onnx(graph)
    if manifest is None:  # every graph here is made by `_graph`
        raise VitedgeError("a schedule's graph has no manifest")
    return manifest
