"""`vitedge run ARTIFACT --source NAME=URI ...`: many cameras through one model
(`pipe.multi_stream`), each camera's annotated frames optionally to DIR/CAMERA.mp4, every
prediction out as an event (JSON lines, MQTT; thinned by `event_filter.EventFilter` when
asked), a live status per camera, and per-camera statistics at the end. The run's seconds
and fps count from the first frame to the last: loading the model, waiting for the broker
at the start and flushing events to it at the end are not the run."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.options import CameraOptions, PipelineOptions, SourceOptions
from vitedge.runtime.cameras import Camera, MultiStream, check_unique
from vitedge.runtime.event_filter import EventFilter
from vitedge.runtime.events import JsonLines, MqttEvents, MqttTarget, event_of
from vitedge.runtime.outputs import FrameOutput, open_output
from vitedge.runtime.pipeline import open_pipeline
from vitedge.runtime.stats import Stats

STATUS_EVERY = 0.5
"""Seconds between two status updates."""


def run_cameras(artifact: str, cameras: list[Camera], options: CameraOptions | None = None,
                max_frames: int | None = None, pipeline: PipelineOptions | None = None,
                source_options: SourceOptions | None = None,
                log: Callable[[str], None] | None = None,
                status: Callable[[list[dict[str, Any]]], None] | None = None) -> dict[str, Any]:
    """Run every camera through `artifact` until they have all ended (or `max_frames` in
    all), and return the summary: frames, fps, per-camera statistics, batch sizes, events
    sent. `status` hears each camera's figures every half second. A camera that is gone
    (its reconnect budget spent, or an error) ends the run with a VitedgeError once the
    others are done, with the summary as its details; so do events the MQTT broker never
    received, unless `options.mqtt_drop_undelivered`."""
    from vitedge.inputs import refuse_overwriting_inputs

    opts = options or CameraOptions()
    check_unique(cameras)
    if not cameras:
        raise VitedgeError("no camera given", "--source NAME=URI (repeatable) or --sources FILE")
    mqtt_target = MqttTarget.parse(opts.mqtt) if opts.mqtt else None
    events_path = None if opts.events in (None, "-") else Path(str(opts.events))
    refuse_overwriting_inputs(events_path, artifact,
                              *[c.uri for c in cameras if Path(c.uri).is_file()])
    log = log or (lambda _line: None)
    chosen = EventFilter(opts.events_min_score, opts.events_on_change, opts.events_max_rate)
    event_filter = chosen if chosen.active else None
    count = 0
    with contextlib.ExitStack() as stack:
        pipe = stack.enter_context(open_pipeline(artifact, pipeline))
        sinks: list[Any] = []
        if opts.events == "-":
            sinks.append(JsonLines(sys.stdout))
        elif events_path is not None:
            sinks.append(JsonLines(stack.enter_context(_events_file(events_path))))
        mqtt = None
        if mqtt_target is not None:
            mqtt = MqttEvents(mqtt_target, opts.mqtt_qos)
            stack.callback(mqtt.close)
            if not mqtt.wait_connected(5.0):
                log(f"MQTT broker {mqtt_target.host}:{mqtt_target.port} is not answering; "
                    "events wait for it (up to 10,000); those it has not received at the end "
                    + ("are dropped and counted" if opts.mqtt_drop_undelivered else
                       "make the run fail (--mqtt-drop-undelivered accepts losing them)"))
            sinks.append(mqtt)
        outputs: dict[str, FrameOutput] = {}
        if opts.output_dir:
            folder = Path(opts.output_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for c in cameras:
                outputs[c.name] = stack.enter_context(open_output(folder / f"{c.name}.mp4"))
        multi = stack.enter_context(MultiStream(pipe, cameras, opts.batch, opts.max_wait_ms,
                                                source_options, log))
        metrics = None
        if opts.metrics_port is not None:
            from vitedge.runtime.metrics import CameraMetrics

            metrics = CameraMetrics(lambda: [s.to_dict() for s in multi.stats.values()],
                                    pipe.reuse.counters if pipe.reuse else lambda: None,
                                    opts.metrics_port, opts.metrics_host,
                                    pipe.tokens.counters if pipe.tokens else None)
            stack.callback(metrics.close)
            log(f"metrics on http://{metrics.host}:{metrics.port}/metrics")
        last_status = 0.0
        start = time.monotonic()
        for result in multi:
            count += 1
            if metrics is not None:
                metrics.observe(result.camera, result.latency_ms / 1e3)
            if sinks:
                event = event_of(result)
                if event_filter is None or event_filter.keep(event):
                    for sink in sinks:
                        sink.send(event)
            out = outputs.get(result.camera)
            if out is not None:
                reader = multi.readers.get(result.camera)
                if out.frames == 0 and reader is not None and not reader.live:
                    out.match_rate(reader.source.fps)  # a live camera's frames are dropped
                out.render(result.frame, result.prediction)
            now = time.monotonic()
            if status is not None and now - last_status >= STATUS_EVERY:
                last_status = now
                status([s.to_dict() for s in multi.stats.values()])
            if max_frames is not None and count >= max_frames:
                break
        multi.close()
        elapsed = time.monotonic() - start
        if mqtt is not None:
            mqtt.close()  # what waits for the broker goes out now, outside the run's time
        stages = {k: asdict(Stats.of(v)) for k, v in pipe.times.samples.items() if len(v)}
        warnings = list(pipe.warnings)
        per_camera = [s.to_dict() for s in multi.stats.values()]
        batch_sizes = {str(k): v for k, v in sorted(multi.batch_sizes.items())}
        batch = multi.batch
        reuse = pipe.reuse.counters() if pipe.reuse is not None else None
        tokens = pipe.tokens.counters() if pipe.tokens is not None else None
    if status is not None:
        status(per_camera)
    summary: dict[str, Any] = {
        "artifact": str(artifact), "cameras": per_camera, "frames": count,
        "seconds": round(elapsed, 3), "fps": count / elapsed if elapsed else 0.0,
        "batch": batch, "max_wait_ms": opts.max_wait_ms, "batch_sizes": batch_sizes,
        "stages": stages, "events": {"json_lines": opts.events,
                                     "mqtt": mqtt.counters() if mqtt else None,
                                     "filter": event_filter.to_dict() if event_filter else None},
        "output_dir": opts.output_dir, "warnings": warnings, "reuse": reuse, "tokens": tokens}
    gone = [c for c in per_camera if c["gone"]]
    log(f"{count} frames from {plural(len(cameras), 'camera')} in {elapsed:.1f} s, batches of "
        f"up to {batch}" + (f"; gone: {', '.join(c['camera'] for c in gone)}" if gone else ""))
    lost = _undelivered(summary, mqtt_target)
    if lost and opts.mqtt_drop_undelivered:
        summary["warnings"].append(f"{lost} (dropped: --mqtt-drop-undelivered)")
    elif lost:
        if gone:
            log(lost)
        else:
            raise VitedgeError(lost, "check the broker; --mqtt-drop-undelivered accepts "
                               "losing them (exit 0)", details=summary)
    if gone:
        raise VitedgeError(f"camera {gone[0]['camera']} is gone: {gone[0]['gone']}"
                           + (f" (and {len(gone) - 1} more)" if len(gone) > 1 else ""),
                           "the other cameras ran on; --reconnect-for sets how long to keep "
                           "trying", details=summary)
    return summary


def plural(n: int, noun: str) -> str:
    """`1 camera`, `2 cameras`."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _undelivered(summary: dict[str, Any], target: MqttTarget | None) -> str | None:
    """One line saying how many events the MQTT broker never received, or None."""
    counters = summary["events"]["mqtt"]
    if target is None or not counters or not counters["undelivered"]:
        return None
    n = counters["undelivered"]
    sent = counters["published"] + counters["waiting"] + counters["lost"]
    return (f"{n} of {plural(sent, 'event')} {'was' if n == 1 else 'were'} not delivered to "
            f"the MQTT broker {target.host}:{target.port}")


@contextlib.contextmanager
def _events_file(path: Path) -> Any:
    """The events file, written line by line as events happen (a log, not a document: it is
    read while it grows)."""
    from vitedge.fileio import output_file

    try:
        stream = open(output_file(path), "w", encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise VitedgeError(f"cannot write {path}: {exc.strerror}") from None
    try:
        yield stream
    finally:
        stream.close()
