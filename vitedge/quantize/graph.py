"""What calibration and quantization need to know about an ONNX graph: which tensors are
float activations, which nodes are Linear layers (a MatMul or Conv with a constant
weight), and who consumes what."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto

from vitedge.graph import (  # noqa: F401 - re-exported for the quantize package
    consumers,
    drop_unused_initializers,
    initializer_names,
    producers,
    topological_order,
    with_outputs,
)

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


