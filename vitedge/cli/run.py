"""Running a model: `predict`, `embed`, `run`, `bench`, `explain`, `eval`, `compare`."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.table import Table

from vitedge.cli.common import command, out, print_json, progress, stage_table, warn
from vitedge.cli.flags import flag, flags, options
from vitedge.errors import VitedgeError
from vitedge.options import (
    BenchOptions,
    CameraOptions,
    CompareOptions,
    EvalOptions,
    ExplainOptions,
    PipelineOptions,
    SourceOptions,
)

RUNTIME_FLAGS = ("fast", "device", "streams")


@command(json_help="Print the predictions as JSON.")
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@flags(PipelineOptions, "topk")
@click.option("--embeddings", is_flag=True,
              help="A headless model (DINOv2, CLIP / SigLIP image tower): show each image's "
                   "embedding (with --json, every value).")
@flags(PipelineOptions, "normalize_embeddings", *RUNTIME_FLAGS)
def predict(artifact: str, images: tuple[str, ...], embeddings: bool, as_json: bool,
            **kw: Any) -> None:
    """Classify IMAGES (files, folders or globs) with ARTIFACT (.engine or .onnx); a model
    without a classification head gives each image's embedding instead."""
    from vitedge.runtime.predict import predict_images
    from vitedge.runtime.sources import image_files

    opts = options(PipelineOptions, kw)
    result = predict_images(artifact, image_files(images), opts, embeddings)
    warn(result.warnings + [f"skipped {name}: {why}" for name, why in result.skipped], as_json)
    if as_json:
        print_json(result.to_dict())
        return
    if not result.classifier:
        table = Table("image", "embedding", "norm", "first values", "ms")
        for name, p in result.predictions:
            e = p.embedding if p.embedding is not None else np.zeros(0, np.float32)
            shown = e if embeddings else e[:4]
            table.add_row(name, f"{e.shape[0]} floats", f"{float(np.linalg.norm(e)):.4f}",
                          " ".join(f"{v:+.4f}" for v in shown) + ("" if embeddings else " ..."),
                          f"{sum(p.timings.values()):.1f}")
        out.print(table)
        return
    table = Table("image", "label", "score", f"top-{opts.topk}", "ms")
    for name, p in result.predictions:
        table.add_row(name, str(p.label if p.label is not None else p.class_id), f"{p.score:.3f}",
                      ", ".join(f"{lab if lab is not None else i} {s:.2f}" for i, lab, s in p.topk[1:]),
                      f"{sum(p.timings.values()):.1f}")
    out.print(table)


@command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The embeddings as a .npy array (N, D) float32; the images' paths, one per "
                   "row, go to OUTPUT with the suffix .paths.txt.")
@flags(PipelineOptions, "normalize_embeddings", "batch", *RUNTIME_FLAGS)
def embed(artifact: str, images: tuple[str, ...], output: str, as_json: bool, **kw: Any) -> None:
    """Embed IMAGES (files, folders or globs) with ARTIFACT, a model without a
    classification head (DINOv2, CLIP / SigLIP image towers): a gallery for retrieval,
    few-shot or anomaly detection. Unreadable images are skipped and named."""
    from vitedge.runtime.embed import embed_images
    from vitedge.runtime.sources import image_files

    files = image_files(images)
    opts = options(PipelineOptions, kw)
    with progress("embedding", not as_json) as bar:
        result = embed_images(artifact, files, output, opts, bar)
    if as_json:
        print_json(result.to_dict())
        return
    warn([f"skipped {name}: {why}" for name, why in result.skipped], False)
    out.print(f"[green]wrote[/] {result.output} ({result.count} x {result.dim} float32"
              f"{', L2-normalised' if opts.normalize_embeddings else ''}) and {result.paths}")


@command(json_help="Print the stage timings (per camera, with several) as JSON at the end.")
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("--source", "sources", multiple=True, metavar="[NAME=]URI",
              help="Video file, camera index or /dev/videoN, rtsp:// or http:// stream, "
                   "GStreamer pipeline, image folder or glob. Repeat it, NAME=URI, for several "
                   "cameras through one model.")
@click.option("--sources", "sources_file", type=click.Path(dir_okay=False),
              help="A TOML file of cameras: [[camera]] tables with name, uri and optional fps "
                   "(a cap) and color (bgr, rgb).")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the annotated frames to "
              "a video (.mp4, .avi); one camera.")
@click.option("--display", is_flag=True, help="Show the annotated frames in a window (q "
              "quits); one camera.")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames "
              "(all cameras together).")
@flags(CameraOptions, "batch", "max_wait_ms", "events", "mqtt", "mqtt_qos",
       "mqtt_drop_undelivered", "events_min_score", "events_on_change", "events_max_rate",
       "output_dir", "status", "metrics_port", "metrics_host")
@flags(SourceOptions, "reconnect_for")
@flags(PipelineOptions, "color", *RUNTIME_FLAGS, "reuse", "max_age", "token_refresh")
def run(artifact: str, sources: tuple[str, ...], sources_file: str | None, output: str | None,
        display: bool, max_frames: int | None, as_json: bool, **kw: Any) -> None:
    """The camera loop: classify every frame of --source, draw the label and FPS on it,
    and print per-stage timings at the end. Several cameras (--source NAME=URI, repeated, or
    --sources FILE) go through one model in batches: live cameras keep only their latest
    frame (older ones are dropped and counted), files are read at the model's pace, a batch
    waits at most --max-wait-ms to fill; every prediction can go out as a JSON line
    (--events) and to an MQTT broker (--mqtt); a live table shows each camera's fps, drops,
    reconnects and latency. A live source that drops is reconnected with growing waits
    (every attempt shown); one that stays away longer than --reconnect-for is gone: the
    others run on, and the run ends with exit code 1."""
    from vitedge.cli.common import err
    from vitedge.runtime.cameras import parse_camera, read_cameras

    cams = options(CameraOptions, kw)
    if not sources and not sources_file:
        raise click.UsageError("give --source (or --sources FILE)")
    if cams.events == "-" and as_json:
        raise VitedgeError("--events - and --json would both write to standard output",
                           "give --events a file")
    several = bool(sources_file) or len(sources) > 1 or any(_named(s) for s in sources) or \
        any(getattr(cams, k) for k in ("batch", "events", "mqtt", "output_dir")) or \
        cams.metrics_port is not None
    if not several:
        return _run_one(artifact, sources[0], output, display, max_frames, as_json, kw)
    if output or display:
        raise VitedgeError("--output and --display show one camera",
                           "with several, --output-dir DIR writes DIR/CAMERA.mp4 each")
    cameras = read_cameras(sources_file) if sources_file else []
    cameras += [parse_camera(s) if _named(s) else _unnamed(s, i) for i, s in enumerate(sources)]
    _run_several(artifact, cameras, cams, max_frames, as_json, kw, err)


def _named(spec: str) -> bool:
    name, sep, _ = spec.partition("=")
    return bool(sep) and bool(name) and not any(c in name for c in "/:\\?&")


def _unnamed(spec: str, i: int) -> Any:
    from vitedge.runtime.cameras import Camera

    return Camera(f"camera{i}", spec)


def _run_one(artifact: str, source: str, output: str | None, display: bool,
             max_frames: int | None, as_json: bool, kw: dict[str, Any]) -> None:
    from vitedge.cli.common import err
    from vitedge.runtime.run_loop import run_loop

    try:
        summary = run_loop(artifact, source, output=output, display=display,
                           max_frames=max_frames, pipeline=options(PipelineOptions, kw),
                           source_options=options(SourceOptions, kw), log=err.print)
    except VitedgeError as exc:
        if as_json and exc.details:
            print_json(exc.details)
        raise
    warn(summary["warnings"], as_json)
    if as_json:
        print_json(summary)
        return
    out.print(stage_table(summary["stages"], f"{summary['frames']} frames, {summary['fps']:.1f} "
                          f"FPS ({summary['dropped']} dropped)"))
    _print_reuse(summary.get("reuse"), summary.get("tokens"))


def _run_several(artifact: str, cameras: list[Any], cams: CameraOptions,
                 max_frames: int | None, as_json: bool, kw: dict[str, Any], err: Any) -> None:
    from vitedge.runtime.camera_loop import run_cameras

    shown = err if cams.events == "-" else out  # stdout carries the JSON lines alone
    live = None
    if cams.status and err.is_terminal:
        from rich.live import Live

        live = Live(console=err, refresh_per_second=4, transient=True)
    try:
        with live if live is not None else contextlib.nullcontext():
            summary = run_cameras(
                artifact, cameras, cams, max_frames, options(PipelineOptions, kw),
                options(SourceOptions, kw), log=err.print,
                status=(lambda rows: live.update(camera_table(rows))) if live else None)
    except VitedgeError as exc:
        if as_json and exc.details:
            print_json(exc.details)
        elif exc.details:
            shown.print(camera_table(exc.details["cameras"], stages=True))
        raise
    warn(summary["warnings"], as_json)
    if as_json:
        print_json(summary)
        return
    shown.print(camera_table(summary["cameras"], stages=True))
    shown.print(stage_table(summary["stages"], f"{summary['frames']} frames, "
                          f"{summary['fps']:.1f} FPS in all, batches "
                          + ", ".join(f"{n} x {k}" for k, n in summary["batch_sizes"].items())))
    _print_reuse(summary.get("reuse"), summary.get("tokens"))


def _print_reuse(reuse: dict[str, Any] | None, tokens: dict[str, Any] | None = None) -> None:
    """Frames delivered vs inferred and the saving (`--reuse`); with a streaming graph, the
    tokens recomputed and their saving, and the two together."""
    if reuse:
        out.print(f"frame reuse (--reuse {reuse['threshold']:g}): {reuse['frames']} frames "
                  f"delivered, {reuse['inferred']} inferred, {reuse['reused']} reused "
                  f"({reuse['saving']:.1%} of the inferences saved)")
    if tokens:
        for line in token_lines(tokens, reuse):
            out.print(line)


def token_lines(tokens: dict[str, Any], reuse: dict[str, Any] | None = None) -> list[str]:
    """Token reuse in words: frames through the streaming graph, full passes, the share of
    tokens recomputed and the saving; with frame reuse, the work left of full inference on
    every delivered frame."""
    delivered = reuse["frames"] if reuse else tokens["frames"]
    lines = [f"token reuse ({tokens['k']} of {tokens['tokens']} tokens per gate, a full pass "
             f"at least every {tokens['refresh']} frames): {delivered} frames delivered, "
             f"{tokens['frames']} inferred ({tokens['full_passes']} full passes, "
             f"{tokens['moved']} of them as more patches moved than k); tokens "
             f"recomputed {tokens['tokens_recomputed']:.1%} ({tokens['saving']:.1%} saved)"]
    times = [f"{kind} pass {tokens[f'{kind}_pass_ms']:.2f} ms" for kind in ("full", "partial")
             if tokens[f"{kind}_pass_ms"] is not None]
    if times:
        lines.append("  " + ", ".join(times) + " (medians)")
    if reuse and delivered:
        work = tokens["tokens_recomputed"] * tokens["frames"] / delivered
        lines.append(f"  frame + token reuse: {work:.1%} of the tokens of full inference on "
                     f"every frame recomputed ({1 - work:.1%} saved)")
    return lines


def reuse_line(r: Any) -> str:
    """What `bench` measured with frame or token reuse, one line (and its pass times)."""
    f = r.reuse
    parts = [f"{Path(r.artifact).name}: {f['frames']} frames delivered, {f['inferred']} "
             "inferred" + (f" (frame reuse {f['threshold']:g})" if "threshold" in f else "")]
    t = f.get("token_reuse")
    if t:
        parts.append(f"tokens recomputed {t['tokens_recomputed']:.1%} ({t['k']} of {t['tokens']} "
                     f"per gate, {t['full_passes']} full passes, {t['moved']} for motion)")
        times = [f"{kind} pass {t[f'{kind}_pass_ms']:.2f} ms" for kind in ("full", "partial")
                 if t[f"{kind}_pass_ms"] is not None]
        if times:
            parts.append(", ".join(times) + " (medians)")
    return "; ".join(parts)


def camera_table(rows: list[dict[str, Any]], stages: bool = False) -> Table:
    """Per camera: fps, frames, dropped, reconnects, latency; with `stages`, the latency's
    parts (waiting for a batch, the pipeline) at p50 / p99."""
    table = Table("camera", "kind", "fps", "frames", "dropped", "reconnects", "latency ms",
                  *(("wait p50 / p99", "pipeline p50 / p99", "latency p50 / p99")
                    if stages else ()), "state", title="cameras")
    for r in rows:
        parts = [_p50_p99(r["stages"], k) for k in ("wait", "pipeline", "latency")]
        table.add_row(r["camera"], r["kind"], f"{r['fps']:.1f}", str(r["processed"]),
                      str(r["dropped"]), str(r["reconnects"]), f"{r['last_latency_ms']:.1f}",
                      *(parts if stages else ()), "gone" if r["gone"] else "ok")
    return table


def _p50_p99(stages: dict[str, Any], stage: str) -> str:
    s = stages.get(stage)
    return f"{s['p50']:.1f} / {s['p99']:.1f}" if s else "-"


@command(json_help="Print the results, machine and versions as JSON.")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@flags(BenchOptions, "batches", "warmup", "iterations", "duration", "source", "fast",
       "streams", "layers")
@flags(PipelineOptions, "reuse", "max_age", "token_refresh")
@click.option("--json-file", "json_path", type=click.Path(dir_okay=False),
              help="Write the results, machine and versions as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write a CSV table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a plot (stage breakdown, latency percentiles); needs matplotlib.")
def bench(artifacts: tuple[str, ...], json_path: str | None, csv_path: str | None,
          plot_path: str | None, as_json: bool, **kw: Any) -> None:
    """Latency of the whole pipeline per stage (decode, preprocess, patchify, infer,
    postprocess) and end to end: mean, p50, p90, p99, max and throughput. Several
    ARTIFACTS run interleaved in one process and are compared as ratios. With --reuse, or
    on a streaming graph (token reuse), it also shows the frames delivered and inferred,
    the share of tokens recomputed and the latency of full and partial passes (give
    --source a video: random frames change everywhere)."""
    import vitedge.bench as benchmark
    from vitedge.inputs import refuse_overwriting_inputs
    from vitedge.runtime.pipeline import STAGES

    opts = options(BenchOptions, kw)
    if opts.duration is not None:
        opts = replace(opts, iterations=None)
    for path in (json_path, csv_path, plot_path):
        refuse_overwriting_inputs(path, *artifacts, opts.source)
    with progress("benchmarking", not as_json) as bar:
        results = benchmark.bench(list(artifacts), opts, bar,
                                  pipeline=options(PipelineOptions, kw))
    for path, write in ((json_path, benchmark.write_json), (csv_path, benchmark.write_csv),
                        (plot_path, benchmark.write_plot)):
        if path:
            write(path, results, opts)
    if as_json:
        print_json(benchmark.results_dict(results, opts))
        return
    warn(list(dict.fromkeys(w for r in results for w in r.warnings)), False)
    first = results[0]
    from rich.table import Column

    longest = max(len(Path(r.artifact).name) for r in results)  # a name is never cut short
    table = Table(Column("artifact", min_width=min(longest, 60), overflow="fold"), "batch",
                  *(f"{s} ms" for s in STAGES), "end-to-end ms",
                  "frame path", "p99 ms", "frames/s", "vs first",
                  title=f"mean per call over {first.iterations} iterations, artifacts interleaved "
                        f"({first.preprocessing} preprocessing)")
    for r in results:
        streams_note = f", {r.streams} streams" if r.streams > 1 else ""
        table.add_row(f"{Path(r.artifact).name} ({r.backend}, {r.precision}{streams_note})",
                      str(r.batch), *(f"{r.stages[s].mean:.2f}" for s in STAGES),
                      f"{r.end_to_end.mean:.2f}", f"{r.frame_path_share:.0%} of infer",
                      f"{r.end_to_end.p99:.2f}",
                      f"{r.throughput_fps:.1f}", f"{r.throughput_fps / first.throughput_fps:.2f}x")
    out.print(table)
    for r in results:
        if len(set(r.tokens)) > 1:  # token merging: its tokens next to its latency
            out.print(f"{Path(r.artifact).name}: {r.model_line}, {r.stages['infer'].mean:.2f} ms "
                      "inference")
    out.print(f"on {benchmark.machine_line()}; frame path: end to end less inference and "
              "copies (decode, preprocess, patchify, postprocess, the call)")
    for r in results:
        if r.reuse:
            out.print(reuse_line(r))
    for r in results:
        if r.layers:
            top = list(r.layers.items())[:10]
            out.print(f"slowest layers of {Path(r.artifact).name}, batch {r.batch}: "
                      + ", ".join(f"{k} {v:.3f} ms" for k, v in top))
    for path in (json_path, csv_path, plot_path):
        if path:
            out.print(f"[green]wrote[/] {path}")


@command(json_help="Print the results as JSON.")
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", "out_dir", default="explanations", show_default=True,
              type=click.Path(file_okay=False), help="Folder for NAME.METHOD.png and .npy.")
@flags(ExplainOptions, "method", "layer", "head", "compare", "topk", "fast")
def explain(artifact: str, images: tuple[str, ...], out_dir: str, as_json: bool,
            **kw: Any) -> None:
    """Show where ARTIFACT looks in each of IMAGES (files, folders or globs): a PNG with the
    image as the model saw it, the attention over the patch grid upsampled on top, and the
    top-k prediction, plus the raw grid (H/P x W/P) as .npy.

    The attention is read from ARTIFACT itself, so an FP16 or INT8 model shows its own.
    Any vitedge ONNX model works; a TensorRT engine must be built from an export with
    --attention-outputs."""
    from vitedge.explain import explain_images
    from vitedge.runtime.sources import image_files

    opts = options(ExplainOptions, kw)
    files = image_files(images)
    with progress("explaining", enabled=not as_json) as bar:
        results = explain_images(artifact, files, out_dir, opts, bar)
    warn([f"skipped {name}: {why}" for name, why in results.skipped], False)
    if as_json:
        print_json({"artifact": artifact, "output": out_dir,
                    "explanations": [r.to_dict() for r in results],
                    "skipped": [{"image": name, "error": why} for name, why in results.skipped]})
        return
    compare = opts.compare
    table = Table("image", "prediction", "grid", *(["vs " + Path(compare).name] if compare else []),
                  "figure")
    for r in results:
        pred = r.prediction
        said = (f"{pred['label'] if pred['label'] is not None else pred['class_id']} "
                f"{pred['score']:.2f}" if pred["score"] is not None else "(embedding)")
        row = [r.image, said, f"{r.grid_shape[0]}x{r.grid_shape[1]}"]
        if compare:
            c = r.compare
            row.append(f"cosine {c['similarity']:.4f}, "
                       f"{'same' if c['same_top1'] else 'different'} top-1")
        table.add_row(*row, r.png)
    out.print(table)


@command(name="eval")
@click.argument("artifact", type=click.Path(path_type=str))
@flag(EvalOptions, "data", required=True, default=None, show_default=False)
@flags(EvalOptions, "reference", "limit", "batch")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write the confusion matrix as a picture (PNG); needs matplotlib.")
def eval_(artifact: str, as_json: bool, plot_path: str | None, **kw: Any) -> None:
    """Top-1 / top-5 accuracy of ARTIFACT on a labelled image folder, per class and as a
    confusion matrix, and, with --reference, top-1 agreement, mean KL divergence and logit
    cosine against the reference model."""
    from vitedge.evaluate import confusion_lines, evaluate, write_confusion_plot
    from vitedge.inputs import refuse_overwriting_inputs

    opts = options(EvalOptions, kw)
    refuse_overwriting_inputs(plot_path, artifact, opts.reference)
    with progress("evaluating", not as_json) as bar:
        r = evaluate(artifact, opts, bar)
    if plot_path:
        write_confusion_plot(plot_path, r)
    warn(r.warnings, as_json)
    if as_json:
        print_json({**r.to_dict(), **({"plot": plot_path} if plot_path else {})})
        return
    table = Table("model", "precision", "images", "top-1", "top-5", title=f"accuracy on {opts.data}")
    table.add_row(r.model, r.precision, str(r.images), f"{r.top1:.2%}", f"{r.top5:.2%}")
    if r.reference is not None and r.reference_top1 is not None:
        table.add_row(r.reference + " (reference)", "", str(r.images), f"{r.reference_top1:.2%}", "")
    out.print(table)
    if r.agreement:
        a = r.agreement
        out.print(f"vs reference: top-1 agreement {a.top1_agreement:.2%}, mean KL {a.mean_kl:.2e}, "
                  f"logit cosine {a.cosine:.5f}; top-1 change "
                  f"{(r.top1 - (r.reference_top1 or 0)) * 100:+.2f} points")
    classes = Table("class", "images", "correct", "top-1", title="per class")
    for c in r.per_class:
        classes.add_row(c["label"], str(c["images"]), str(c["correct"]),
                        "-" if c["accuracy"] is None else f"{c['accuracy']:.2%}")
    out.print(classes)
    out.print("confusion matrix (rows: true class, columns: predicted class number):")
    for line in confusion_lines(r):
        out.print(line, highlight=False)
    if plot_path:
        out.print(f"[green]wrote[/] {plot_path}")
    out.print(f"{r.seconds:.1f}s")


@command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@flag(CompareOptions, "data", required=True, default=None, show_default=False)
@flags(CompareOptions, "limit", "iterations")
def compare(artifacts: tuple[str, ...], as_json: bool, **kw: Any) -> None:
    """Several ARTIFACTS of one model side by side: top-1 / top-5 accuracy on a labelled
    folder, top-1 agreement and KL with the first artifact, size on disk and median latency
    per image at batch 1 on this machine."""
    from vitedge.comparison import compare_artifacts

    opts = options(CompareOptions, kw)
    with progress("comparing", not as_json) as bar:
        r = compare_artifacts(list(artifacts), opts, bar)
    warn(r.warnings, as_json)
    if as_json:
        print_json(r.to_dict())
        return
    from rich.table import Column

    table = Table(Column("artifact", overflow="fold"), "backend", "precision", "size MB", "top-1",
                  "top-5", f"agreement vs {Path(artifacts[0]).name}", "mean KL", "ms / image",
                  title=f"{r.images} images of {r.data}; latency: model alone, batch 1, median")
    for c in r.rows:
        table.add_row(Path(c.artifact).name, c.backend, c.precision, f"{c.size_bytes / 1e6:.2f}",
                      f"{c.top1:.2%}", f"{c.top5:.2%}",
                      "reference" if c.agreement is None else f"{c.agreement:.2%}",
                      "" if c.mean_kl is None else f"{c.mean_kl:.1e}", f"{c.latency_ms:.2f}")
    out.print(table)


COMMANDS = [predict, embed, run, bench, explain, eval_, compare]
