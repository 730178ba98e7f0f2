"""ONNX graph plumbing shared by quantize and the backends: loading a model with one clear
error, who makes and who reads each tensor, initializers, extra outputs, topological order."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import onnx

from vitedge.errors import VitedgeError


def load_onnx(path: str | Path) -> Any:
    """The ONNX model at `path`, or one VitedgeError saying it is missing or not ONNX."""
    from google.protobuf.message import DecodeError

    from vitedge.fileio import require_regular_file

    p = require_regular_file(path, "model file")
    if p.stat().st_size == 0:
        raise VitedgeError(f"{p} is empty, not an ONNX model", "vitedge export makes one")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise VitedgeError(f"{p} is not an ONNX model", "vitedge export makes one") from exc
    if not model.graph.node:
        raise VitedgeError(f"{p} is not an ONNX model (it has no graph)", "vitedge export makes one")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise VitedgeError(f"{p} keeps its weights in external files, which vitedge does not "
                           "read", "export it again with vitedge export (one file)")
    return model


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """tensor name -> [(node, input index)]."""
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name:
                uses[name].append((node, i))
    return uses


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node reads and the graph does not output."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of the model that also outputs the named intermediate tensors."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return copy


def topological_order(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """`nodes` reordered so every input is made before it is read (inserted nodes may
    have been placed before their producer)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = False
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
                progress = True
            else:
                rest.append(node)
        if not progress:
            raise ValueError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    return ordered
