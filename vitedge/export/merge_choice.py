"""`--merge auto`: the token-merging schedule chosen within an accuracy budget, like
`--precision auto` chooses a precision. Candidates are ToMe's constant-r schedules and the
per-block schedules a greedy search finds (merging early in one block can remove more FLOPs
for less accuracy than merging a little everywhere); each is judged on held-out images
against the unmerged model: the top-1 change against their labels where the images sit in
folders named after the model's labels, else top-1 agreement (the embedding's cosine for a
model without a head). Of those within `--max-drop`, the one fastest *measured here* wins:
fewer FLOPs is not always less time. Where the timings cannot tell schedules apart (paired
rounds, a sign test: `TIE_SIGMAS`), or tell them apart by less than `TIE_PERCENT`, the one
with fewer FLOPs wins. `vitedge export` times
the schedules with ONNX Runtime; `vitedge build` with the backend it builds for
(`backend_timer`)."""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.architecture import ViTConfig, max_merge, merge_schedule
from vitedge.compare import agreement as compare_outputs
from vitedge.errors import VitedgeError
from vitedge.report import Reporter

CANDIDATES = 8
"""Constant-r schedules tried, from a little merging to the most a block allows."""
SEARCHED = 4
"""The greedy search judges at most this many schedules per block of the model."""
TIMED = 3
"""Of the schedules within the budget, the cheapest this many (by FLOPs) are timed, with the
cheapest constant-r one."""
CHOICE_IMAGES = 512
"""Held-out images the schedules are judged on by default (a seeded sample of
`--merge-data`)."""
CACHE_BYTES = 1 << 30
"""The tokens entering each block of the unmerged model are kept up to this size, so that
a schedule whose first merge is late runs only the blocks from there."""
BATCH = 64
CONFIDENCE = 2.0
"""A top-1 change against labels is within the budget when the change less this many
standard errors is: out of a few hundred images, many schedules would otherwise pass by
chance (selection among them favours the lucky ones)."""
TIE_SIGMAS = 2.0
"""A schedule ties with the fastest unless it ran slower in more of the interleaved rounds
than half plus this many standard deviations of a fair coin's count (a sign test on paired
rounds). Of tied schedules the one with the fewest FLOPs wins: the timings cannot tell them
apart, and fewer FLOPs carry over to a busier machine and to larger batches."""
TIE_PERCENT = 2.0
"""A schedule whose median is within this many per cent of the fastest's ties with it too,
however many rounds tell them apart: the same model measures a few per cent apart from one
run to the next on one machine (benchmarks/RESULTS.md), so a smaller lead is not one the
next run keeps, while the fewer FLOPs are."""


@dataclass
class Candidate:
    r: int | None
    """The constant r of a ToMe schedule; None for one the search found."""
    schedule: list[int]
    gflops: float
    score: float
    """The budget's measure (`MergeChoice.measure`): top-1 change in points against the
    labels, top-1 agreement with the unmerged model in %, or mean cosine x 100."""
    within: bool
    ms: float | None = None
    agreement: float | None = None
    """Top-1 agreement with the unmerged model in % (a classifier's)."""
    error: float | None = None
    """One standard error of a top-1 change, in points: within the budget means the change
    less CONFIDENCE of these is no worse than -max_drop."""
    slower: int | None = None
    """Of the timed rounds (`MergeChoice.rounds`), in how many it ran slower than the
    fastest schedule (`TIE_SIGMAS`, `TIE_PERCENT`)."""


ONNXRUNTIME = "ONNX Runtime"
TOP1_CHANGE = "top-1 change against the labels, points"
AGREEMENT = "top-1 agreement %"
COSINE = "mean cosine x 100"


@dataclass
class MergeChoice:
    schedule: tuple[int, ...]
    max_drop: float
    images: int
    measure: str
    candidates: list[Candidate] = field(default_factory=list)
    timed_on: str = f"{ONNXRUNTIME}, batch 1"
    """What the schedules' milliseconds were measured with, and at what batch, in words."""
    rounds: int = 0
    """Interleaved rounds each timed schedule ran."""
    tie_percent: float = TIE_PERCENT
    """Schedules this close to the fastest's median tied with it (`TIE_PERCENT`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"schedule": list(self.schedule), "max_drop": self.max_drop, "images": self.images,
                "measure": self.measure, "candidates": [asdict(c) for c in self.candidates],
                "timed_on": self.timed_on, "rounds": self.rounds,
                "tie_percent": self.tie_percent}


@dataclass(frozen=True)
class ScheduleTimer:
    """How the schedules within the budget are timed: `latencies(graphs)` is each FP32
    graph's (an onnx.ModelProto with its manifest) milliseconds at the graph's batch (1 where
    it is dynamic) on this machine, round by round, the graphs run in turn each round so
    that a busy spell hits all alike; `where` says with what."""

    where: str
    latencies: Callable[[list[Any]], list[list[float]]]


def candidate_schedules(cfg: ViTConfig, steps: int = CANDIDATES) -> list[tuple[int, tuple[int, ...]]]:
    """(r, schedule) for `steps` values of r up to the most the first block allows, spaced
    quadratically: a small budget is met by a small r, so the small values come densely."""
    most = max_merge(cfg.num_tokens, cfg.num_prefix_tokens)
    values = sorted({max(1, round(most * (i / steps) ** 2)) for i in range(1, steps + 1)})
    return [(r, merge_schedule(cfg, r)) for r in values]


def fits(cfg: ViTConfig, schedule: list[int]) -> bool:
    """Whether every block of `schedule` merges at most what the tokens entering it allow."""
    tokens = cfg.num_tokens
    for r in schedule:
        if r > max_merge(tokens, cfg.num_prefix_tokens):
            return False
        tokens -= r
    return True


class ScheduleJudge:
    """Judges schedules of one model on fixed held-out images against the unmerged model:
    `judge(schedule)` is its Candidate. The unmerged model's tokens entering each block are
    kept (up to CACHE_BYTES), so a schedule runs only from the block before its first merge."""

    def __init__(self, imported: Any, x: np.ndarray, labels: np.ndarray | None,
                 max_drop: float) -> None:
        import torch

        self.model, self.cfg, self.max_drop = imported.model, imported.config, max_drop
        self.labels = labels
        self.classifier = self.cfg.num_classes > 0
        self.measure = (TOP1_CHANGE if self.classifier and labels is not None else
                        AGREEMENT if self.classifier else COSINE)
        self.base_gflops = 2 * self.cfg.macs() / 1e9
        with torch.no_grad():
            tokens = [self.model.embed(torch.from_numpy(x[i:i + BATCH]))
                      for i in range(0, len(x), BATCH)]
            self.entering: list[list[Any]] = []
            per_block = sum(t.numel() * t.element_size() for t in tokens)
            for module in self.model.blocks:
                if per_block * (len(self.entering) + 1) <= CACHE_BYTES:
                    self.entering.append(tokens)
                tokens = [module(t)[0] for t in tokens]
            self.reference = self._head(tokens, [None] * len(tokens))
        self.reference_top1 = self.reference.argmax(-1)

    def _head(self, tokens: list[Any], sizes: list[Any]) -> np.ndarray:
        return np.concatenate([self.model.forward_head(self.model.norm(t), s).numpy()
                               for t, s in zip(tokens, sizes, strict=True)])

    def outputs(self, schedule: list[int]) -> np.ndarray:
        """The model's outputs with `schedule`'s merging on the held-out images."""
        import torch

        first = next((i for i, r in enumerate(schedule) if r), len(schedule))
        start = min(first, len(self.entering) - 1)
        prefix = self.cfg.num_prefix_tokens
        tokens, sizes = list(self.entering[start]), [None] * len(self.entering[start])
        with torch.no_grad():
            for i in range(start, len(schedule)):
                block = self.model.blocks[i]
                for j, t in enumerate(tokens):
                    tokens[j], sizes[j], _ = block.forward_merging(t, sizes[j], schedule[i], prefix)
            return self._head(tokens, sizes)

    def __call__(self, schedule: list[int], r: int | None = None) -> Candidate:
        got = self.outputs(schedule)
        gflops = round(2 * self.cfg.replace(merge=tuple(schedule) if any(schedule) else ())
                       .macs() / 1e9, 4)
        agreement = error = None
        compared = compare_outputs(self.reference, got)
        if self.classifier:
            agreement = 100.0 * compared.top1_agreement
            if self.labels is not None:
                gained = ((got.argmax(-1) == self.labels).astype(np.float64)
                          - (self.reference_top1 == self.labels))
                score = 100.0 * float(gained.mean())
                error = 100.0 * float(gained.std(ddof=1) / np.sqrt(len(gained)))
                drop = CONFIDENCE * error - score  # within the budget by chance is not within
            else:
                score, drop = agreement, 100.0 - agreement
        else:
            score = 100.0 * compared.cosine
            drop = 100.0 - score
        return Candidate(r, list(schedule), gflops, round(score, 3),
                         bool(drop <= self.max_drop + 1e-9),
                         agreement=None if agreement is None else round(agreement, 3),
                         error=None if error is None else round(error, 3))

    def loss(self, c: Candidate) -> float:
        """What the search trades FLOPs against: the disagreement with the unmerged model (a
        steadier guide than a labelled top-1 change, which can rise by chance)."""
        return 100.0 - (c.agreement if c.agreement is not None else c.score)


def searched_schedules(judge: ScheduleJudge, rep: Reporter, evals: int) -> list[Candidate]:
    """Every schedule a greedy search judged. From no merging, each round adds `step`
    merges to one block: of the additions within the budget, the one that removes the most
    FLOPs per point of agreement it costs (plus a budget's worth). When none stays within
    it, `step` halves (and a block whose addition failed is not tried again at that step).
    Ends when `step` reaches 0 or after `evals` schedules."""
    cfg = judge.cfg
    current = [0] * cfg.depth
    now = Candidate(None, current, judge.base_gflops, 0.0, True, agreement=100.0)
    step = max(1, max_merge(cfg.num_tokens, cfg.num_prefix_tokens) // 2)
    tried: list[Candidate] = []
    failed: set[int] = set()
    while step >= 1 and len(tried) < evals:
        moves = []
        for b in range(cfg.depth):
            trial = current.copy()
            trial[b] += step
            if b in failed or not fits(cfg, trial) or len(tried) >= evals:
                continue
            c = judge(trial)
            tried.append(c)
            rep.progress(len(tried), evals)
            if c.within:
                moves.append(c)
            else:
                failed.add(b)
        if not moves:
            step, failed = step // 2, set()
            continue
        # a move that costs nothing is valued as if it cost a budget's worth: many free
        # merges in the last block remove less than one merge early on
        eps = max(judge.max_drop, 100.0 / len(judge.reference))
        now = max(moves, key=lambda c: (now.gflops - c.gflops)
                  / (max(judge.loss(c) - judge.loss(now), 0.0) + eps))
        current = now.schedule
    return tried


def choose_schedule(imported: Any, max_drop: float, data: Any, rep: Reporter,
                    timer: ScheduleTimer | None = None, images: int = CHOICE_IMAGES,
                    batch: int | None = None) -> MergeChoice:
    """The schedule for `imported` (`vitedge.model.importer.ImportedViT`) within `max_drop`
    on `images` images from `data`, the fastest as `timer` measures (default: ONNX
    Runtime) at the export's fixed `batch` (None, a dynamic batch: 1); () when no merging
    stays within it or none is faster."""
    from vitedge.datasets import image_source, model_inputs

    if data is None:
        raise VitedgeError("--merge auto needs images to judge the schedules on",
                           "give --merge-data FOLDER (held-out images like the model's inputs)")
    source = image_source(data, images, seed=1)
    x = np.stack(list(model_inputs(source, imported.manifest("images"))))
    labels = _labels(source, imported.labels, len(x))
    judge = ScheduleJudge(imported, x, labels, max_drop)
    rep.step(f"merge auto: judging ToMe's schedules on {len(x)} images ({judge.measure})")
    found: list[Candidate] = []
    misses = 0
    for r, schedule in candidate_schedules(imported.config):
        found.append(judge(list(schedule), r))
        misses = 0 if found[-1].within else misses + 1
        if misses == 2:  # merging more only loses more
            break
    evals = SEARCHED * imported.config.depth
    rep.step(f"merge auto: searching per-block schedules (at most {evals})")
    seen = {tuple(c.schedule) for c in found}
    for c in searched_schedules(judge, rep, evals):
        if tuple(c.schedule) not in seen:
            seen.add(tuple(c.schedule))
            found.append(c)
    within = sorted((c for c in found if c.within), key=lambda c: c.gflops)
    chosen = within[:TIMED] + [c for c in within[TIMED:] if c.r is not None][:1]
    timer = timer or onnxruntime_timer()
    where = timed_on(timer, batch)
    measure = judge.measure
    unmerged = Candidate(0, [], round(judge.base_gflops, 4),
                         0.0 if measure == TOP1_CHANGE else 100.0, True,
                         agreement=100.0 if judge.classifier else None)
    if not chosen:
        return MergeChoice((), max_drop, len(x), measure, [unmerged, *found], where)
    rep.step(f"merge auto: timing {len(chosen)} schedules and the unmerged model ({where})")
    base, *times = timer.latencies([_graph(imported, imported.config, batch)] + [
        _graph(imported, imported.config.replace(merge=tuple(c.schedule)), batch)
        for c in chosen])
    unmerged.ms = base_ms = _median_ms(base)
    medians = [_median_ms(rounds) for rounds in times]
    fastest = times[int(np.argmin(medians))]
    faster = []
    for c, rounds, ms in zip(chosen, times, medians, strict=True):
        c.ms = ms
        c.slower = sum(a > b for a, b in zip(rounds, fastest, strict=True))
        if ms < base_ms and ties(c.slower, len(base), ms / min(medians)):
            faster.append(c)
    found.insert(0, unmerged)
    schedule = tuple(min(faster, key=lambda c: c.gflops).schedule) if faster else ()
    return MergeChoice(schedule, max_drop, len(x), measure, found, where, len(base))


def timed_on(timer: ScheduleTimer, batch: int | None) -> str:
    """What the schedules of an export for `batch` (None: dynamic) are timed with, in words,
    as the manifest records it (`MergeChoice.timed_on`)."""
    return f"{timer.where}, batch {batch or 1}"


def ties(slower: int, rounds: int, ratio: float = 1.0) -> bool:
    """Whether a schedule slower than the fastest in `slower` of `rounds` paired rounds, its
    median `ratio` times the fastest's, ties with it (`TIE_SIGMAS`, `TIE_PERCENT`)."""
    return (slower <= rounds / 2 + TIE_SIGMAS * math.sqrt(rounds) / 2
            or ratio <= 1 + TIE_PERCENT / 100)


def _median_ms(rounds: list[float]) -> float:
    return round(float(np.median(rounds)), 3)


def _labels(source: Any, labels: list[str] | None, count: int) -> np.ndarray | None:
    """Each judged image's class from the folder it sits in, where every image sits in a
    folder named after one of the model's labels (`vitedge.datasets.labelled_folder`'s
    matching); None otherwise."""
    from vitedge.datasets import label_key

    if not labels or source.kind != "folder" or source.broken or len(source.items) != count:
        return None
    keys = {label_key(name): i for i, name in enumerate(labels)}
    found = [keys.get(label_key(Path(item).parent.name)) for item in source.items]
    if any(k is None for k in found) or any(Path(i).parent == source.path for i in source.items):
        return None
    return np.array(found)


def _graph(imported: Any, cfg: ViTConfig, batch: int | None) -> Any:
    """The FP32 graph of `imported` with `cfg`'s merging for `batch` (None: dynamic), its
    manifest in."""
    from vitedge.export.onnx_graph import onnx_from_vit
    from vitedge.manifest import set_onnx_manifest

    model = onnx_from_vit(cfg, imported.model.state_dict(), "images", batch=batch)
    manifest = imported.manifest("images")
    manifest.architecture = cfg
    set_onnx_manifest(model, manifest)
    return model


def onnxruntime_timer() -> ScheduleTimer:
    """The schedules timed with ONNX Runtime (what `vitedge export` runs them with)."""
    from vitedge.sessions import ort_session

    def latencies(graphs: list[Any]) -> list[list[float]]:
        sessions = [ort_session(g) for g in graphs]
        return _interleaved_ms([partial(_run_session, s) for s in sessions], graphs[0])

    return ScheduleTimer(ONNXRUNTIME, latencies)


def _run_session(session: Any, x: np.ndarray) -> Any:
    return session.run(None, {"images": x})


def backend_timer(backend: Any, profile: Any, batch: Any, precision: str,
                  report: Reporter | None = None) -> ScheduleTimer:
    """The schedules timed as `backend` (`vitedge.backends.Backend`) runs them here: each
    graph built by it for `profile` at `precision` (one it computes from the FP32 graph,
    or fp32), loaded as the build's verification loads it, and timed. Where its
    artifacts cannot run on this machine, ONNX Runtime times them, and `where` says so."""
    from vitedge.backends.base import BuildRequest
    from vitedge.graph import save_onnx

    cannot = backend.cannot_run_here()
    if cannot is not None:
        ort = onnxruntime_timer()
        return ScheduleTimer(f"{ort.where} ({backend.product} cannot run here: {cannot})",
                             ort.latencies)

    def latencies(graphs: list[Any]) -> list[list[float]]:
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

    return ScheduleTimer(f"{backend.product} ({precision})", latencies)


def _interleaved_ms(runs: list[Callable[[np.ndarray], Any]], graph: Any, rounds: int = 40
                    ) -> list[list[float]]:
    """Milliseconds of each `run(x)` in each of `rounds` rounds (x: random images the size
    `graph` takes, as many as its fixed batch, else one), the runs made in turn round after
    round, warm-up rounds left out."""
    cfg = _manifest(graph).architecture
    batch = graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value or 1
    x = np.random.default_rng(0).standard_normal((batch, cfg.in_chans, *cfg.img_size)).astype(np.float32)
    times: list[list[float]] = [[] for _ in runs]
    for i in range(rounds + 3):
        for run, spent in zip(runs, times, strict=True):
            start = time.perf_counter()
            run(x)
            if i >= 3:  # warm-up rounds left out
                spent.append(time.perf_counter() - start)
    return [[1000 * t for t in spent] for spent in times]


def _manifest(graph: Any) -> Any:
    from vitedge.manifest import manifest_from_onnx

    manifest = manifest_from_onnx(graph)
    if manifest is None:  # every graph here is made by `_graph`
        raise VitedgeError("a schedule's graph has no manifest")
    return manifest
