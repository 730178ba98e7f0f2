"""The build path: `export`, `calibrate`, `quantize`, `build`."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from vitedge.cli.common import command, err, json_or_notes, out, print_json, progress, rows_table
from vitedge.cli.flags import flag, flags, options
from vitedge.options import (
    BuildOptions,
    CalibrationOptions,
    ExportOptions,
    QuantizeOptions,
    QuantizeRequest,
    VerifyOptions,
)

CALIBRATION_FLAGS = ("num_images", "method", "percentile", "batch", "smooth_alpha")


@command()
@click.argument("checkpoint", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the ONNX model (written atomically).")
@flags(ExportOptions, "arch", "num_heads", "img_size", "batch", "opset", "input_kind", "labels",
       "attention_outputs", "head", "external_data", "zero_shot", "prompts", "zero_shot_embeddings", "logit_scale",
       "logit_bias", "merge", "max_drop", "merge_data", "merge_images", "token_reuse", "token_data", "verify")
def export(checkpoint: str, output: str, as_json: bool, **kw: Any) -> None:
    """Export CHECKPOINT (timm, Hugging Face, torchvision or vitedge; a file or a folder)
    to an ONNX model with its preprocessing and labels inside, verified against PyTorch.
    A model without a classification head (DINOv2, CLIP / SigLIP image towers) outputs its
    embedding; with --zero-shot, a CLIP / SigLIP tower becomes a classifier. With
    --token-reuse K, the streaming graph for token reuse across a camera's frames (frame and
    state in, result and state out), with its full pass beside it."""
    from vitedge.export import export_onnx
    from vitedge.export.streaming import export_token_reuse

    opts = options(ExportOptions, kw)
    with progress("exporting", not as_json) as bar:
        run = export_onnx if opts.token_reuse is None else export_token_reuse
        result = run(checkpoint, output, opts, bar)
    if json_or_notes(result, as_json):
        return
    m = result.manifest
    cfg = m.architecture
    out.print(f"[green]wrote[/] {result.output} ({result.size_bytes / 1e6:.1f} MB): "
              f"{m.source.get('format')} checkpoint, {cfg.depth} blocks, dim {cfg.embed_dim}, "
              f"{cfg.num_heads} heads, {cfg.img_size[0]}x{cfg.img_size[1]} / patch {cfg.patch_size}, "
              f"input '{m.input}', output '{m.output_name}': {m.outputs()[m.output_name]}")
    if cfg.merge:
        out.print(f"token merging {', '.join(map(str, cfg.merge))}: tokens per block "
                  f"{' '.join(map(str, cfg.tokens_per_block()))}, {cfg.macs() / 5e8:.2f} GFLOPs "
                  f"({cfg.macs() / cfg.replace(merge=()).macs():.0%} of unmerged)")
        for c in result.vs_unmerged:
            top1 = f", top-1 agreement {c.top1_agreement:.0%}" if m.output_name == "logits" else ""
            out.print(f"  against the unmerged model, {c.case} inputs: worst cosine "
                      f"{c.cosine:.5f}{top1}")
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


@command()
@click.argument("model", type=click.Path(path_type=str))
@click.option("--data", required=True, type=click.Path(path_type=str),
              help="Images: a folder (recursive), a text file of paths, a video, or .npy/.npz "
              "of preprocessed inputs.")
@flags(CalibrationOptions, *CALIBRATION_FLAGS)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Calibration table (JSON) [default: MODEL.calib.json]; the TensorRT cache "
              "goes beside it.")
def calibrate(model: str, data: str, output: str | None, as_json: bool, **kw: Any) -> None:
    """Measure the INT8 range of every activation of the FP32 MODEL on real images, with
    the model's own preprocessing. Writes a calibration table (JSON) and a TensorRT
    calibration cache (for TensorRT <= 10 implicit INT8). A table made from the same model,
    data and options is reused."""
    from vitedge.quantize.calibrate import calibrate as run_calibration

    opts = options(CalibrationOptions, kw, data=data)
    with progress("calibrating", not as_json) as bar:
        result = run_calibration(model, output, opts, bar)
    if as_json:
        print_json(result.to_dict())
        return
    t = result.table
    verb = "reused" if result.reused else "wrote"
    out.print(f"[green]{verb}[/] {result.output}: {len(t.tensors)} tensors, method {opts.method}, "
              f"{t.data['count']} images from {t.data['kind']} {t.data['source']}"
              + (f", {len(t.smoothing)} equalised Linear inputs" if t.smoothing else ""))
    out.print(f"[green]{verb}[/] {result.cache} (TensorRT calibration cache, FP32 model as given)")
    s = t.stats
    if s and not result.reused:
        skipped = max(t.data["count"] - s["images"], len(s["broken"]))
        read = (f"{s['images']} of the {s['images'] + skipped} images read" if skipped else
                f"{s['images']} images")  # the count above, less the ones skipped
        out.print(f"{read} in {s['seconds']:.1f}s, peak memory {s['peak_rss_mb']:.0f} MB"
                  + (f", {skipped} unreadable skipped" if skipped else ""))


@command()
@click.argument("model", type=click.Path(path_type=str))
@flag(QuantizeRequest, "precision", required=True, default=None, show_default=False)
@flags(QuantizeRequest, "calib", "data")
@flags(QuantizeOptions, "scheme", "attention", "exclude")
@flags(QuantizeRequest, "sensitivity")
@flags(QuantizeOptions, "smooth", "ends", "fp4_activations")
@flags(QuantizeRequest, "profile", "max_drop")
@flags(CalibrationOptions, *CALIBRATION_FLAGS)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the quantized ONNX model (atomically).")
def quantize(model: str, output: str, as_json: bool, **kw: Any) -> None:
    """Quantize the FP32 MODEL to INT8 (explicit Q/DQ, symmetric, weights per channel), FP16
    (LayerNorm in float32, inputs and outputs float32), FP8 or NVFP4 (Q/DQ in an FP16 graph,
    for Ada, Hopper and Blackwell), or --precision auto (a format per layer for a --profile's
    targets), for TensorRT 10 and 11, TensorRT for RTX and ONNX Runtime. The output is checked
    against TensorRT's parser rules and compared with the FP32 model on up to 64 of the --data
    images (NVFP4 through an exact emulation ONNX Runtime runs)."""
    from vitedge.quantize.quantizer import quantize_model

    request = options(QuantizeRequest, kw, calibration=options(CalibrationOptions, kw),
                      qdq=options(QuantizeOptions, kw))
    with progress("quantizing", not as_json) as bar:
        result = quantize_model(model, output, request, bar)
    if json_or_notes(result, as_json):
        return
    out.print(f"[green]wrote[/] {result.output} ({result.size_bytes / 1e6:.2f} MB, "
              f"{result.precision})")
    for line in result.summary_lines():
        out.print(line)
    if result.sensitivity:
        table = Table("rank", "layer", "KL alone", title="layer sensitivity (most sensitive first)")
        kept = request.sensitivity
        for i, (name, kl) in enumerate(result.sensitivity[:max(10, kept)]):
            table.add_row(str(i + 1), name + (" (kept float)" if i < kept else ""), f"{kl:.2e}")
        out.print(table)
    for line in result.check_lines():
        out.print(line)
    out.print(result.parser_check)


@command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=str))
@flags(BuildOptions, "precision", "data", "calib", "profile", "backend", "batch", "timing_cache")
@flags(QuantizeOptions, "scheme", "attention", "ends", "fp4_activations")
@flags(BuildOptions, "max_drop", "merge", "merge_max_drop", "merge_data", "merge_images")
@flags(CalibrationOptions, "num_images", "method")
@flags(VerifyOptions, "images", "min_agreement", "min_fp32_agreement", "enabled")
@flags(BuildOptions, "force")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The artifact [default: INPUT.PRECISION.engine, INPUT.PRECISION.ort.onnx or "
              "INPUT.PRECISION.ov.xml, by backend].")
def build(input_path: str, output: str | None, as_json: bool, **kw: Any) -> None:
    """Build the deployable artifact for this machine from INPUT (a checkpoint, exported
    first, or a vitedge ONNX model): a TensorRT engine (+ ENGINE.json) where TensorRT and a
    GPU are present, a TensorRT for RTX engine (no GPU needed), else an optimized ONNX Runtime
    model. INT8, FP16, FP8 and NVFP4 are quantized in the graph first, so TensorRT 10 and 11
    build them the same way; a precision the profile's targets cannot run is refused
    (`vitedge profiles NAME` shows what they run). The artifact is then
    verified on this machine, with the backend that will run it, on images of --data held
    out of calibration: against the graph it was built from and against FP32 (with --merge,
    also against the unmerged FP32 model). A streaming graph (`export --token-reuse K`)
    builds in FP32 with its full pass beside it (NAME.fp32.full + suffix), both verified
    frame after frame against their ONNX graphs; or INT8 with --data FRAMES (a video, or
    images taken in name order), calibrated on the FP32 pair run over the frames (real
    states) and verified against the FP32 pair on the frames after them."""
    from vitedge.deploy import build as run_build
    from vitedge.verification import verification_lines

    opts = options(BuildOptions, kw, qdq=options(QuantizeOptions, kw),
                   calibration=options(CalibrationOptions, kw), verify=options(VerifyOptions, kw))
    with progress("building", not as_json) as bar:
        result = run_build(input_path, output, opts, bar)
    if json_or_notes(result, as_json):
        return
    out.print(f"backend: [bold]{result.backend}[/] ({result.backend_reason})")
    for name, seconds in result.steps.items() if not bar.lines else ():  # piped: shown already
        out.print(f"  {name:<22} {seconds:7.2f} s")
    for line in [*result.quantization.get("summary", []), *result.quantization.get("check_lines", [])]:
        out.print(Text(line))
    for line in verification_lines(result.verification):
        if result.verification.get("skipped"):
            err.print(f"[yellow]{line}[/]")
        else:
            out.print(line)
    out.print(rows_table(result.summary_rows(), "built"))


COMMANDS = [export, calibrate, quantize, build]
