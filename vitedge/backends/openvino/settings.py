"""OpenVINO's table in a device profile: what it holds, its defaults and bounds. Read by
the backend and its build alike."""

from __future__ import annotations

from dataclasses import dataclass

from vitedge.backends.base import check_choice
from vitedge.errors import VitedgeError
from vitedge.machine import MAX_THREADS

PRECISION_HINTS = ("auto", "f32", "bf16")


@dataclass(frozen=True)
class OpenVINOSettings:
    """A device profile's `[openvino]` table."""

    threads: int = 0
    """0: OpenVINO's choice (its LATENCY hint: every physical core)."""
    precision_hint: str = "auto"
    """An INT8 build's float parts: auto (BF16 where the CPU has AVX-512 BF16 or AMX and it
    measured faster at build, else FP32), f32 (always FP32: the closest to the graph), or
    bf16. An fp32 build always computes in FP32, a bf16 build in BF16."""

    def __post_init__(self) -> None:
        if not 0 <= self.threads <= MAX_THREADS:
            raise VitedgeError(f"openvino.threads must be 0 (automatic) to {MAX_THREADS}")
        check_choice("openvino.precision_hint", self.precision_hint, PRECISION_HINTS)
