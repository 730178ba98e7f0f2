"""Which predictions go out as events (`vitedge run --events / --mqtt`): a camera that sees
the same thing 15 times a second need not say so 15 times. Three rules, each per camera and
applied in this order:

- `min_score`: an event whose top-1 score is below it is left out;
- `on_change`: of the rest, only an event whose top-1 label differs from the last one sent
  for its camera goes out (a camera's first event always does);
- `max_rate`: at most this many events a second per camera, by capture time (an event
  less than 1 / max_rate seconds after the last one sent for its camera is left out).

An embedding (a headless model) has no label or score: only `max_rate` applies to it. Every
event left out is counted (`left_out`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitedge.errors import VitedgeError


@dataclass
class EventFilter:
    min_score: float | None = None
    on_change: bool = False
    max_rate: float | None = None
    left_out: int = 0
    _last_label: dict[str, Any] = field(default_factory=dict, repr=False)
    _last_sent: dict[str, float] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.min_score is not None and not 0 <= self.min_score <= 1:
            raise VitedgeError(f"the events' minimum score must be between 0 and 1, not "
                               f"{self.min_score}")
        if self.max_rate is not None and self.max_rate <= 0:
            raise VitedgeError(f"the events' rate limit must be above 0 a second, not "
                               f"{self.max_rate}")

    @property
    def active(self) -> bool:
        return self.min_score is not None or self.on_change or self.max_rate is not None

    def keep(self, event: dict[str, Any]) -> bool:
        """Whether `event` (`vitedge.runtime.events.event_of`) goes out; it is counted
        as sent or left out."""
        camera = event["camera"]
        top = event.get("top")
        if top:
            first = top[0]
            if self.min_score is not None and first["score"] < self.min_score:
                return self._leave_out()
            label = first["label"] if first["label"] is not None else first["class_id"]
            if self.on_change and camera in self._last_label and \
                    self._last_label[camera] == label:
                return self._leave_out()
        else:
            label = None
        captured = float(event["captured"])
        if self.max_rate is not None and camera in self._last_sent and \
                captured - self._last_sent[camera] < 1.0 / self.max_rate:
            return self._leave_out()
        self._last_label[camera] = label
        self._last_sent[camera] = captured
        return True

    def _leave_out(self) -> bool:
        self.left_out += 1
        return False

    def to_dict(self) -> dict[str, Any]:
        return {"min_score": self.min_score, "on_change": self.on_change,
                "max_rate": self.max_rate, "left_out": self.left_out}
