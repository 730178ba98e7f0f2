"""`vitedge bench`: per-stage and end-to-end latency of the runtime pipeline on frames,
for one or several artifacts run interleaved in one process (so that machine noise hits
them alike and their ratios mean something), with percentiles and throughput."""

from __future__ import annotations

import contextlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.fileio import write_text_atomic
from vitedge.options import BenchOptions, PipelineOptions
from vitedge.report import Reporter, reporter
from vitedge.runtime.pipeline import STAGES, Pipeline
from vitedge.runtime.stats import Stats
from vitedge.version import __version__

FRAME_SIZE = (480, 640)
"""Synthetic frames are 640x480 BGR, a VGA camera's."""


@dataclass
class BenchResult:
    artifact: str
    backend: str
    precision: str
    batch: int
    preprocessing: str
    iterations: int
    stages: dict[str, Stats]
    end_to_end: Stats
    throughput_fps: float
    """Frames per second over the measured iterations: frames / the time they took. With
    one stream that is batch / mean end-to-end time; with more, batches overlap."""
    streams: int = 1
    """Batches in flight at once (`vitedge.open(..., streams=N)`)."""
    frame_path_share: float = 0.0
    """(end to end - inference - copies) / inference, means: what decoding, preprocessing,
    postprocessing and the call path add to the model, as a share of it."""
    layers: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    gflops: float = 0.0
    """Per image, from the manifest's architecture (matrix products)."""
    tokens: list[int] = field(default_factory=list)
    """Tokens each block sees, then the head (fewer with token merging)."""
    reuse: dict[str, Any] | None = None
    """Frame reuse (`--reuse`) and token reuse (a streaming graph) over the measured
    iterations: frames delivered and inferred, the mean share of tokens recomputed per
    inferred frame, median ms of full and partial passes (`reuse_figures`); None: neither."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def model_line(self) -> str:
        """`GFLOPs`, and the tokens per block of a model that merges tokens."""
        merged = f", tokens {'>'.join(map(str, self.tokens))}" if len(set(self.tokens)) > 1 else ""
        return f"{self.gflops:.2f} GFLOPs{merged}"


def machine_info() -> dict[str, Any]:
    import os

    from vitedge.backends import all_backends
    from vitedge.machine import gpu_info

    gpu = gpu_info()
    facts: dict[str, Any] = {}
    for backend in all_backends():
        facts.update(backend.machine_facts())
    return {"machine": platform.machine(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "vitedge": __version__, **{b.name: b.version() for b in all_backends()},
            "gpu": f"{gpu[0]} (compute {gpu[1]})" if gpu else None, **facts}


def machine_line(info: dict[str, Any] | None = None) -> str:
    """The machine in one line, as every published number names it: CPU model, the
    instruction sets that decide the INT8 kernels, and the cores this process may use."""
    import os

    m = info or machine_info()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else m["cpus"]
    features = ", ".join(m.get("cpu_features") or []) or "no AVX2"
    gpu = f"; GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('cpu') or m['processor'] or 'unknown CPU'} ({m['machine']}; {features}; "
            f"INT8 kernels {m.get('int8_kernels', 'unknown')}), {cores} cores{gpu}")


def bench_frames(source: str | None, count: int = 32, seed: int = 0) -> list[Any]:
    """Frames to run: the first `count` of a source (cycled), or seeded random 640x480 BGR."""
    if source is None:
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (*FRAME_SIZE, 3), dtype=np.uint8) for _ in range(count)]
    from vitedge.runtime.sources import open_source

    frames = []
    for frame in open_source(source):
        frames.append(frame)
        if len(frames) == count:
            break
    if not frames:
        raise VitedgeError(f"{source} gave no frames")
    return frames


def bench(artifacts: list[str], options: BenchOptions | None = None,
          report: Reporter | None = None, clock: Callable[[], float] = time.perf_counter,
          pipelines: list[Pipeline] | None = None,
          pipeline: PipelineOptions | None = None) -> list[BenchResult]:
    """Run every (artifact, batch) in turn, iteration by iteration. `pipelines` may be
    given instead of opening the artifacts (tests pass pipelines with a fake clock); the
    ones opened here are closed at the end, opened as `pipeline` says (frame reuse,
    token refresh) with bench's own preprocessing and streams."""
    options = options or BenchOptions()
    if not artifacts and not pipelines:
        raise VitedgeError("nothing to benchmark", "give one or more artifacts")
    with contextlib.ExitStack() as stack:
        if pipelines is None:
            from vitedge.runtime.pipeline import open_pipeline

            pipelines = [stack.enter_context(open_pipeline(a, pipeline, fast=options.fast,
                                                           streams=s))
                         for a in artifacts for s in options.streams]
        return _bench(pipelines, options, reporter(report), clock)


def _bench(pipelines: list[Pipeline], options: BenchOptions, rep: Reporter,
           clock: Callable[[], float]) -> list[BenchResult]:
    frames = bench_frames(options.source, max(32, max(options.batches) * max(options.streams)))
    cases = [(p, b) for p in pipelines for b in options.batches]
    samples: dict[int, dict[str, list[float]]] = {i: {s: [] for s in (*STAGES, "total")}
                                                   for i in range(len(cases))}
    wall = [[0.0, 0] for _ in cases]
    """Per case: seconds and frames of the recorded iterations."""
    cursor = 0

    def run_once(i: int, record: bool) -> None:
        """One batch, or with several streams one batch per stream, in flight together."""
        nonlocal cursor
        pipe, b = cases[i]
        groups = []
        for _ in range(pipe.streams):
            groups.append([frames[(cursor + k) % len(frames)] for k in range(b)])
            cursor += b
        start = clock()
        results = [pipe.batch(groups[0])] if pipe.streams == 1 else list(pipe.batches(groups))
        elapsed = clock() - start
        totals = ([elapsed * 1e3] if pipe.streams == 1  # overlapping batches: each one's stages
                  else [sum(preds[0].timings.values()) for preds in results])
        if record:
            for preds, total in zip(results, totals, strict=True):
                for stage, ms in preds[0].timings.items():
                    samples[i].setdefault(stage, []).append(ms)
                samples[i]["total"].append(total)
            wall[i][0] += elapsed
            wall[i][1] += b * pipe.streams

    for _ in range(options.warmup):
        for i in range(len(cases)):
            run_once(i, record=False)
    before = [reuse_start(pipe) for pipe, _ in cases]
    done, start = 0, (clock() if options.duration is not None else 0.0)
    planned = options.iterations or 0
    while True:
        if options.duration is not None:
            if clock() - start >= options.duration and done > 0:
                break
        elif done >= planned:
            break
        for i in range(len(cases)):
            run_once(i, record=True)
        done += 1
        if options.duration is not None:
            rep.progress(min(int(clock() - start), int(options.duration)), int(options.duration))
        else:
            rep.progress(done, planned)

    results = []
    for i, (pipe, b) in enumerate(cases):
        total = Stats.of(samples[i]["total"])
        seconds, count = wall[i]
        results.append(BenchResult(
            artifact=str(pipe.model.path), backend=pipe.model.backend,
            precision=pipe.model.precision_label, batch=b, preprocessing="fast (OpenCV)" if pipe.fast else "exact (PIL)",
            iterations=done,
            stages={s: Stats.of(samples[i][s]) for s in STAGES},
            end_to_end=total, throughput_fps=count / seconds if seconds else 0.0,
            streams=pipe.streams, frame_path_share=frame_path_share(
                total.mean, {s: Stats.of(samples[i][s]).mean for s in STAGES}),
            layers=layer_times(pipe, frames[:b]) if options.layers else {},
            warnings=list(pipe.warnings), gflops=round(2 * pipe.manifest.architecture.macs() / 1e9, 3),
            tokens=pipe.manifest.architecture.tokens_per_block(),
            reuse=reuse_figures(pipe, before[i])))
    return results


def reuse_start(pipe: Pipeline) -> dict[str, Any] | None:
    """Where the measured iterations start: the frame-reuse counters then (token reuse's
    go back to zero, its cameras' states kept)."""
    if pipe.tokens is not None:
        pipe.tokens.zero()
    return pipe.reuse.counters() if pipe.reuse is not None else None


def reuse_figures(pipe: Pipeline, start: dict[str, Any] | None) -> dict[str, Any] | None:
    """What bench measured with reuse (see `BenchResult.reuse`)."""
    if pipe.reuse is None and pipe.tokens is None:
        return None
    figures: dict[str, Any] = {}
    if pipe.reuse is not None and start is not None:
        now = pipe.reuse.counters()
        figures.update(threshold=now["threshold"], frames=now["frames"] - start["frames"],
                       inferred=now["inferred"] - start["inferred"])
    if pipe.tokens is not None:
        tokens = pipe.tokens.counters()
        figures.setdefault("frames", tokens["frames"])
        figures.update(inferred=tokens["frames"], token_reuse={
            k: tokens[k] for k in ("k", "tokens", "refresh", "full_passes", "moved",
                                   "tokens_recomputed", "saving", "full_pass_ms",
                                   "partial_pass_ms")})
    return figures


def frame_path_share(end_to_end_ms: float, stage_ms: dict[str, float]) -> float:
    """The frame path's cost as a share of inference (see `BenchResult.frame_path_share`)."""
    model = stage_ms.get("infer", 0.0)
    moved = stage_ms.get("host_to_device", 0.0) + stage_ms.get("device_to_host", 0.0)
    return (end_to_end_ms - model - moved) / model if model > 0 else 0.0


def layer_times(pipe: Pipeline, frames: list[Any], runs: int = 20) -> dict[str, float]:
    """Mean milliseconds per layer of the pipeline's own runner (TensorRT's profiler, or
    ONNX Runtime's profiling of a session opened as the runner's), on prepared frames."""
    return pipe.model.layer_times(pipe.prepare(frames), runs)


def results_dict(results: list[BenchResult], options: BenchOptions) -> dict[str, Any]:
    """The results, the machine and the versions, as `--json` prints them."""
    info = machine_info()
    return {"schema": 1, "machine": info, "machine_line": machine_line(info),
            "options": asdict(options),
            "results": [r.to_dict() for r in results]}


def write_json(path: str | Path, results: list[BenchResult], options: BenchOptions) -> None:
    write_text_atomic(path, json.dumps(results_dict(results, options), indent=1))


def write_csv(path: str | Path, results: list[BenchResult], _options: Any = None) -> None:
    rows = ["artifact,backend,precision,batch,streams,stage,mean_ms,p50_ms,p90_ms,p99_ms,max_ms,n"]
    for r in results:
        for stage, s in [*r.stages.items(), ("end_to_end", r.end_to_end)]:
            rows.append(f"{r.artifact},{r.backend},{r.precision},{r.batch},{r.streams},{stage},{s.mean:.4f},"
                        f"{s.p50:.4f},{s.p90:.4f},{s.p99:.4f},{s.max:.4f},{s.n}")
    write_text_atomic(path, "\n".join(rows) + "\n")


def write_plot(path: str | Path, results: list[BenchResult], _options: Any = None) -> None:
    """Stage breakdown (stacked means) and end-to-end percentiles per artifact and batch."""
    from vitedge.errors import require

    require("matplotlib", "plot", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{Path(r.artifact).name}\nbatch {r.batch}" + (f", {r.streams} streams" if r.streams > 1 else "")
             for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4 + 0.3 * len(results)))
    left = np.zeros(len(results))
    for stage in STAGES:
        widths = np.array([r.stages[stage].mean for r in results])
        ax1.barh(names, widths, left=left, label=stage)
        left += widths
    ax1.set_xlabel("mean ms per call")
    ax1.set_title("stage breakdown")
    ax1.legend(fontsize=8)
    for i, r in enumerate(results):
        e = r.end_to_end
        ax2.plot([e.p50, e.p90, e.p99, e.max], [i] * 4, "o-")
    ax2.set_yticks(range(len(results)), names)
    ax2.set_xlabel("end-to-end ms (p50, p90, p99, max)")
    ax2.set_title(f"latency distribution ({results[0].iterations} iterations)")
    fig.tight_layout()
    from vitedge.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
