"""`vitedge run`: the camera loop, in three calls as jetson-inference writes it: capture
(`open_source`), classify (`pipe.stream`), render (`open_output`: a video file, a window,
or nothing). Stage timings, dropped frames and reconnects are summarised at the end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.options import PipelineOptions
from vitedge.runtime.outputs import FrameOutput, open_output
from vitedge.runtime.pipeline import open_pipeline
from vitedge.runtime.sources import FrameSource, SourceOptions
from vitedge.runtime.stats import Stats
from vitedge.runtime.token_gate import restarting


def run_loop(artifact: str, source: str, output: str | None = None, display: bool = False,
             max_frames: int | None = None, pipeline: PipelineOptions | None = None,
             source_options: SourceOptions | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Classify every frame of `source` with `artifact`, render them to `output` (a video
    file) and/or a window, and return the run's summary (frames, fps, dropped, reconnects,
    per-stage statistics, warnings). A live source that does not come back within its
    reconnect budget ends the run with a VitedgeError after the summary's frames."""
    from vitedge.inputs import refuse_overwriting_inputs

    refuse_overwriting_inputs(output, artifact, source if Path(str(source)).is_file() else None)
    frames = FrameSource(source, source_options, on_event=log)
    start = time.perf_counter()
    count = 0
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(open_pipeline(artifact, pipeline))
        outputs: list[FrameOutput] = []
        if output:
            outputs.append(stack.enter_context(open_output(output)))
        if display:
            outputs.append(stack.enter_context(open_output("display://0")))
        stack.callback(frames.close)
        # with reuse, a reconnect or a new resolution (never in a video file) restarts it, as
        # the frame is read: unbuffered
        gated = (pipe.reuse is not None or pipe.tokens is not None) and frames.kind != "video"
        for frame, p in pipe.stream(restarting(pipe, frames) if gated else frames,
                                    max_frames=max_frames, prefetch=0 if gated else 2):
            count += 1
            if count == 1:  # the source is open now: a video plays at its rate
                for out in outputs:
                    out.match_rate(frames.fps)
            if not all([out.render(frame, p) for out in outputs]):
                break  # the window was closed
        if output and count == 0:
            raise VitedgeError(f"{source} gave no frames; nothing written")
        elapsed = time.perf_counter() - start
        stages = {k: asdict(Stats.of(v)) for k, v in pipe.times.samples.items() if len(v)}
        warnings = list(pipe.warnings)
        reuse = pipe.reuse.counters() if pipe.reuse is not None else None
        tokens = pipe.tokens.counters() if pipe.tokens is not None else None
    summary = {"artifact": str(artifact), "source": str(source), "frames": count,
               "seconds": round(elapsed, 3),
               "fps": count / elapsed if elapsed else 0.0, **frames.stats.to_dict(),
               "stages": stages, "output": output, "warnings": warnings, "reuse": reuse,
               "tokens": tokens}
    if log:
        log(f"{count} frames from {frames.kind} {source} in {elapsed:.1f} s"
            + (f", written to {output}" if output else "")
            + (f"; {frames.stats.reconnects} reconnects, {frames.stats.dropped} reads dropped"
               if frames.stats.reconnects or frames.stats.dropped else ""))
    if frames.stats.gave_up:
        raise VitedgeError(f"{frames.kind} {source} is gone: {frames.stats.gave_up} "
                           f"({count} frames classified first)",
                           "check the camera or stream; --reconnect-for sets how long to keep trying",
                           details=summary)
    return summary
