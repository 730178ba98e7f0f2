from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "timm"


def images_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """The fixture script's expression, uint8 pixels to [-1, 1] floats."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def reference_cases() -> list[dict]:
    return json.loads((FIXTURES / "cases.json").read_text())["cases"]


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import tensorrt  # noqa: F401

        has_trt = hasattr(tensorrt, "Builder")
    except ImportError:
        has_trt = False
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and TensorRT (see README: GPU tests)")
    for item in items:
        if "gpu" in item.keywords and not has_trt:
            item.add_marker(skip)
