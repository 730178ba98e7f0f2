"""An ONNX model's tensors as values: every tensor a graph holds (initializers and node
attributes, subgraphs too), those stored in a data file, reading them in, and a digest of the
graph that follows the values rather than how a file stores them. Below the manifest, which
fingerprints models with it, and the graph module, which re-exports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from vitedge.errors import VitedgeError
from vitedge.onnx_file import external_file


def external_tensors(model: onnx.ModelProto) -> list[Any]:
    return [t for t in all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def all_tensors(graph: onnx.GraphProto) -> list[Any]:
    """Every tensor of `graph`: initializers and node attributes (a Constant's value), in
    subgraphs too; onnx's external-data writer moves any of them to a data file."""
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            found.extend(attr.tensors)
            if attr.HasField("g"):
                found.extend(all_tensors(attr.g))
            for sub in attr.graphs:
                found.extend(all_tensors(sub))
    return found


def tensors_digest(model: onnx.ModelProto) -> str:
    """sha256 of the graph as its values are, not as a file stores them: every tensor's
    bytes inline, no data-file reference (the external tensors must have been read in).
    A model re-saved with its weights in a data file, or back in one file, keeps it."""
    import hashlib

    def stored_apart(t: Any) -> bool:
        return t.HasField("data_location") or len(t.external_data) > 0

    if not any(stored_apart(t) for t in all_tensors(model.graph)):
        return hashlib.sha256(model.graph.SerializeToString()).hexdigest()
    canonical = onnx.GraphProto()
    canonical.CopyFrom(model.graph)
    for tensor in all_tensors(canonical):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"tensor '{tensor.name}' is not read in")
        tensor.ClearField("data_location")
        del tensor.external_data[:]
    return hashlib.sha256(canonical.SerializeToString()).hexdigest()


def load_external_weights(model: onnx.ModelProto, model_path: Path) -> None:
    """Read each external tensor's bytes (location, offset, length checked against the
    file) into the model, in place."""
    import numpy as np

    sizes: dict[Path, int] = {}
    for tensor in external_tensors(model):
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        file = external_file(model_path, location)
        if file not in sizes:
            if not file.is_file():
                raise VitedgeError(f"{model_path} keeps its weights in {location}, which is "
                                   "missing", "copy the model's data files beside it")
            sizes[file] = file.stat().st_size
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise VitedgeError(f"{model_path}: tensor '{tensor.name}' has a bad offset or "
                               "length for its external data") from None
        if length < 0:
            length = sizes[file] - offset
        if offset < 0 or offset + length > sizes[file]:
            raise VitedgeError(f"{model_path}: tensor '{tensor.name}' reads bytes {offset}..."
                               f"{offset + length} of {location}, which has {sizes[file]}",
                               "the data file does not belong to this model")
        with open(file, "rb") as f:
            f.seek(offset)
            tensor.raw_data = f.read(length)
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
        expected = int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(
            tensor.data_type).itemsize if tensor.data_type != onnx.TensorProto.STRING else None
        if expected is not None and len(tensor.raw_data) != expected:
            raise VitedgeError(f"{model_path}: tensor '{tensor.name}' needs {expected} bytes; "
                               f"{location} gives {len(tensor.raw_data)}",
                               "the data file does not belong to this model")
