"""Predictions out as events: one JSON object per prediction (camera, frame number, capture
time, top-k labels and scores or the embedding, latency, and the image file where a camera
reads a folder), written as JSON lines to a file or standard output and/or published to an
MQTT broker, which is how a camera product hands what it sees to the rest of the system.

Nothing here blocks the inference loop on the broker: paho's network thread sends, and
while the broker is away events wait in a bounded buffer (sent, in order, once it is back;
those that do not fit are counted as lost). An event counts as delivered once the broker
acknowledged it (QoS 1) or it was written to the socket (QoS 0); what is still undelivered
when the run ends is counted (`undelivered`) and, unless the user said to drop it, fails
the run."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from vitedge.errors import MissingDependency, VitedgeError

MQTT_BUFFER = 10_000
"""Events kept while the broker is away (about 11 minutes of 15 fps camera)."""


def event_of(result: Any) -> dict[str, Any]:
    """A `CameraResult` as an event. `captured` is wall-clock time (Unix seconds), as the
    result's own `captured`."""
    p = result.prediction
    event: dict[str, Any] = {"camera": result.camera, "frame": result.number,
                             "captured": round(result.captured, 4),
                             "latency_ms": round(result.latency_ms, 2)}
    if p.source is not None:  # the image file, where the camera is a folder
        event["source"] = p.source
    if p.embedding is not None:
        event["embedding"] = {"dim": int(p.embedding.shape[-1]),
                              "values": [round(float(v), 6) for v in p.embedding]}
    else:
        event["top"] = [{"class_id": i, "label": label, "score": round(float(score), 6)}
                        for i, label, score in p.topk]
    if getattr(p, "age", None) is not None:  # frame reuse on: whether this result was reused
        event.update(reused=p.reused, age=p.age, age_ms=round(p.age_ms, 1))
    if getattr(p, "tokens_recomputed", None) is not None:  # token reuse: the share recomputed
        event["tokens_recomputed"] = round(p.tokens_recomputed, 4)
    return event


class JsonLines:
    """Events as JSON lines to an open text stream, flushed line by line."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.written = 0

    def send(self, event: dict[str, Any]) -> None:
        self.stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.stream.flush()
        self.written += 1


@dataclass(frozen=True)
class MqttTarget:
    host: str
    port: int
    topic: str

    @classmethod
    def parse(cls, spec: str) -> MqttTarget:
        """HOST[:PORT]/TOPIC (`vitedge run --mqtt`)."""
        where, sep, topic = spec.partition("/")
        host, _, port = where.partition(":")
        if not sep or not topic or not host or (port and not port.isdigit()) or \
                any(c in topic for c in "#+"):
            raise VitedgeError(f"--mqtt '{spec}' is not HOST[:PORT]/TOPIC",
                               "e.g. --mqtt 127.0.0.1:1883/vitedge/events (no wildcards)")
        return cls(host, int(port or 1883), topic.rstrip("/"))


class MqttEvents:
    """Events published to TOPIC/CAMERA on an MQTT broker (QoS `qos`), reconnecting when it
    goes away. Counters: `published` (handed to the network), `delivered` (acknowledged by
    the broker at QoS 1, written at QoS 0), `buffered` (sent late, after an outage), `lost`
    (the buffer was full), `reconnects`, and `undelivered` (lost, still waiting, or
    published and never acknowledged)."""

    def __init__(self, target: MqttTarget, qos: int = 1, buffer: int = MQTT_BUFFER,
                 client_id: str = ""):
        try:
            import paho.mqtt.client as mqtt
        except ImportError as exc:
            raise MissingDependency("--mqtt needs paho-mqtt, which is not installed",
                                    "pip install 'vitedge[mqtt]'") from exc
        self.target, self.qos = target, qos
        self.published = self.delivered = self.buffered = self.lost = self.reconnects = 0
        self._closed = False
        self._waiting: deque[tuple[str, bytes]] = deque()
        self._buffer = buffer
        self._lock = threading.Lock()
        self._delivered_lock = threading.Lock()
        self._connected = threading.Event()
        self._ever = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        try:
            self.client.connect_async(target.host, target.port, keepalive=10)
        except (OSError, ValueError) as exc:
            raise VitedgeError(f"cannot reach the MQTT broker {target.host}:{target.port}: "
                               f"{exc}") from None
        self.client.loop_start()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            return
        with self._lock:
            if self._ever:
                self.reconnects += 1
            self._ever = True
            self._connected.set()
            while self._waiting:  # what waited during the outage, in order
                topic, payload = self._waiting.popleft()
                client.publish(topic, payload, qos=self.qos)
                self.published += 1

    def _on_publish(self, *_args: Any) -> None:
        # its own lock: paho calls this holding its message lock, which `send` (holding
        # self._lock) needs in `publish`; sharing self._lock here would deadlock
        with self._delivered_lock:
            self.delivered += 1

    def _on_disconnect(self, *_args: Any) -> None:
        self._connected.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def send(self, event: dict[str, Any]) -> None:
        topic = f"{self.target.topic}/{event['camera']}"
        payload = json.dumps(event, separators=(",", ":")).encode()
        with self._lock:
            if self._connected.is_set() and not self._waiting:
                info = self.client.publish(topic, payload, qos=self.qos)
                if info.rc == 0:
                    self.published += 1
                    return
            if len(self._waiting) >= self._buffer:
                self._waiting.popleft()
                self.lost += 1
            self._waiting.append((topic, payload))
            self.buffered += 1

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {"published": self.published, "delivered": self.delivered,
                    "buffered": self.buffered, "lost": self.lost, "reconnects": self.reconnects,
                    "waiting": len(self._waiting), "undelivered": self._undelivered()}

    def _undelivered(self) -> int:
        return self.lost + len(self._waiting) + max(self.published - self.delivered, 0)

    def close(self, flush_for: float = 2.0) -> None:
        """Give waiting and unacknowledged events `flush_for` seconds to go out, then
        disconnect; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        end = time.monotonic() + flush_for
        while time.monotonic() < end:
            with self._lock:
                if not self._waiting and self.delivered >= self.published:
                    break
            time.sleep(0.05)
        self.client.disconnect()
        self.client.loop_stop()
