"""The real ONNX parser of TensorRT for RTX (derived from onnx-tensorrt, opsets 9-22, the
same rules as TensorRT's: symmetric Q/DQ only, no int32 bias) as a check of every ONNX model
vitedge writes, where tensorrt_rtx is installed; vitedge's operator table
(`vitedge.export.tensorrt_ops`) stays the check where it is not."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from vitedge.backends.tensorrt.flavours import TENSORRT_RTX, collecting_logger

_LOCK = threading.Lock()


def available() -> bool:
    return TENSORRT_RTX.import_module() is not None


def parser_problems(model: Any) -> list[str] | None:
    """What TensorRT for RTX's ONNX parser rejects in `model` (an onnx.ModelProto or its
    bytes), one line per error with the node it is about; [] when it parses; None where
    tensorrt_rtx is not installed."""
    trt = TENSORRT_RTX.import_module()
    if trt is None:
        return None
    from vitedge.graph import needs_external_data, save_onnx

    if not isinstance(model, bytes) and needs_external_data(model):  # too large for bytes
        from vitedge.lifetime import scratch_folder

        with scratch_folder("parse-") as folder:
            path = Path(folder) / "model.onnx"
            save_onnx(model, path, external=True)
            return _parse(trt, path.read_bytes(), str(path))
    return _parse(trt, model if isinstance(model, bytes) else model.SerializeToString(), None)


def _parse(trt: Any, data: bytes, path: str | None) -> list[str]:
    from vitedge.backends.tensorrt.build import parser_errors

    with _LOCK:  # one parse at a time: the builder is not meant to be shared by threads
        logger = collecting_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if parser.parse(data, path) if path else parser.parse(data):
            return []
        return parser_errors(parser) or [m.splitlines()[0] for m in logger.errors()[:3]] or [
            "rejected, no reason given"]
