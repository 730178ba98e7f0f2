"""FP32 ONNX -> INT8 (explicit Q/DQ, placed the way ViTs need), FP16, FP8, NVFP4 or a format
per layer, in the graph itself, as TensorRT 10 (strongly typed), 11 and TensorRT for RTX take
precision.

- `calibrate.py`: activation ranges from real images (streamed histograms `histogram.py`,
  the table `table.py`, SmoothQuant-style channel equalisation `equalize.py`);
- `qdq.py`: where the INT8 Q/DQ go; `fp16.py`: the FP16 conversion; `mixed.py`: FP8 / NVFP4
  (/ INT8) Q/DQ per layer in the FP16 graph; `auto.py`: which format each layer gets within
  an accuracy budget; `graph.py`: what they need to know of a ViT graph;
- `quantizer.py`: the stage (`quantize_model`), with its TensorRT parser check and its
  comparison with FP32."""

from __future__ import annotations

from typing import Any

_PUBLIC = {
    "quantize_model": "vitedge.quantize.quantizer",
    "QuantizeResult": "vitedge.quantize.quantizer",
    "default_table_path": "vitedge.quantize.calibrate",
    "with_outlier_channels": "vitedge.quantize.equalize",
}
"""The stage functions, and the stress copy the accuracy benchmarks and tests measure
quantization on (`vitedge.quantize.calibrate.calibrate` is the calibrate stage)."""
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(name)
