"""ONNX Runtime's table in a device profile: what it holds, its defaults and bounds. Read by
the backend and its build alike."""

from __future__ import annotations

from dataclasses import dataclass

from vitedge.errors import VitedgeError
from vitedge.machine import MAX_THREADS


@dataclass(frozen=True)
class OnnxRuntimeSettings:
    """A device profile's `[onnxruntime]` table."""

    threads: int = 0
    """0: ONNX Runtime's choice (every physical core)."""
    fusions: bool = True
    """vitedge's rewrites (attention as one MultiHeadAttention, biases into the integer
    GEMMs, weight dequantization folded, QAttention); off only to measure what they bring."""
    int8_weight_bits: int = 7
    """7: INT8 weights every CPU's integer kernels compute exactly. 8 only to measure what
    that costs: on CPUs without VNNI 8-bit weights compute something else (the build's
    verification fails there, and loading such an artifact there warns)."""

    def __post_init__(self) -> None:
        if not 0 <= self.threads <= MAX_THREADS:
            raise VitedgeError(f"onnxruntime.threads must be 0 (automatic) to {MAX_THREADS}")
        if self.int8_weight_bits not in (7, 8):
            raise VitedgeError("onnxruntime.int8_weight_bits must be 7 or 8")
