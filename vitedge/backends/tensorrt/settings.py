"""TensorRT's table in a device profile: what it holds, its defaults and bounds. Read by
the backend and its build alike."""

from __future__ import annotations

from dataclasses import dataclass

from vitedge.backends.base import check_choice
from vitedge.errors import VitedgeError

HARDWARE_COMPATIBILITY = ("none", "ampere+", "same-compute-capability")


@dataclass(frozen=True)
class TensorRTSettings:
    """A device profile's `[tensorrt]` table."""

    workspace_mb: int = 1024
    optimization_level: int = 3
    dla_core: int = -1
    """-1: no DLA; 0 or 1: that DLA core, with GPU fallback."""
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    cuda_graphs: bool = True

    def __post_init__(self) -> None:
        if self.workspace_mb <= 0:
            raise VitedgeError("tensorrt.workspace_mb must be positive")
        if not 0 <= self.optimization_level <= 5:
            raise VitedgeError("tensorrt.optimization_level must be 0..5")
        if self.dla_core < -1:
            raise VitedgeError("tensorrt.dla_core must be -1 (none) or a core index")
        check_choice("tensorrt.hardware_compatibility", self.hardware_compatibility,
                     HARDWARE_COMPATIBILITY)
