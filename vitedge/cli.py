"""The `vitedge` command: each subcommand parses its options, calls one library function
and prints the result. User errors end as one line on stderr and a non-zero exit code."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vitedge import __version__
from vitedge.errors import VitedgeError

out = Console()
err = Console(stderr=True)
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
@click.option("--opset", default=17, show_default=True, type=int, help="ONNX opset (17-20).")
@click.option("--input", "input_kind", type=click.Choice(["images", "patches"]), default="images",
              show_default=True, help="Model input: images (B,C,H,W) or patch vectors (B,N,C*P*P).")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Class names: a text file, one per line, or JSON.")
@click.option("--attention-outputs", is_flag=True,
              help="Add each block's attention probabilities as outputs attn.N.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@debug_option
def export(checkpoint: str, output: str, arch: str | None, num_heads: int | None,
           img_size: int | None, batch: int | None, opset: int, input_kind: str,
           labels: str | None, attention_outputs: bool, no_verify: bool, as_json: bool) -> None:
    """Export CHECKPOINT (timm, Hugging Face, torchvision or vitedge; a file or a folder)
    to an ONNX model with its preprocessing and labels inside, verified against PyTorch."""
    from vitedge.export import ExportOptions, export_onnx

    opts = ExportOptions(arch=arch, num_heads=num_heads, img_size=img_size, labels=labels,
                         batch=batch, opset=opset, input_kind=input_kind,
                         verify=not no_verify, attention_outputs=attention_outputs)
    with err.status("exporting") as status:
        result = export_onnx(checkpoint, output, opts,
                             on_step=lambda s: status.update(f"{s}..."))
    if as_json:
        _print_json(result.to_dict())
        return
    for note in result.notes:
        err.print(f"[yellow]note:[/] {note}")
    m = result.manifest
    cfg = m.architecture
    out.print(f"[green]wrote[/] {result.output} ({result.size_bytes / 1e6:.1f} MB): "
              f"{m.source.get('format')} checkpoint, {cfg.depth} blocks, dim {cfg.embed_dim}, "
              f"{cfg.num_heads} heads, {cfg.img_size[0]}x{cfg.img_size[1]} / patch {cfg.patch_size}, "
              f"input '{m.input}', output '{m.output_name}'")
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
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@debug_option
def inspect(artifact: str, as_json: bool) -> None:
    """Show what ARTIFACT holds: manifest, inputs and outputs, parameters, GMACs, tokens,
    operator histogram and precision."""
    from vitedge.artifact import describe_onnx

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
        summary.add_row("architecture", f"dim {a['embed_dim']}, depth {a['depth']}, heads "
                        f"{a['num_heads']}, mlp {a['mlp_hidden']}, patch {a['patch_size']}, "
                        f"pool {a['global_pool']}" + (", distilled" if a["dist_token"] else ""))
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
    else:
        summary.add_row("manifest", "none (not made by vitedge)")
    prec = info["precision"]
    summary.add_row("precision", f"{prec['declared']}; weights "
                    + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in prec["weights_by_dtype"].items())
                    + f"; Q/DQ nodes {prec['qdq_nodes']}")
    out.print(summary)
    out.print("ops: " + ", ".join(f"{k} {v}" for k, v in info["op_histogram"].items()))


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns errors into one line and an exit code."""
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
