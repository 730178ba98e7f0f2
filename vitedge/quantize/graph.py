"""What calibration and quantization need to know about an ONNX graph: which tensors are
float activations, which nodes are Linear layers (a MatMul or Conv with a constant
weight), and who consumes what."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx
from onnx import TensorProto

PASS_THROUGH = ("Gather", "Slice", "ReduceMean", "Identity")
"""Ops that keep each channel of the last axis apart (so a per-channel scale commutes)."""


@dataclass(frozen=True)
class Linear:
    """A MatMul or Conv whose weight is an initializer. `name` is the layer name
    (`blocks.0.attn.qkv`); `channel_axis` is the weight's output-channel axis."""

    node: onnx.NodeProto
    name: str
    activation: str
    weight: str
    channel_axis: int


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


def float_activations(model: onnx.ModelProto) -> list[str]:
    """Float tensors computed by the graph (graph inputs and node outputs), in graph order."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    names = [i.name for i in model.graph.input]
    names += [o for n in model.graph.node for o in n.output if o]
    return [n for n in names if types.get(n) in (TensorProto.FLOAT, TensorProto.FLOAT16)]


def layer_name(node: onnx.NodeProto) -> str:
    return node.name.removesuffix("/MatMul")


def linear_layers(model: onnx.ModelProto) -> list[Linear]:
    inits = initializer_names(model)
    layers = []
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits and node.input[0] not in inits:
            layers.append(Linear(node, layer_name(node), node.input[0], node.input[1], 1))
        elif node.op_type == "Conv" and node.input[1] in inits:
            layers.append(Linear(node, layer_name(node), node.input[0], node.input[1], 0))
    return layers


def activation_matmuls(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """MatMuls between two activations: attention's Q*K^T and probabilities*V."""
    inits = initializer_names(model)
    return [n for n in model.graph.node
            if n.op_type == "MatMul" and n.input[0] not in inits and n.input[1] not in inits]


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
