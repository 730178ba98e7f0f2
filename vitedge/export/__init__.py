"""Checkpoint to verified ONNX."""
