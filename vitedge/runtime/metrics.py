"""`vitedge run --metrics-port`: per-camera figures in Prometheus' text format, which is what
Triton, Frigate and most camera stacks expose, so a fleet's Prometheus can scrape every box.

Per camera: frames read, delivered, inferred and reused (frame reuse), dropped (a live
camera's frames replaced by newer ones), capped, failed reads, reconnects, whether it is
gone, a histogram of capture-to-result latency, and with a streaming graph (token reuse)
the frames through it, its full passes and the mean share of tokens recomputed. Counters are read from the camera
loop's own statistics when Prometheus scrapes (nothing is counted twice); latencies are
observed as results are delivered. The server binds loopback unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from vitedge.errors import MissingDependency, VitedgeError

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: a light model's batch of one up to a saturated CPU's queue."""

COUNTERS = (("read", "Frames the camera's capture thread read."),
            ("processed", "Results delivered (inferred or reused)."),
            ("dropped", "Frames of a live camera replaced by a newer one before the model "
                        "took them."),
            ("capped", "Frames left out by the camera's fps cap."),
            ("failed_reads", "Reads of the source that failed."),
            ("reconnects", "Times the source was re-opened."))


class CameraMetrics:
    """A Prometheus endpoint on `host:port` (port 0: any free one, see `port`) over a
    camera loop's statistics: `stats()` gives the per-camera dicts (`CameraStats.to_dict`),
    `reuse()` the frame-reuse counters or None, `tokens()` the token-reuse counters
    (`TokenGate.counters`) or None; `observe(camera, seconds)` records one result's
    latency. `close()` stops the server."""

    def __init__(self, stats: Callable[[], list[dict[str, Any]]],
                 reuse: Callable[[], dict[str, Any] | None], port: int = 0,
                 host: str = "127.0.0.1",
                 tokens: Callable[[], dict[str, Any] | None] | None = None):
        try:
            import prometheus_client
        except ImportError:
            raise MissingDependency("--metrics-port needs prometheus_client",
                                    "pip install 'vitedge[metrics]'") from None
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry()
        self._stats, self._reuse = stats, reuse
        self._tokens = tokens or (lambda: None)
        self.latency = Histogram("vitedge_camera_latency_seconds",
                                 "Capture-to-result latency of each delivered frame.",
                                 ["camera"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_Collector(self))
        try:
            self.server, self.thread = prometheus_client.start_http_server(
                port, addr=host, registry=self.registry)
        except OSError as exc:
            raise VitedgeError(f"cannot serve metrics on {host}:{port}: {exc.strerror}",
                               "choose another --metrics-port") from None
        self.host = host
        self.port = int(self.server.server_port)

    def observe(self, camera: str, seconds: float) -> None:
        self.latency.labels(camera=camera).observe(seconds)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


class _Collector:
    """The counters, read from the camera loop's statistics at scrape time."""

    def __init__(self, metrics: CameraMetrics):
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        rows = self.metrics._stats()
        for key, text in COUNTERS:
            family = CounterMetricFamily(f"vitedge_camera_frames_{key}", text,
                                         labels=["camera"])
            for r in rows:
                family.add_metric([r["camera"]], float(r[key]))
            yield family
        gone = GaugeMetricFamily("vitedge_camera_gone", "1 once the camera is gone for good.",
                                 labels=["camera"])
        for r in rows:
            gone.add_metric([r["camera"]], 1.0 if r["gone"] else 0.0)
        yield gone
        yield from _token_families(self.metrics._tokens())
        reuse = self.metrics._reuse()
        if reuse is None:
            return
        per = reuse["cameras"]
        for key, text in (("inferred", "Frames the model ran on (frame reuse on)."),
                          ("reused", "Frames given the last inferred frame's result.")):
            family = CounterMetricFamily(f"vitedge_camera_frames_{key}", text,
                                         labels=["camera"])
            for camera, counts in per.items():
                family.add_metric([camera], float(counts[key]))
            yield family


def _token_families(tokens: dict[str, Any] | None) -> Iterator[Any]:
    """Token reuse per camera: frames through the streaming graph, full passes, and the
    mean share of tokens recomputed (1.0: every frame a full pass)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    if tokens is None:
        return
    per = tokens["cameras"]
    for key, name, text in (
            ("frames", "token_frames", "Frames run through the streaming graph (token reuse)."),
            ("full_passes", "token_full_passes", "Frames of those that were a full pass.")):
        family = CounterMetricFamily(f"vitedge_camera_{name}", text, labels=["camera"])
        for camera, counts in per.items():
            family.add_metric([camera], float(counts[key]))
        yield family
    share = GaugeMetricFamily("vitedge_camera_tokens_recomputed_ratio",
                              "Mean share of tokens recomputed per frame through the streaming "
                              "graph (1: full inference).", labels=["camera"])
    for camera, counts in per.items():
        share.add_metric([camera], float(counts["tokens_recomputed"]))
    yield share
