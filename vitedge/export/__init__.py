"""Checkpoint to verified ONNX: graph builder, TensorRT operator table, verification; the
streaming graph of token reuse (streaming.py)."""

from vitedge.export.exporter import ExportOptions, ExportResult, export_onnx
from vitedge.export.streaming import StreamingExport, export_streaming, export_token_reuse

__all__ = ["ExportOptions", "ExportResult", "StreamingExport", "export_onnx", "export_streaming",
           "export_token_reuse"]
