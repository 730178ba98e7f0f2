"""TensorRT for RTX's table in a device profile: what it holds, its defaults and bounds. Read by
the backend and its build alike."""

from __future__ import annotations

from dataclasses import dataclass

from vitedge.backends.base import check_choice

RTX_TARGETS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1", "current")
RTX_SPECIALIZATION = ("lazy", "eager", "none")
RTX_CUDA_GRAPHS = ("disabled", "whole_graph_capture")


@dataclass(frozen=True)
class TensorRTRTXSettings:
    """A device profile's `[tensorrt_rtx]` table: what the engine targets and how its
    kernels are compiled on the user's GPU."""

    compute_capabilities: tuple[str, ...] = ("8.6", "8.9", "12.0")
    """Build targets: Ampere RTX 30xx, Ada RTX 40xx, Blackwell RTX 50xx by default; 7.5 for
    Turing (explicit only), `current` for this machine's GPU."""
    runtime_cache: bool = True
    """Keep the JIT-compiled kernels in ENGINE.runtime-cache beside the engine."""
    dynamic_shapes: str = "lazy"
    """Kernel specialisation for a new batch size: lazy (a fallback kernel first, the
    specialised one compiled in the background), eager, or none."""
    cuda_graph_strategy: str = "disabled"

    def __post_init__(self) -> None:
        check_choice("tensorrt_rtx.compute_capabilities", self.compute_capabilities, RTX_TARGETS)
        check_choice("tensorrt_rtx.dynamic_shapes", self.dynamic_shapes, RTX_SPECIALIZATION)
        check_choice("tensorrt_rtx.cuda_graph_strategy", self.cuda_graph_strategy,
                     RTX_CUDA_GRAPHS)
