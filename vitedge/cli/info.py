"""What is here and what a file holds: `inspect`, `doctor`, `profiles`, `archs`."""

from __future__ import annotations

import click
from rich.table import Table

from vitedge.cli.common import command, out, print_json, rows_table


@command(json_help="Print as JSON.")
@click.argument("artifact", type=click.Path(path_type=str))
@click.option("--pos-embed", type=click.Path(dir_okay=False), metavar="OUT.png",
              help="Also draw the position-embedding similarity figure of the ViT paper: for "
                   "each patch position, its embedding's cosine similarity with all others.")
def inspect(artifact: str, pos_embed: str | None, as_json: bool) -> None:
    """Show what ARTIFACT holds: manifest, inputs and outputs, parameters, GMACs, tokens,
    operator histogram and precision; for a TensorRT engine, what its description records
    (GPU, TensorRT, precision, batch range, I/O). For a checkpoint (a weights file or a
    model folder), before export: the format and family detected, the architecture, the
    labels and preprocessing the export will carry, and the command that exports it."""
    from pathlib import Path

    from vitedge.describe import describe, is_checkpoint

    if is_checkpoint(Path(artifact)):  # before export: what export would read from it
        from vitedge.model.summary import describe_checkpoint

        d = describe_checkpoint(Path(artifact))
        if as_json:
            print_json(d.data)
        else:
            out.print(rows_table(d.rows, d.title))
        return
    figure = None
    if pos_embed:
        from vitedge.explain import write_position_embedding_figure

        figure = write_position_embedding_figure(artifact, pos_embed)
    d = describe(artifact)
    if as_json:
        print_json({"pos_embed": figure, **d.data} if figure else d.data)
        return
    if figure:
        out.print(f"position-embedding similarity ({figure['grid'][0]}x{figure['grid'][1]} "
                  f"positions, dim {figure['dim']}): {figure['figure']}")
    if not d.io:  # an engine: what its description records
        out.print(rows_table(d.rows, d.title))
        return
    out.print(f"[bold]{d.title.split(' (')[0]}[/] ({d.title.split(' (', 1)[1]}")
    io = Table("", "name", "shape", "dtype", title="inputs and outputs")
    for row in d.io:
        io.add_row(*row)
    out.print(io)
    out.print(rows_table(d.rows, "model"))
    out.print(f"ops: {d.ops}")


@command(json_help="Print as JSON.")
def doctor(as_json: bool) -> None:
    """Check Python, ONNX Runtime, torch, TensorRT, pycuda / cuda-python and the GPU, and
    say what to install where something is missing."""
    from dataclasses import asdict

    from vitedge.doctor import run_checks
    from vitedge.runtime.resample import resampler_check

    checks = run_checks() + [resampler_check()]
    if as_json:
        print_json({"checks": [asdict(c) for c in checks]})
        return
    table = Table("", "component", "found", "to fix")
    for c in checks:
        table.add_row("[green]ok[/]" if c.ok else "[yellow]--[/]", c.name, c.detail,
                      "" if c.ok else c.fix)
    out.print(table)


@command(json_help="Print as JSON.")
@click.argument("name", required=False)
@click.option("--targets", "show_targets", is_flag=True,
              help="Show the precision table: what each compute capability (and the CPU) "
                   "accelerates with each backend, and its source.")
def profiles(name: str | None, show_targets: bool, as_json: bool) -> None:
    """List the device build profiles, or show one (NAME, or a path to a TOML file), with
    what its targets accelerate."""
    from vitedge.profiles import available
    from vitedge.target import load_profile, profile_rows

    if show_targets:
        from vitedge.backends.precisions import COLUMN_NAMES, COLUMNS, TARGETS

        if as_json:
            print_json({"targets": [{"id": t.id, "devices": t.devices, "source": t.source,
                                     "accelerates": {c: t.runs[c].split() for c in t.runs}}
                                    for t in TARGETS]})
            return
        table = Table("target", "devices", *(COLUMN_NAMES[c] for c in COLUMNS),
                      title="precisions each target accelerates (docs/sources.md#precisions)")
        for t in TARGETS:
            table.add_row(t.id, t.devices, *(t.runs.get(c, "-") for c in COLUMNS))
        out.print(table)
        return
    if name:
        p = load_profile(name)
        if as_json:
            print_json(p.to_dict())
            return
        out.print(rows_table(profile_rows(p), f"profile {p.name}: {p.description}"))
        return
    rows = [load_profile(n) for n in available()]
    if as_json:
        print_json({"profiles": [r.to_dict() for r in rows]})
        return
    table = Table("name", "backend", "precision", "batch", "description")
    for r in rows:
        table.add_row(r.name, r.backend, r.precision, str(r.batch), r.description)
    out.print(table)


@command(json_help="Print as JSON.")
def archs(as_json: bool) -> None:
    """List the architecture names --arch accepts."""
    from vitedge.model.archs import architecture_rows

    rows = architecture_rows()
    if as_json:
        print_json({"architectures": rows})
        return
    table = Table("name", "dim", "depth", "heads", "patch", "image", "layout")
    for r in rows:
        table.add_row(r["name"], str(r["embed_dim"]), str(r["depth"]), str(r["num_heads"]),
                      str(r["patch_size"]), str(r["img_size"]), r["layout"])
    out.print(table)


@command(name="demo-data", json_help="Print what was written as JSON.")
@click.option("-o", "--output", "folder", required=True,
              type=click.Path(file_okay=False, path_type=str),
              help="The folder to write into (made where missing; must not hold them yet).")
def demo_data(folder: str, as_json: bool) -> None:
    """Write the README tour's demo files into FOLDER (-o): the Fashion-MNIST checkpoint
    (vit_fmnist.safetensors), calibration/fashion-mnist (512 training images) and
    evaluation/fashion-mnist (2,000 test images), as a git clone has them."""
    from vitedge.demo import write_demo_data

    result = write_demo_data(folder)
    if as_json:
        print_json(result.to_dict())
        return
    out.print(f"[green]wrote[/] {result.checkpoint}")
    for name, count in result.images.items():
        out.print(f"[green]wrote[/] {result.folder / name} ({count} images)")
    out.print(f"next: cd {result.folder} && vitedge export {result.checkpoint.name} -o fm.onnx")


COMMANDS = [inspect, doctor, profiles, archs, demo_data]
