"""One interface for the two backends: a model with its manifest that maps a batch of
model inputs to outputs. `load_model` picks the implementation from the artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest


class Model(Protocol):
    path: Path
    manifest: Manifest
    input_name: str
    output_name: str
    concurrent: bool
    """Whether several threads may call `infer` at once."""

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The model's output (logits or features) for a batch of preprocessed inputs."""
        ...


def load_model(path: str | Path, threads: int | None = None) -> Model:
    """A TensorRT engine (`.engine`, `.plan`) or a vitedge ONNX model (`.onnx`)."""
    p = Path(path)
    if p.suffix in (".engine", ".plan", ".trt"):
        from vitedge.runtime.tensorrt_model import TensorRTModel

        return TensorRTModel(p)
    if p.suffix == ".onnx":
        from vitedge.runtime.onnxrt import OnnxRuntimeModel

        return OnnxRuntimeModel(p, threads)
    raise VitedgeError(f"{p}: not a model vitedge runs (.onnx, or a TensorRT .engine)")
