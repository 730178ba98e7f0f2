"""The `vitedge` command: each subcommand parses its options, calls one library function
and prints the result. User errors end as one line on stderr and a non-zero exit code."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vitedge import __version__
from vitedge.errors import VitedgeError
from vitedge.options import (
    BUILD_BACKENDS,
    BUILD_PRECISIONS,
    CALIBRATION_METHODS,
    COLOR_ORDERS,
    EXPLAIN_METHODS,
    INPUT_KINDS,
    INSTANCE_KINDS,
    ONNX_BACKENDS,
    PROCESS_MODES,
    SCHEMES,
    BenchOptions,
    BuildOptions,
    CalibrationOptions,
    DeepStreamOptions,
    EvalOptions,
    ExplainOptions,
    ExportOptions,
    PipelineOptions,
    QuantizeOptions,
    QuantizeRequest,
    ServeOptions,
    VerifyOptions,
    default,
)
from vitedge.report import Reporter

out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200)
"""Piped into a log, tables keep their columns instead of folding at 80 characters."""
err = Console(stderr=True, soft_wrap=True)  # an error line or a path is never broken in two
EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3


def _debug_enabled() -> bool:
    return os.environ.get("VITEDGE_DEBUG", "") not in ("", "0")


def _set_debug(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["VITEDGE_DEBUG"] = "1"


debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                            callback=_set_debug, help="Show tracebacks for errors.")


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _warn(warnings: list[str], as_json: bool) -> None:
    """Warnings on stderr, one line each (with --json they go into the JSON instead)."""
    if not as_json:
        for line in warnings:
            err.print(f"[yellow]warning:[/] {line}")


def _json_or_notes(result: Any, as_json: bool) -> bool:
    """Print the result as JSON (True: nothing more to print) or its notes on stderr."""
    if as_json:
        _print_json(result.to_dict())
        return True
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}")
    return False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vitedge")
@debug_option
def cli() -> None:
    """vitedge: a Vision Transformer from a training checkpoint to a fast, verified model
    on an edge device.

    \b
    Typical path:
      vitedge export CHECKPOINT -o model.onnx     verified ONNX with preprocessing + labels
      vitedge inspect model.onnx                  what is inside
      vitedge calibrate model.onnx --data IMAGES  INT8 ranges from real images
      vitedge quantize model.onnx --precision int8 --calib model.calib.json -o int8.onnx
      vitedge eval int8.onnx --data LABELLED --reference model.onnx
      vitedge build model.onnx --precision int8 --data IMAGES   engine or ONNX Runtime model
      vitedge profiles                            device build profiles
      vitedge predict model.int8.ort.onnx photo.jpg   classify images
      vitedge embed dinov2.onnx gallery/ -o gallery.npy   embeddings of a headless model
      vitedge run model.engine --source 0         the camera loop
      vitedge bench a.engine b.ort.onnx --batch 1,8   per-stage latency
      vitedge serve model.int8.ort.onnx           NVIDIA Triton on loopback, HTTP + gRPC
      vitedge export-triton model.engine -o repo  a Triton model repository for a fleet
      vitedge export-deepstream model.onnx -o ds  DeepStream nvinfer config
      vitedge doctor                              what this machine offers
    """


# --- export ---------------------------------------------------------------------------

def _parse_batch(_ctx: click.Context, _param: click.Parameter, value: str) -> int | None:
    if value == "dynamic":
        return None
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter("use 'dynamic' or a positive number")


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the ONNX model (written atomically).")
@click.option("--arch", help="Architecture name (timm or torchvision, e.g. vit_small_patch16_224) "
              "for checkpoints without a config file.")
@click.option("--num-heads", type=click.IntRange(min=1),
              help="Attention heads, when neither a config nor --arch gives them.")
@click.option("--img-size", type=click.IntRange(min=1),
              help="Input size; position embeddings are resampled (bicubic) to it.")
@click.option("--batch", default="dynamic", show_default=True, callback=_parse_batch,
              help="'dynamic' or a fixed batch size.")
@click.option("--opset", default=default(ExportOptions, "opset"), show_default=True, type=int,
              help="ONNX opset (17-20).")
@click.option("--input", "input_kind", type=click.Choice(INPUT_KINDS),
              default=default(ExportOptions, "input_kind"),
              show_default=True, help="Model input: images (B,C,H,W) float, patch vectors "
              "(B,N,C*P*P) float, frames (B,H,W,C) uint8, resized and cropped, which the "
              "graph normalises and patchifies itself, or pixels (B,C,H,W) float 0..255, which "
              "the graph normalises (DeepStream's nvinfer feeds these).")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Class names: a text file, one per line, or JSON.")
@click.option("--attention-outputs", is_flag=True,
              help="Add each block's attention probabilities as outputs attn.N.")
@click.option("--zero-shot", "zero_shot", type=click.Path(dir_okay=False), metavar="LABELS",
              help="CLIP / SigLIP: make the image tower a classifier of these class names (a "
                   "text file, one per line), its head the text embeddings of the prompts, "
                   "computed once here with the checkpoint's text tower (transformers).")
@click.option("--prompt", "prompts", multiple=True, metavar="TEMPLATE",
              help="Zero-shot prompt with {} for the class name; repeat to average several. "
                   f"[default: {default(ExportOptions, 'prompts')[0]!r}]")
@click.option("--zero-shot-embeddings", type=click.Path(dir_okay=False), metavar="TEXT.npy",
              help="The classes' text embeddings (classes x size) instead of a text tower "
                   "(for an image tower alone, e.g. timm's).")
@click.option("--logit-scale", type=float, help="Zero-shot logit scale [default: the text "
              "tower's; CLIP's 100 with --zero-shot-embeddings].")
@click.option("--logit-bias", type=float, help="SigLIP's logit bias [default: the text tower's].")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def export(checkpoint: str, output: str, arch: str | None, num_heads: int | None,
           img_size: int | None, batch: int | None, opset: int, input_kind: str,
           labels: str | None, attention_outputs: bool, zero_shot: str | None,
           prompts: tuple[str, ...], zero_shot_embeddings: str | None,
           logit_scale: float | None, logit_bias: float | None, no_verify: bool,
           as_json: bool) -> None:
    """Export CHECKPOINT (timm, Hugging Face, torchvision or vitedge; a file or a folder)
    to an ONNX model with its preprocessing and labels inside, verified against PyTorch.
    A model without a classification head (DINOv2, CLIP / SigLIP image towers) outputs its
    embedding; with --zero-shot, a CLIP / SigLIP tower becomes a classifier."""
    from vitedge.export import export_onnx

    opts = ExportOptions(arch=arch, num_heads=num_heads, img_size=img_size, labels=labels,
                         batch=batch, opset=opset, input_kind=input_kind,
                         verify=not no_verify, attention_outputs=attention_outputs,
                         zero_shot=zero_shot, prompts=prompts or default(ExportOptions, "prompts"),
                         zero_shot_embeddings=zero_shot_embeddings, logit_scale=logit_scale,
                         logit_bias=logit_bias)
    with _progress("exporting", not as_json) as progress:
        result = export_onnx(checkpoint, output, opts, progress)
    if _json_or_notes(result, as_json):
        return
    m = result.manifest
    cfg = m.architecture
    out.print(f"[green]wrote[/] {result.output} ({result.size_bytes / 1e6:.1f} MB): "
              f"{m.source.get('format')} checkpoint, {cfg.depth} blocks, dim {cfg.embed_dim}, "
              f"{cfg.num_heads} heads, {cfg.img_size[0]}x{cfg.img_size[1]} / patch {cfg.patch_size}, "
              f"input '{m.input}', output '{m.output_name}': {m.outputs()[m.output_name]}")
    if result.comparisons:
        table = Table(title="verification: ONNX Runtime vs PyTorch (float32, tolerance 1e-4 rel.)")
        for col in ("inputs", "max abs", "relative", "cosine", "top-1 agree"):
            table.add_column(col, justify="right")
        for c in result.comparisons:
            table.add_row(c.case, f"{c.max_abs:.2e}", f"{c.relative:.2e}", f"{c.cosine:.7f}",
                          f"{c.top1_agreement:.0%}")
        out.print(table)
    else:
        err.print("[yellow]not verified[/] (--no-verify)")
    out.print("steps: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items()))


# --- inspect --------------------------------------------------------------------------

@cli.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("--pos-embed", type=click.Path(dir_okay=False), metavar="OUT.png",
              help="Also draw the position-embedding similarity figure of the ViT paper: for "
                   "each patch position, its embedding's cosine similarity with all others.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@debug_option
def inspect(artifact: str, pos_embed: str | None, as_json: bool) -> None:
    """Show what ARTIFACT holds: manifest, inputs and outputs, parameters, GMACs, tokens,
    operator histogram and precision; for a TensorRT engine, what its description records
    (GPU, TensorRT, precision, batch range, I/O)."""
    from vitedge.describe import describe_engine, describe_onnx

    if pos_embed:
        from vitedge.explain import write_position_embedding_figure

        figure = write_position_embedding_figure(artifact, pos_embed)
        if as_json:
            _print_json({"pos_embed": figure, **describe_onnx(artifact)})
            return
        out.print(f"position-embedding similarity ({figure['grid'][0]}x{figure['grid'][1]} "
                  f"positions, dim {figure['dim']}): {figure['figure']}")
    from vitedge.backends import is_engine

    if is_engine(artifact):
        engine = describe_engine(artifact)
        if as_json:
            _print_json(engine)
            return
        e = engine["engine"]
        rtx = e.get("backend") == "tensorrt-rtx"
        product = "TensorRT for RTX" if rtx else "TensorRT"
        t = Table(show_header=False, title=f"{artifact} ({engine['size_bytes'] / 1e6:.1f} MB)")
        t.add_row("built for", f"{e['gpu_name']} (compute {e['compute_capability']}), {product} "
                  f"{e['tensorrt_version']}")
        t.add_row("precision / batch", f"{e['precision']} / {e['batch']} (profile {e['profile']})")
        for kind in ("inputs", "outputs"):
            t.add_row(kind, ", ".join(f"{v.get('name')} {v.get('shape')} {v.get('dtype')}"
                                      for v in e[kind]))
        if rtx:
            r = e.get("runtime") or {}
            t.add_row("runtime", f"kernels JIT-compiled on the GPU ({r.get('dynamic_shapes', 'lazy')} "
                      f"specialisation, CUDA graphs {r.get('cuda_graph_strategy', 'disabled')}), "
                      f"runtime cache {'beside the engine' if r.get('runtime_cache', True) else 'off'}")
        else:
            t.add_row("compatibility", f"hardware {e['hardware_compatibility']}, version "
                      f"compatible {e['version_compatible']}")
        t.add_row("from ONNX", f"sha256 {e['onnx_sha256'][:16]}...; built in {e['build_seconds']} s "
                  f"by vitedge {e['vitedge_version']}")
        t.add_row("verified", _verification_line(e.get("verification") or {}))
        out.print(t)
        return
    info = describe_onnx(artifact)
    if as_json:
        _print_json(info)
        return
    out.print(f"[bold]{info['path']}[/] ({info['size_bytes'] / 1e6:.1f} MB, opset {info['opset']})")
    io = Table("", "name", "shape", "dtype", title="inputs and outputs")
    for kind in ("inputs", "outputs"):
        for v in info[kind]:
            io.add_row(kind[:-1], v["name"], str(v["shape"]), v["dtype"])
    out.print(io)
    summary = Table(show_header=False, title="model")
    summary.add_row("parameters", f"{info['parameters'] / 1e6:.2f} M")
    manifest = info["manifest"]
    if manifest:
        a, p = manifest["architecture"], manifest["preprocess"]
        summary.add_row("GMACs / image", f"{info['gmacs']:.3f}")
        t = info["tokens"]
        summary.add_row("tokens", f"{t['total']} = {t['prefix']} prefix + {t['patches']} patches "
                        f"({t['grid'][0]}x{t['grid'][1]} grid)")
        extras = [f"{a['act']}" if a.get("act") else "", "SwiGLU" if a.get("mlp") == "swiglu" else "",
                  "sub-LN" if a.get("mlp_norm") or a.get("attn_norm") else "",
                  "rotary embedding" if a.get("rope") else "", "pre-norm" if a["pre_norm"] else "",
                  f"{a['reg_tokens']} registers" if a["reg_tokens"] else "",
                  f"projection {a['embed_proj']}" if a.get("embed_proj") else "",
                  "zero-shot head" if a.get("head_l2norm") else "",
                  "distilled" if a["dist_token"] else ""]
        summary.add_row("architecture", f"dim {a['embed_dim']}, depth {a['depth']}, heads "
                        f"{a['num_heads']}, mlp {a['mlp_hidden']}, patch {a['patch_size']}, "
                        f"pool {a['global_pool']}" + "".join(f", {x}" for x in extras if x))
        for name, what in (manifest.get("outputs") or {}).items():
            summary.add_row(f"output {name}", what)
        summary.add_row("preprocess", f"{p['resize_mode']} resize {p['resize']} {p['interpolation']}, "
                        f"crop {p['crop']}, mean {p['mean']}, std {p['std']}")
        labels = manifest["labels"]
        summary.add_row("labels", f"{len(labels)}: {', '.join(labels[:5])}"
                        f"{', ...' if len(labels) > 5 else ''}" if labels else "none")
        src = manifest["source"]
        summary.add_row("source", f"{src.get('format')} {src.get('file')} "
                        f"({src.get('stored_dtype')}), sha256 {str(src.get('sha256'))[:16]}...")
        summary.add_row("made by", f"vitedge {manifest['vitedge_version']}, manifest schema "
                        f"{manifest['schema']}")
        if src.get("backend"):
            summary.add_row("built", f"{src['backend']} {src.get('onnxruntime_version', '')}, "
                            f"profile {src.get('profile')}"
                            + (f", INT8 weights {src['int8_weight_bits']}-bit (exact on every CPU)"
                               if src.get("int8_weight_bits") == 7 else ""))
            summary.add_row("verified", _verification_line(src.get("verification") or {}))
    else:
        summary.add_row("manifest", "none (not made by vitedge)")
    prec = info["precision"]
    summary.add_row("precision", f"{prec['declared']}; weights "
                    + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in prec["weights_by_dtype"].items())
                    + f"; Q/DQ nodes {prec['qdq_nodes']}")
    out.print(summary)
    out.print("ops: " + ", ".join(f"{k} {v}" for k, v in info["op_histogram"].items()))


def _verification_line(v: dict[str, Any]) -> str:
    """The build's verification of an artifact, in one line."""
    if v.get("skipped"):
        return str(v["skipped"])
    if not v:
        return "no (built without verification, or by an older vitedge)"
    parts = [f"vs {v['graph']} {v['vs_graph']['top1_agreement']:.2%}"]
    if v.get("vs_fp32"):
        parts.append(f"vs FP32 {v['vs_fp32']['top1_agreement']:.2%} (KL {v['vs_fp32']['mean_kl']:.1e})")
    return f"on {v['data']} with {v['backend']} on {v['device']}: top-1 agreement " + ", ".join(parts)


# --- calibrate, quantize, eval -----------------------------------------------------------

class _Bar(Reporter):
    """The stages' reporter on stderr: a progress bar named after the step, and warnings
    as yellow lines. With --json the bar is off and warnings still go to stderr."""

    def __init__(self, bar: Any = None):
        self.bar = bar
        self.task = bar.add_task("", total=None) if bar else None

    def progress(self, done: int, total: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=done, total=total)

    def step(self, name: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=name, completed=0, total=None)

    def warning(self, message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}")


@contextlib.contextmanager
def _progress(label: str, enabled: bool = True) -> Iterator[_Bar]:
    if not enabled:
        yield _Bar()
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        progress = _Bar(bar)
        progress.step(label)
        yield progress


def _calibration_options(method: str, percentile: float, num_images: int, batch: int,
                         smooth: float) -> CalibrationOptions:
    return CalibrationOptions(method=method, percentile=percentile, num_images=num_images,
                              batch=batch, smooth_alpha=smooth)


def _calibration_default(name: str) -> Any:
    return default(CalibrationOptions, name)


def calibration_flags(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed([
        click.option("--num-images", default=_calibration_default("num_images"), show_default=True,
                     type=click.IntRange(min=1),
                     help="Images to calibrate on (a seeded sample when the source has more)."),
        click.option("--method", type=click.Choice(CALIBRATION_METHODS),
                     default=_calibration_default("method"), show_default=True,
                     help="How a tensor's histogram becomes its INT8 range."),
        click.option("--percentile", default=_calibration_default("percentile"), show_default=True,
                     type=float, help="For --method percentile: the share of |x| kept unclipped."),
        click.option("--batch", default=_calibration_default("batch"), show_default=True,
                     type=click.IntRange(min=1), help="Images per ONNX Runtime run."),
        click.option("--smooth", default=_calibration_default("smooth_alpha"), show_default=True,
                     type=float,
                     help="Channel-equalisation strength alpha (SmoothQuant); 0 turns it off."),
    ]):
        f = option(f)
    return f


@cli.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Images: a folder (recursive), a text file of paths, a video, or .npy/.npz "
              "of preprocessed inputs.")
@calibration_flags
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Calibration table (JSON) [default: MODEL.calib.json]; the TensorRT cache "
              "goes beside it.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def calibrate(model: str, data: str, num_images: int, method: str, percentile: float, batch: int,
              smooth: float, output: str | None, as_json: bool) -> None:
    """Measure the INT8 range of every activation of the FP32 MODEL on real images, with
    the model's own preprocessing. Writes a calibration table (JSON) and a TensorRT
    calibration cache (for TensorRT <= 10 implicit INT8). A table made from the same model,
    data and options is reused."""
    from dataclasses import replace

    from vitedge.quantize.calibrate import calibrate as run_calibration

    opts = _calibration_options(method, percentile, num_images, batch, smooth)
    with _progress("calibrating", not as_json) as progress:
        result = run_calibration(model, output, replace(opts, data=data), progress)
    t = result.table
    if as_json:
        _print_json({"table": str(result.output), "tensorrt_cache": str(result.cache),
                     "reused": result.reused, "tensors": len(t.tensors),
                     "equalized_tensors": len(t.smoothed_tensors), "data": t.data,
                     "options": t.options, "stats": t.stats})
        return
    verb = "reused" if result.reused else "wrote"
    out.print(f"[green]{verb}[/] {result.output}: {len(t.tensors)} tensors, method {method}, "
              f"{t.data['count']} images from {t.data['kind']} {t.data['source']}"
              + (f", {len(t.smoothing)} equalised Linear inputs" if t.smoothing else ""))
    out.print(f"[green]{verb}[/] {result.cache} (TensorRT calibration cache, FP32 model as given)")
    s = t.stats
    if s and not result.reused:
        out.print(f"{s['images']} images in {s['seconds']:.1f}s, peak memory {s['peak_rss_mb']:.0f} MB"
                  + (f", {len(s['broken'])} unreadable skipped" if s["broken"] else ""))


@cli.command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--precision", type=click.Choice(["int8", "fp16"]), required=True,
              help="int8: explicit Q/DQ; fp16: float16 weights and activations.")
@click.option("--calib", type=click.Path(dir_okay=False),
              help="A calibration table from `vitedge calibrate`.")
@click.option("--data", type=click.Path(path_type=str),
              help="Images to calibrate on (instead of --calib; the table goes to "
              "MODEL.calib.json and is reused), to check the result against FP32 on, and "
              "with --sensitivity to rank layers on.")
@click.option("--scheme", type=click.Choice(SCHEMES), default=default(QuantizeOptions, "scheme"), show_default=True,
              help="vit: Linear and patch-embedding inputs and weights only; all: every op "
              "(naive baseline).")
@click.option("--quantize-attention", is_flag=True,
              help="Also Q/DQ the attention matmuls' inputs (TensorRT's INT8 fused attention).")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Layer names to keep in float (fnmatch, e.g. 'blocks.0.*', 'head'). Repeatable.")
@click.option("--sensitivity", default=default(QuantizeRequest, "sensitivity"),
              type=click.IntRange(min=0), metavar="N",
              help="Rank layers by their effect on the output; keep the N most sensitive in float.")
@click.option("--no-smooth", is_flag=True,
              help="Ignore the table's channel equalisation (the default for --scheme all).")
@calibration_flags
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the quantized ONNX model (atomically).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def quantize(model: str, precision: str, calib: str | None, data: str | None, scheme: str,
             quantize_attention: bool, exclude: tuple[str, ...], sensitivity: int,
             no_smooth: bool, num_images: int, method: str, percentile: float, batch: int,
             smooth: float, output: str, as_json: bool) -> None:
    """Quantize the FP32 MODEL to INT8 (explicit Q/DQ, symmetric, weights per channel) or
    FP16 (LayerNorm in float32, inputs and outputs float32), for TensorRT 10 and 11 and ONNX
    Runtime. The output is checked against TensorRT's parser rules and compared with the FP32
    model on up to 64 of the --data images."""
    from vitedge.options import QuantizeOptions
    from vitedge.quantize.quantizer import quantize_model

    if calib and data and precision == "int8" and not sensitivity:
        err.print("[yellow]note:[/] --calib given: --data is used only to check the result")
    request = QuantizeRequest(
        precision=precision, calib=calib, data=data,
        calibration=_calibration_options(method, percentile, num_images, batch, smooth),
        qdq=QuantizeOptions(scheme=scheme, attention=quantize_attention, exclude=exclude,
                            smooth=False if no_smooth else None),
        sensitivity=sensitivity)
    with _progress("quantizing", not as_json) as progress:
        result = quantize_model(model, output, request, progress)
    if _json_or_notes(result, as_json):
        return
    out.print(f"[green]wrote[/] {result.output} ({result.size_bytes / 1e6:.2f} MB, {precision})")
    if precision == "int8":
        out.print(f"quantized {len(result.quantized_layers)} layers ({scheme} scheme"
                  + (", attention" if quantize_attention else "") + ")"
                  + (f"; kept in float: {', '.join(result.float_layers)}" if result.float_layers else ""))
    else:
        out.print(f"{len(result.fp32_nodes)} nodes kept in float32 (LayerNorm"
                  + (f"; overflow risk: {', '.join(result.overflow_nodes)}" if result.overflow_nodes
                     else "") + ")")
    if result.sensitivity:
        table = Table("rank", "layer", "KL alone", title="layer sensitivity (most sensitive first)")
        for i, (name, kl) in enumerate(result.sensitivity[:max(10, sensitivity)]):
            table.add_row(str(i + 1), name + (" (kept float)" if i < sensitivity else ""), f"{kl:.2e}")
        out.print(table)
    if result.check:
        c = result.check
        out.print(f"vs FP32 on {result.check_images} calibration images, the graph in float "
                  f"(as TensorRT reads it): top-1 agreement {c.top1_agreement:.1%}, mean KL "
                  f"{c.mean_kl:.2e}, logit cosine {c.cosine:.5f}")
        if result.check_integer_exact:
            e = result.check_integer_exact
            out.print(f"  on ONNX Runtime's integer kernels (vitedge's CPU weights): top-1 "
                      f"agreement {e.top1_agreement:.1%}, mean KL {e.mean_kl:.2e}")
    from vitedge.backends.tensorrt_rtx.parser import available

    out.print("TensorRT's parser: ok (" + ("TensorRT for RTX's ONNX parser and " if available()
                                            else "") + "vitedge's operator table: symmetric "
              "Q/DQ, no int32 bias, supported ops)")


@cli.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="A folder with one sub-folder of images per class, named after the labels.")
@click.option("--reference", type=click.Path(path_type=str),
              help="Another model (e.g. the FP32 export) to compare with on the same images.")
@click.option("--limit", type=click.IntRange(min=1), help="Evaluate a seeded sample of this many.")
@click.option("--batch", default=default(EvalOptions, "batch"), show_default=True,
              type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def eval_(artifact: str, data: str, reference: str | None, limit: int | None, batch: int,
          as_json: bool) -> None:
    """Top-1 / top-5 accuracy of ARTIFACT on a labelled image folder and, with --reference,
    top-1 agreement, mean KL divergence and logit cosine against the reference model."""
    from vitedge.evaluate import evaluate

    with _progress("evaluating", not as_json) as progress:
        r = evaluate(artifact, EvalOptions(data=data, reference=reference, batch=batch,
                                           limit=limit), progress)
    _warn(r.warnings, as_json)
    if as_json:
        _print_json(r.to_dict())
        return
    table = Table("model", "precision", "images", "top-1", "top-5", title=f"accuracy on {data}")
    table.add_row(r.model, r.precision, str(r.images), f"{r.top1:.2%}", f"{r.top5:.2%}")
    if r.reference is not None and r.reference_top1 is not None:
        table.add_row(r.reference + " (reference)", "", str(r.images), f"{r.reference_top1:.2%}", "")
    out.print(table)
    if r.agreement:
        a = r.agreement
        out.print(f"vs reference: top-1 agreement {a.top1_agreement:.2%}, mean KL {a.mean_kl:.2e}, "
                  f"logit cosine {a.cosine:.5f}; top-1 change "
                  f"{(r.top1 - (r.reference_top1 or 0)) * 100:+.2f} points")
    out.print(f"{r.seconds:.1f}s")


# --- doctor, archs --------------------------------------------------------------------

@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@debug_option
def doctor(as_json: bool) -> None:
    """Check Python, ONNX Runtime, torch, TensorRT, pycuda / cuda-python and the GPU, and
    say what to install where something is missing."""
    from dataclasses import asdict

    from vitedge.doctor import run_checks

    checks = run_checks()
    if as_json:
        _print_json([asdict(c) for c in checks])
        return
    table = Table("", "component", "found", "to fix")
    for c in checks:
        table.add_row("[green]ok[/]" if c.ok else "[yellow]--[/]", c.name, c.detail,
                      "" if c.ok else c.fix)
    out.print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@debug_option
def archs(as_json: bool) -> None:
    """List the architecture names --arch accepts."""
    from vitedge.model.archs import ARCHITECTURES

    rows = [{"name": a.name, **{k: a.args[k] for k in ("embed_dim", "depth", "num_heads",
                                                        "patch_size", "img_size")},
             "distilled": a.distilled, "layout": a.layout} for a in ARCHITECTURES.values()]
    if as_json:
        _print_json(rows)
        return
    table = Table("name", "dim", "depth", "heads", "patch", "image", "layout")
    for r in rows:
        table.add_row(r["name"], str(r["embed_dim"]), str(r["depth"]), str(r["num_heads"]),
                      str(r["patch_size"]), str(r["img_size"]), r["layout"])
    out.print(table)


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=str))
@click.option("--precision", type=click.Choice(BUILD_PRECISIONS),
              help="Default: the profile's (int8 for GPUs and CPUs alike).")
@click.option("--data", type=click.Path(path_type=str),
              help="Images to calibrate on (int8; a matching MODEL.calib.json is reused) and to "
                   "hold out for verifying the artifact.")
@click.option("--calib", type=click.Path(dir_okay=False), help="A calibration table instead of --data.")
@click.option("--profile", help="Device profile name or TOML file (`vitedge profiles`); "
              "default: the one `vitedge doctor` suggests for this machine.")
@click.option("--backend", type=click.Choice(BUILD_BACKENDS), default=default(BuildOptions, "backend"),
              show_default=True, help="auto: TensorRT when it and a GPU are present, else ONNX Runtime.")
@click.option("--batch", metavar="MIN:OPT:MAX", help="TensorRT optimization profile's batch range "
              "(default: the profile's).")
@click.option("--timing-cache", type=click.Path(dir_okay=False),
              help="TensorRT timing cache to load and save (faster rebuilds).")
@click.option("--scheme", type=click.Choice(SCHEMES), default=default(QuantizeOptions, "scheme"), show_default=True,
              help="INT8 Q/DQ placement (see `vitedge quantize --help`).")
@click.option("--quantize-attention", is_flag=True, help="INT8: Q/DQ for TensorRT's fused attention.")
@click.option("--num-images", default=_calibration_default("num_images"), show_default=True,
              type=click.IntRange(min=1), help="Calibration images taken from --data.")
@click.option("--method", type=click.Choice(CALIBRATION_METHODS),
              default=_calibration_default("method"), show_default=True, help="Calibration method.")
@click.option("--verify-images", default=default(VerifyOptions, "images"), show_default=True,
              type=click.IntRange(min=1),
              help="Images of --data held out of calibration to verify the artifact on "
                   "(at most a quarter of --data).")
@click.option("--min-agreement", default=default(VerifyOptions, "min_agreement"), show_default=True,
              type=click.FloatRange(0, 1), help="Least top-1 agreement of the artifact with "
              "the graph it was built from (INT8: its Q/DQ graph in float); below it the build "
              "fails and writes nothing.")
@click.option("--min-fp32-agreement", default=default(VerifyOptions, "min_fp32_agreement"),
              show_default=True, type=click.FloatRange(0, 1),
              help="Least top-1 agreement with the FP32 model; below it quantization collapsed "
                   "and the build fails.")
@click.option("--no-verify", is_flag=True, help="Skip the check of the built artifact.")
@click.option("--force", is_flag=True, help="Replace intermediate models beside the artifact "
              "(MODEL.onnx, MODEL.PRECISION.onnx) even when this build did not make them.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The artifact [default: INPUT.PRECISION.engine or INPUT.PRECISION.ort.onnx].")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def build(input_path: str, precision: str | None, data: str | None, calib: str | None,
          profile: str | None, backend: str, batch: str | None, timing_cache: str | None,
          scheme: str, quantize_attention: bool, num_images: int, method: str,
          verify_images: int, min_agreement: float, min_fp32_agreement: float,
          no_verify: bool, force: bool, output: str | None, as_json: bool) -> None:
    """Build the deployable artifact for this machine from INPUT (a checkpoint, exported
    first, or a vitedge ONNX model): a TensorRT engine (+ ENGINE.json) where TensorRT and a
    GPU are present, else an optimized ONNX Runtime model. INT8 and FP16 are quantized in
    the graph first, so TensorRT 10 and 11 build them the same way. The artifact is then
    verified on this machine, with the backend that will run it, on images of --data held
    out of calibration: against the graph it was built from and against FP32."""
    from vitedge.deploy import build as run_build
    from vitedge.options import QuantizeOptions

    options = BuildOptions(precision=precision, data=data, calib=calib, profile=profile,
                           backend=backend, batch=batch, timing_cache=timing_cache, force=force,
                           qdq=QuantizeOptions(scheme=scheme, attention=quantize_attention),
                           calibration=CalibrationOptions(method=method, num_images=num_images),
                           verify=VerifyOptions(enabled=not no_verify, images=verify_images,
                                                min_agreement=min_agreement,
                                                min_fp32_agreement=min_fp32_agreement))
    with _progress("building", not as_json) as progress:
        result = run_build(input_path, output, options, progress)
    if _json_or_notes(result, as_json):
        return
    out.print(f"backend: [bold]{result.backend}[/] ({result.backend_reason})")
    for name, seconds in result.steps.items():
        out.print(f"  {name:<22} {seconds:7.2f} s")
    _print_verification(result.verification)
    summary = Table(show_header=False, title="built")
    summary.add_row("artifact", f"{result.artifact} ({result.size_bytes / 1e6:.2f} MB)")
    summary.add_row("precision", result.precision)
    summary.add_row("backend", result.backend)
    summary.add_row("profile", result.profile)
    summary.add_row("device", result.device)
    summary.add_row("build time", f"{result.seconds:.1f} s")
    if result.intermediate:
        summary.add_row("also wrote", ", ".join(result.intermediate))
    out.print(summary)


def _print_verification(v: dict[str, Any]) -> None:
    if not v:
        err.print("[yellow]not verified[/] (--no-verify)")
        return
    out.print(f"verified on {v['data']} ({v['backend']}, {v['device']}):")
    rows = [("vs " + v["graph"], v["vs_graph"], v["min_agreement"]),
            ("vs the FP32 model", v["vs_fp32"], v["min_fp32_agreement"]),
            ("vs the 8-bit Q/DQ graph TensorRT gets", v["vs_tensorrt_graph"], None)]
    from vitedge.compare import MIN_DECIDED

    for what, a, least in rows:
        if not a:
            continue
        decided = a.get("decided", a["images"])
        if not v.get("classifier", True):
            top1 = ""  # an embedding: judged by cosine
        elif decided >= MIN_DECIDED:
            bar = f", at least {least:.0%}" if least is not None and v["judged"] else ""
            top1 = (f"top-1 agreement {a.get('decided_agreement', a['top1_agreement']):.2%} "
                    f"({decided} decided inputs{bar}; {a['top1_agreement']:.2%} of all), ")
        else:
            top1 = (f"top-1 agreement {a['top1_agreement']:.2%} (near ties: the reference "
                    f"decides only {decided} inputs, so cosine is judged), ")
        out.print(f"  {what}: {top1}mean KL {a['mean_kl']:.2e}, cosine {a['cosine']:.5f} "
                  f"(min {a['cosine_min']:.5f})")


# --- predict, run, bench ----------------------------------------------------------------

pipeline_options = [
    click.option("--fast", is_flag=True, help="OpenCV preprocessing (faster on a weak CPU; "
                 "not bit-exact with the reference libraries, see `vitedge bench`)."),
    click.option("--device", type=click.Choice(["cpu", "gpu"]),
                 help="For .onnx: ONNX Runtime on the CPU, or its CUDA/TensorRT providers."),
    click.option("--streams", default=default(PipelineOptions, "streams"), show_default=True,
                 type=click.IntRange(min=1),
                 help="Frames in flight at once, each on its share of the CPU cores (ONNX "
                      "Runtime). 1: every core on one frame, the lowest latency; the number "
                      "of cores: the most frames/s, each frame slower."),
]


def _with(options: list[Callable[..., Any]]) -> Callable[..., Any]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            f = option(f)
        return f
    return decorate


def _image_files(specs: tuple[str, ...]) -> list[Path]:
    """Image files from files, folders and globs; a video or camera is refused."""
    from vitedge.runtime.sources import FrameSource

    files = []
    for spec in specs:
        source = FrameSource(spec)
        if source.kind not in ("image", "folder", "glob"):
            raise VitedgeError(f"{spec} is a {source.kind}, not an image",
                               "use `vitedge run --source` for videos and cameras")
        files += source.files
    return files


@cli.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--topk", default=default(PipelineOptions, "topk"), show_default=True,
              type=click.IntRange(min=1))
@click.option("--embeddings", is_flag=True,
              help="A headless model (DINOv2, CLIP / SigLIP image tower): show each image's "
                   "embedding (with --json, every value).")
@click.option("--normalize", is_flag=True, help="L2-normalise the embeddings.")
@_with(pipeline_options)
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@debug_option
def predict(artifact: str, images: tuple[str, ...], topk: int, embeddings: bool,
            normalize: bool, fast: bool, device: str | None, streams: int, as_json: bool) -> None:
    """Classify IMAGES (files, folders or globs) with ARTIFACT (.engine or .onnx); a model
    without a classification head gives each image's embedding instead."""
    import vitedge

    with vitedge.open(artifact, topk=topk, fast=fast, device=device, streams=streams,
                      normalize_embeddings=normalize) as pipe:
        if embeddings and pipe.manifest.is_classifier:
            raise VitedgeError(f"{Path(artifact).name} is a classifier: it outputs class scores, "
                               "not embeddings", "export the checkpoint without its head, or "
                               "drop --embeddings")
        _warn(pipe.warnings, as_json)
        files = _image_files(images)
        results = [(str(file), p) for file, p in pipe.stream(files)]
    skipped = [{"image": name, "error": why} for name, why in pipe.skipped]
    _warn([f"skipped {s['image']}: {s['error']}" for s in skipped], as_json)
    if not results:
        raise VitedgeError(f"none of the {len(files)} images could be read", "check the files")
    if as_json:
        _print_json({"artifact": artifact, "warnings": pipe.warnings, "skipped": skipped,
                     "outputs": pipe.manifest.outputs(),
                     "predictions": [{"image": name, **p.to_dict()} for name, p in results]})
        return
    if not pipe.manifest.is_classifier:
        table = Table("image", "embedding", "norm", "first values", "ms")
        import numpy as np

        for name, p in results:
            e = p.embedding if p.embedding is not None else np.zeros(0, np.float32)
            shown = e if embeddings else e[:4]
            table.add_row(name, f"{e.shape[0]} floats", f"{float(np.linalg.norm(e)):.4f}",
                          " ".join(f"{v:+.4f}" for v in shown) + ("" if embeddings else " ..."),
                          f"{sum(p.timings.values()):.1f}")
        out.print(table)
        return
    table = Table("image", "label", "score", f"top-{topk}", "ms")
    for name, p in results:
        table.add_row(name, str(p.label if p.label is not None else p.class_id), f"{p.score:.3f}",
                      ", ".join(f"{lab if lab is not None else i} {s:.2f}" for i, lab, s in p.topk[1:]),
                      f"{sum(p.timings.values()):.1f}")
    out.print(table)


@cli.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The embeddings as a .npy array (N, D) float32; the images' paths, one per "
                   "row, go to OUTPUT with the suffix .paths.txt.")
@click.option("--normalize", is_flag=True, help="L2-normalise the embeddings (for cosine "
              "similarity as a dot product).")
@click.option("--batch", default=default(PipelineOptions, "batch"), show_default=True,
              type=click.IntRange(min=1), help="Images per inference.")
@_with(pipeline_options)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def embed(artifact: str, images: tuple[str, ...], output: str, normalize: bool, batch: int,
          fast: bool, device: str | None, streams: int, as_json: bool) -> None:
    """Embed IMAGES (files, folders or globs) with ARTIFACT, a model without a
    classification head (DINOv2, CLIP / SigLIP image towers): a gallery for retrieval,
    few-shot or anomaly detection. Unreadable images are skipped and named."""
    from vitedge.runtime.embed import embed_images

    files = _image_files(images)
    with _progress("embedding", not as_json) as progress:
        result = embed_images(artifact, files, output,
                              PipelineOptions(fast=fast, device=device, streams=streams,
                                              batch=batch, normalize_embeddings=normalize),
                              progress)
    if as_json:
        _print_json(result.to_dict())
        return
    _warn([f"skipped {name}: {why}" for name, why in result.skipped], False)
    out.print(f"[green]wrote[/] {result.output} ({result.count} x {result.dim} float32"
              f"{', L2-normalised' if normalize else ''}) and {result.paths}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("--source", required=True, help="Video file, camera index or /dev/videoN, "
              "rtsp:// or http:// stream, GStreamer pipeline, image folder or glob.")
@click.option("--output", type=click.Path(dir_okay=False), help="Write the annotated frames to "
              "a video (.mp4, .avi).")
@click.option("--display", is_flag=True, help="Show the annotated frames in a window (q quits).")
@click.option("--max-frames", type=click.IntRange(min=1), help="Stop after this many frames.")
@click.option("--reconnect-for", type=click.FloatRange(min=0), metavar="SECONDS",
              help="A live source that drops is reconnected until it is back; after this many "
                   "seconds without a frame it counts as gone (exit 1). Default: keep trying.")
@click.option("--color", type=click.Choice(COLOR_ORDERS), default=default(PipelineOptions, "color"),
              show_default=True,
              help="Channel order of the source's frames (OpenCV gives BGR).")
@_with(pipeline_options)
@click.option("--json", "as_json", is_flag=True, help="Print the stage timings as JSON at the end.")
@debug_option
def run(artifact: str, source: str, output: str | None, display: bool, max_frames: int | None,
        color: str, reconnect_for: float | None, fast: bool, device: str | None, streams: int,
        as_json: bool) -> None:
    """The camera loop: classify every frame of --source, draw the label and FPS on it,
    and print per-stage timings at the end. A live source that drops is reconnected with
    growing waits (every attempt shown); one that stays away longer than --reconnect-for
    ends the run with exit code 1."""
    from vitedge.runtime.run_loop import run_loop
    from vitedge.runtime.sources import SourceOptions

    try:
        summary = run_loop(artifact, source, output=output, display=display,
                           max_frames=max_frames,
                           pipeline=PipelineOptions(color=color, fast=fast, device=device,
                                                    streams=streams),
                           source_options=SourceOptions(reconnect_for=reconnect_for),
                           log=err.print)
    except VitedgeError as exc:
        if as_json and exc.details:
            _print_json(exc.details)
        raise
    _warn(summary["warnings"], as_json)
    if as_json:
        _print_json(summary)
        return
    _print_stage_table(summary["stages"], f"{summary['frames']} frames, {summary['fps']:.1f} FPS "
                       f"({summary['dropped']} dropped)")


def _print_stage_table(stages: dict[str, Any], title: str) -> None:
    table = Table("stage", "mean ms", "p50", "p90", "p99", "max", title=title)
    for stage, s in stages.items():
        table.add_row(stage, f"{s['mean']:.3f}", f"{s['p50']:.3f}", f"{s['p90']:.3f}",
                      f"{s['p99']:.3f}", f"{s['max']:.3f}")
    out.print(table)


def _counts(values: tuple[int, ...]) -> str:
    return ",".join(str(v) for v in values)


def _parse_counts(_ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("use numbers like 1 or 1,2") from None
    if any(n < 1 for n in counts):
        raise click.BadParameter(f"{param.name} must be positive")
    return counts


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--batch", "batches", default=_counts(default(BenchOptions, "batches")),
              show_default=True, callback=_parse_counts,
              help="Batch sizes, comma-separated (1,8).")
@click.option("--warmup", default=default(BenchOptions, "warmup"), show_default=True,
              type=click.IntRange(min=0))
@click.option("--iterations", default=default(BenchOptions, "iterations"), show_default=True,
              type=click.IntRange(min=1))
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              help="Run for this many seconds instead of --iterations.")
@click.option("--source", help="Frames from a source (default: random 640x480 BGR frames).")
@click.option("--fast", is_flag=True, help="OpenCV preprocessing.")
@click.option("--streams", default=_counts(default(BenchOptions, "streams")), show_default=True,
              callback=_parse_counts,
              help="Frames in flight at once, comma-separated (1,2): each artifact runs with "
                   "each, interleaved; more streams give more frames/s on a CPU (ONNX Runtime).")
@click.option("--layers", is_flag=True, help="Per-layer times (TensorRT profiler; ONNX Runtime "
              "profiling on the CPU).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the results, machine and versions as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="Write a CSV table.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Write a plot (stage breakdown, latency percentiles); needs matplotlib.")
@debug_option
def bench(artifacts: tuple[str, ...], batches: tuple[int, ...], warmup: int, iterations: int,
          duration: float | None, source: str | None, fast: bool, streams: tuple[int, ...],
          layers: bool, json_path: str | None, csv_path: str | None, plot_path: str | None) -> None:
    """Latency of the whole pipeline per stage (decode, preprocess, patchify, infer,
    postprocess) and end to end: mean, p50, p90, p99, max and throughput. Several
    ARTIFACTS run interleaved in one process and are compared as ratios."""
    from pathlib import Path

    from vitedge import bench as benchmark
    from vitedge.fileio import refuse_overwriting_inputs
    from vitedge.runtime.pipeline import STAGES as STAGE_NAMES

    for path in (json_path, csv_path, plot_path):
        refuse_overwriting_inputs(path, *artifacts, source)
    options = BenchOptions(batches=batches, warmup=warmup,
                           iterations=None if duration else iterations,
                           duration=duration, source=source, fast=fast, layers=layers,
                           streams=streams)
    with _progress("benchmarking") as progress:
        results = benchmark.bench(list(artifacts), options, progress)
    _warn(list(dict.fromkeys(w for r in results for w in r.warnings)), False)
    first = results[0]
    table = Table("artifact", "batch", *(f"{s} ms" for s in STAGE_NAMES), "end-to-end ms",
                  "p99 ms", "frames/s", "vs first",
                  title=f"mean per call over {first.iterations} iterations, artifacts interleaved "
                        f"({first.preprocessing} preprocessing)")
    for r in results:
        streams_note = f", {r.streams} streams" if r.streams > 1 else ""
        table.add_row(f"{Path(r.artifact).name} ({r.backend}, {r.precision}{streams_note})", str(r.batch),
                      *(f"{r.stages[s].mean:.2f}" for s in STAGE_NAMES),
                      f"{r.end_to_end.mean:.2f}", f"{r.end_to_end.p99:.2f}",
                      f"{r.throughput_fps:.1f}", f"{r.throughput_fps / first.throughput_fps:.2f}x")
    out.print(table)
    for r in results:
        if r.layers:
            top = list(r.layers.items())[:10]
            out.print(f"slowest layers of {Path(r.artifact).name}, batch {r.batch}: "
                      + ", ".join(f"{k} {v:.3f} ms" for k, v in top))
    if json_path:
        benchmark.write_json(json_path, results, options)
    if csv_path:
        benchmark.write_csv(csv_path, results)
    if plot_path:
        benchmark.write_plot(plot_path, results, f"{first.iterations} iterations")
    for path in (json_path, csv_path, plot_path):
        if path:
            out.print(f"[green]wrote[/] {path}")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", "out_dir", default="explanations", show_default=True,
              type=click.Path(file_okay=False), help="Folder for NAME.METHOD.png and .npy.")
@click.option("--method", type=click.Choice(EXPLAIN_METHODS), default=default(ExplainOptions, "method"),
              show_default=True,
              help="cls: the class token's attention in one layer; rollout: attention rollout "
                   "across all layers (residual added, rows re-normalised).")
@click.option("--layer", default=default(ExplainOptions, "layer"), show_default=True, type=int,
              help="Block for cls: 0 is the first, -1 the last.")
@click.option("--head", default=default(ExplainOptions, "head"), show_default=True,
              help="mean or max over the heads, or one head's number (0 is the first).")
@click.option("--compare", type=click.Path(path_type=str), metavar="OTHER_ARTIFACT",
              help="Draw OTHER_ARTIFACT's map beside it (e.g. the FP32 export beside INT8), "
                   "with the maps' cosine similarity.")
@click.option("--topk", default=default(ExplainOptions, "topk"), show_default=True,
              type=click.IntRange(min=1))
@_with(pipeline_options[:1])
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@debug_option
def explain(artifact: str, images: tuple[str, ...], out_dir: str, method: str, layer: int,
            head: str, compare: str | None, topk: int, fast: bool, as_json: bool) -> None:
    """Show where ARTIFACT looks in each of IMAGES (files, folders or globs): a PNG with the
    image as the model saw it, the attention over the patch grid upsampled on top, and the
    top-k prediction, plus the raw grid (H/P x W/P) as .npy.

    The attention is read from ARTIFACT itself, so an FP16 or INT8 model shows its own.
    Any vitedge ONNX model works; a TensorRT engine must be built from an export with
    --attention-outputs."""
    from vitedge.explain import explain_images

    opts = ExplainOptions(method=method, layer=layer, head=head, topk=topk, fast=fast,
                          compare=compare)
    files = _image_files(images)
    with _progress("explaining", enabled=not as_json) as bar:
        results = explain_images(artifact, files, out_dir, opts, bar)
    if as_json:
        _print_json([r.to_dict() for r in results])
        return
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


@cli.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@debug_option
def profiles(name: str | None, as_json: bool) -> None:
    """List the device build profiles, or show one (NAME, or a path to a TOML file)."""
    from vitedge.profiles import available, load_profile

    if name:
        p = load_profile(name)
        if as_json:
            _print_json(p.to_dict())
            return
        t = Table(show_header=False, title=f"profile {p.name}: {p.description}")
        t.add_row("backend / precision", f"{p.backend} / {p.precision}")
        t.add_row("batch (min:opt:max)", str(p.batch))
        trt = p.tensorrt
        t.add_row("tensorrt", f"workspace {trt.workspace_mb} MB, optimization level "
                  f"{trt.optimization_level}, DLA {'off' if trt.dla_core < 0 else trt.dla_core}, "
                  f"hardware compatibility {trt.hardware_compatibility}, version compatible "
                  f"{trt.version_compatible}, CUDA graphs {trt.cuda_graphs}")
        t.add_row("onnxruntime", f"threads {p.onnxruntime.threads or 'automatic'}")
        for note in p.notes:
            t.add_row("note", note)
        out.print(t)
        return
    rows = [load_profile(n) for n in available()]
    if as_json:
        _print_json([r.to_dict() for r in rows])
        return
    table = Table("name", "backend", "precision", "batch", "description")
    for r in rows:
        table.add_row(r.name, r.backend, r.precision, str(r.batch), r.description)
    out.print(table)


# --- serve, export-triton, export-deepstream ------------------------------------------------

serve_options = [
    click.option("--max-batch", type=click.IntRange(1, 4096),
                 help="Largest batch Triton's dynamic batcher forms [default: an engine's "
                      "optimization profile max, else 8; more than an engine allows is refused]."),
    click.option("--max-delay-us", default=default(ServeOptions, "max_delay_us"),
                 show_default=True, type=click.IntRange(0, 10_000_000),
                 help="How long a request may wait for others to batch with (microseconds)."),
    click.option("--instances", default=default(ServeOptions, "instances"), show_default=True,
                 type=click.IntRange(1, 64), help="Model instances (instance_group count)."),
    click.option("--topk", default=default(ServeOptions, "topk"), show_default=True,
                 type=click.IntRange(1, 1000), help="Classes in the topk outputs."),
]


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--host", default=default(ServeOptions, "host"), show_default=True,
              help="Address to listen on; loopback unless you mean to expose it.")
@click.option("--http-port", default=default(ServeOptions, "http_port"), show_default=True,
              type=click.IntRange(0, 65535), help="HTTP/REST port (0: any free one).")
@click.option("--grpc-port", default=default(ServeOptions, "grpc_port"), show_default=True,
              type=click.IntRange(0, 65535), help="gRPC port (0: any free one).")
@click.option("--metrics-port", default=default(ServeOptions, "metrics_port"), show_default=True,
              type=click.IntRange(0, 65535), help="Prometheus metrics port (0: any free one).")
@_with(serve_options)
@click.option("--log", type=click.Path(dir_okay=False), help="Keep tritonserver's log in FILE.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the endpoints and models as one JSON line when ready.")
@debug_option
def serve(artifacts: tuple[str, ...], host: str, http_port: int, grpc_port: int,
          metrics_port: int, max_batch: int | None, max_delay_us: int, instances: int, topk: int,
          log: str | None, as_json: bool) -> None:
    """Serve ARTIFACTS (any vitedge model: ONNX Runtime artifact, ONNX, engine) through a
    real NVIDIA Triton Inference Server until Ctrl-C or SIGTERM. Each artifact is two
    models with dynamic batching: NAME takes the artifact's own input tensor ("input"),
    NAME_image takes encoded JPEG / PNG bytes ("image", BYTES [1]) decoded and preprocessed
    exactly as `vitedge.open` does. Both return logits, label, score, topk_ids and
    topk_scores. Health, metrics and statistics are Triton's own (/v2/health/ready,
    /metrics, /v2/models/NAME/stats)."""
    from vitedge.serve import serve as run_server

    options = ServeOptions(host=host, http_port=http_port, grpc_port=grpc_port,
                           metrics_port=metrics_port, max_batch=max_batch,
                           max_delay_us=max_delay_us, instances=instances, topk=topk)

    status = err.status("starting tritonserver and loading the models")

    def ready(server: Any, entries: list[Any]) -> None:
        status.stop()
        info = {"http": f"http://{server.url}", "grpc": server.grpc_url,
                "metrics": server.metrics_url, "models": [e.to_dict() for e in entries]}
        if as_json:
            click.echo(json.dumps(info), nl=True)
            sys.stdout.flush()
            return
        table = Table("model", "input", "outputs", "max batch", title="serving (Ctrl-C stops)")
        for e in entries:
            table.add_row(e.name, ", ".join(f"{t.name} {t.dtype} {t.dims}" for t in e.inputs),
                          ", ".join(t.name for t in e.outputs), str(e.max_batch_size))
        out.print(table)
        out.print(f"HTTP {info['http']}  gRPC {info['grpc']}  metrics {info['metrics']}")
        if host not in ("127.0.0.1", "localhost", "::1"):
            err.print(f"[yellow]note:[/] listening on {host}, not only this machine")

    if not as_json:
        status.start()
    try:
        run_server(list(artifacts), options, on_ready=ready, log=Path(log) if log else None)
    finally:
        status.stop()
    if not as_json:
        err.print("stopped: the server and its stubs are gone")


@cli.command("export-triton")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="The model repository folder to write (created; must be empty or new).")
@_with(serve_options)
@click.option("--instance-kind", type=click.Choice(INSTANCE_KINDS),
              default=default(ServeOptions, "instance_kind"), show_default=True,
              help="Where ONNX and Python models run (a TensorRT plan always runs on the GPU).")
@click.option("--onnx-backend", type=click.Choice(ONNX_BACKENDS),
              default=default(ServeOptions, "onnx_backend"), show_default=True,
              help="Serve an ONNX model with Triton's onnxruntime backend, or through vitedge "
                   "in the Python backend (a Triton without the ONNX Runtime backend).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def export_triton(artifacts: tuple[str, ...], output: str, max_batch: int | None,
                  max_delay_us: int,
                  instances: int, topk: int, instance_kind: str, onnx_backend: str,
                  as_json: bool) -> None:
    """Write a Triton Inference Server model repository for ARTIFACTS: a TensorRT engine as
    tensorrt_plan (max_batch_size from its optimization profile), an ONNX model as
    onnxruntime_onnx, each with dynamic batching, instance_group, warm-up and labels, plus
    NAME_preprocess (Python backend: image bytes -> the model's input, vitedge's exact
    preprocessing) and the ensemble NAME_image (image bytes in). Every config.pbtxt is
    checked against Triton's own ModelConfig schema."""
    from vitedge.serve import export_repository

    options = ServeOptions(max_batch=max_batch, max_delay_us=max_delay_us, instances=instances,
                           topk=topk, instance_kind=instance_kind, onnx_backend=onnx_backend)
    entries = export_repository([Path(a) for a in artifacts], Path(output), options)
    if as_json:
        _print_json({"repository": output, "models": [e.to_dict() for e in entries]})
        return
    table = Table("model", "kind", "max batch", "inputs", "outputs", title=f"wrote {output}")
    for e in entries:
        table.add_row(e.name, e.kind, str(e.max_batch_size), ", ".join(t.name for t in e.inputs),
                      ", ".join(t.name for t in e.outputs))
    out.print(table)
    for e in entries:
        for note in e.notes:
            err.print(f"[yellow]note:[/] {note}")
    out.print(f"serve with: tritonserver --model-repository {output}  (see {output}/README.md)")


@cli.command("export-deepstream")
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder for the config, the model and its labels.")
@click.option("--mode", "process_mode", type=click.Choice(PROCESS_MODES),
              default=default(DeepStreamOptions, "process_mode"), show_default=True,
              help="primary: classify whole frames; secondary: a detector's objects.")
@click.option("--batch-size", default=default(DeepStreamOptions, "batch_size"),
              show_default=True, type=click.IntRange(1, 1024), help="nvinfer's batch-size.")
@click.option("--threshold", default=default(DeepStreamOptions, "classifier_threshold"),
              show_default=True, type=click.FloatRange(0, 1),
              help="classifier-threshold: least probability to attach a label.")
@click.option("--gie-id", default=default(DeepStreamOptions, "gie_id"), show_default=True,
              type=click.IntRange(min=1), help="gie-unique-id of this classifier.")
@click.option("--operate-on-gie-id", type=click.IntRange(min=1),
              help="Secondary mode: the detector's gie-unique-id.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def export_deepstream(artifact: str, output: str, process_mode: str, batch_size: int,
                      threshold: float, gie_id: int, operate_on_gie_id: int | None,
                      as_json: bool) -> None:
    """Write DeepStream's Gst-nvinfer config for ARTIFACT (a vitedge ONNX model: FP32, FP16
    or INT8 Q/DQ; nvinfer builds the engine on the device): net-scale-factor and offsets
    that reproduce the model's normalisation exactly (a model normalised per channel is
    refused: export it with --input pixels), the model with a Softmax output for nvinfer's
    classifier parser, and its labels."""
    from vitedge.serve import export_deepstream as run_export

    options = DeepStreamOptions(batch_size=batch_size, process_mode=process_mode,
                                classifier_threshold=threshold, gie_id=gie_id,
                                operate_on_gie_id=operate_on_gie_id)
    result = run_export(artifact, output, options)
    if as_json:
        _print_json(result.to_dict())
        return
    out.print(f"[green]wrote[/] {result.config}, {result.model.name}"
              + (f", {result.labels.name}" if result.labels else ""))
    for key, value in result.properties.items():
        out.print(f"  {key}={value}")
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns errors into one line and an exit code."""
    from vitedge.fileio import install_signal_cleanup

    install_signal_cleanup()  # SIGTERM / SIGINT leave no temporary file behind
    try:
        cli.main(args=argv, prog_name="vitedge", standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except VitedgeError as exc:
        return _fail(exc, EXIT_USER_ERROR, f"error: {exc}")
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        return _fail(exc, EXIT_INTERNAL_ERROR,
                     f"internal error: {type(exc).__name__}: {exc} (run with --debug for the "
                     "traceback and please report it)")
    return 0


def _fail(exc: BaseException, code: int, line: str) -> int:
    if _debug_enabled():
        import traceback

        traceback.print_exception(exc)
    click.echo(line.replace("\n", " "), err=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
