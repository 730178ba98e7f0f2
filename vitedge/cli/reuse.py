"""`vitedge tune-reuse ARTIFACT CLIP`: the frame-reuse threshold for `vitedge run --reuse`,
chosen by measurement on a clip from the camera (`vitedge.runtime.reuse.tune_reuse`)."""

from __future__ import annotations

import itertools
from typing import Any

import click
from rich.table import Table

from vitedge.cli.common import command, out, print_json, progress
from vitedge.cli.flags import flags, options
from vitedge.options import PipelineOptions, ReuseTuneOptions


@command(name="tune-reuse", json_help="Print the choice and every threshold's figures as JSON.")
@click.argument("artifact", type=click.Path(path_type=str))
@click.argument("clip", type=click.Path(path_type=str))
@flags(ReuseTuneOptions, "budget", "max_age", "fps", "max_frames")
@flags(PipelineOptions, "color", "fast")
def tune_reuse(artifact: str, clip: str, as_json: bool, **kw: Any) -> None:
    """The largest --reuse threshold at which ARTIFACT's results on CLIP (a video, folder or
    stream from the camera) agree with full inference of every frame within --budget:
    every frame is inferred once, then each threshold replays the clip through the reuse
    gate and every reused result is scored against its own frame's full inference."""
    from vitedge.errors import VitedgeError
    from vitedge.runtime.pipeline import open_pipeline
    from vitedge.runtime.reuse import tune_reuse as tune
    from vitedge.runtime.sources import open_source

    opts = options(ReuseTuneOptions, kw)
    with open_pipeline(artifact, options(PipelineOptions, kw)) as pipe, \
            progress("inferring every frame", not as_json) as bar:
        frames = itertools.islice(open_source(clip), opts.max_frames)
        choice = tune(pipe, frames, opts.budget, opts.max_age, opts.fps,
                      progress=lambda n: bar.progress(n, opts.max_frames or n))
    if choice.frames < 2:
        raise VitedgeError(f"{clip} gave {choice.frames} frame(s); a clip needs several",
                           "give a video or a folder of consecutive frames")
    if as_json:
        print_json(choice.to_dict())
        return
    table = Table("threshold", "frames reused", "agreement with full inference",
                  title=f"{choice.frames} frames, max age {choice.max_age}")
    for row in choice.rows:
        mark = " <" if row["threshold"] == choice.threshold else ""
        table.add_row(f"{row['threshold']:g}{mark}", f"{row['reused']:.1%}",
                      f"{row['agreement']:.2%}")
    out.print(table)
    if choice.threshold is None:
        out.print(f"no threshold keeps agreement within {choice.budget:.1%}: run without --reuse")
    else:
        out.print(f"use --reuse {choice.threshold:g} --max-age {choice.max_age}")


COMMANDS = [tune_reuse]
