"""Checkpoint to verified ONNX: graph builder, TensorRT operator table, verification."""

from vitedge.export.exporter import ExportOptions, ExportResult, export_onnx

__all__ = ["ExportOptions", "ExportResult", "export_onnx"]
