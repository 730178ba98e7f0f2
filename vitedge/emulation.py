"""An NVFP4 graph rewritten into one ONNX Runtime's CPU kernels run, computing the same
numbers: how `vitedge quantize` / `build` check NVFP4 against FP32, and how `vitedge eval`,
`predict` and the pipeline run an NVFP4 model, on a machine without a Blackwell GPU. (FP8
and INT8 Q/DQ need no rewrite: ONNX Runtime runs them as they are.) A base module: the
quantize stage and the ONNX Runtime backend both use it.

- NVFP4 weights (FLOAT4E2M1 -> DequantizeLinear(block 16) with E4M3 block scales, which
  ONNX Runtime has no kernel for) become the FP16 weights they dequantize to.
- TensorRT's dynamic activation quantizer and its two DequantizeLinear become standard ops:
  per block of 16 on the last axis, scale = E4M3(amax / 6 / s) * s (a saturating Cast to
  float8e4m3fn and back), then x / scale rounded to E2M1 (round half to even, saturating at
  6: steps of 0.5 below 2, of 1 below 4, of 2 up to 6), times the scale.

The tests compare what this computes with onnx's reference implementation of the original
graph (`onnx.reference`, which implements FLOAT4E2M1, block sizes and FP8 itself)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.graph import drop_unused_initializers, topological_order

FP4_BLOCK = 16
"""NVFP4's block: 16 values along the reduction axis share one E4M3 scale."""
FP4_MAX = 6.0
FP8_MAX = 448.0
TRT_DOMAIN = "trt"
FP4_QUANTIZER = "TRT_FP4DynamicQuantize"
"""TensorRT's dynamic NVFP4 activation quantizer (an ONNX op of TensorRT's own domain)."""


def needs_emulation(model: onnx.ModelProto) -> bool:
    return any(t.data_type == TensorProto.FLOAT4E2M1 for t in model.graph.initializer) or \
        any(n.domain == TRT_DOMAIN for n in model.graph.node)


def cpu_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` that ONNX Runtime's CPU kernels run (the model itself where it
    needs nothing)."""
    if not needs_emulation(model):
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    inits = {t.name: t for t in graph.initializer}
    made_by = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    dropped: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits and \
                inits[node.input[0]].data_type == TensorProto.FLOAT4E2M1:
            scales_dq = made_by[node.input[1]]
            graph.initializer.append(numpy_helper.from_array(
                _fp4_weight(inits, node, scales_dq), node.output[0]))
            dropped.update({node.name, scales_dq.name})
        elif node.domain == TRT_DOMAIN and node.op_type == FP4_QUANTIZER:
            scales_dq = readers[node.output[1]][0]
            values_dq = readers[node.output[0]][0]
            dropped.update({node.name, scales_dq.name, values_dq.name})
            nodes.extend(_fp4_activation(node.input[0], node.input[1], values_dq.output[0],
                                         node.name))
    nodes = [n for n in graph.node if n.name not in dropped] + nodes
    del graph.node[:]
    graph.node.extend(topological_order(nodes, graph))
    drop_unused_initializers(graph)
    kept = [o for o in m.opset_import if o.domain != TRT_DOMAIN]
    del m.opset_import[:]
    m.opset_import.extend(kept)
    return m


def _fp4_weight(inits: dict[str, onnx.TensorProto], dq: onnx.NodeProto,
                scales_dq: onnx.NodeProto) -> np.ndarray:
    """The FP16 weight DequantizeLinear(E2M1, DequantizeLinear(E4M3 block scales, s))."""
    values = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    block_scales = numpy_helper.to_array(inits[scales_dq.input[0]]).astype(np.float32)
    tensor_scale = numpy_helper.to_array(inits[scales_dq.input[1]])
    scales = (block_scales * tensor_scale.astype(np.float32)).astype(tensor_scale.dtype)
    expanded = np.repeat(scales.astype(np.float32), FP4_BLOCK, axis=0)
    return (values * expanded).astype(tensor_scale.dtype)


def _fp4_activation(x: str, tensor_scale: str, out: str, name: str) -> list[onnx.NodeProto]:
    """Standard ops computing DequantizeLinear(TRT_FP4DynamicQuantize(x, s)) along the last
    axis, in float32, back to x's FP16."""
    p = f"{name}.emulated"
    nodes: list[onnx.NodeProto] = []

    def op(op_type: str, inputs: list[str], suffix: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op_type, inputs, [f"{p}.{suffix}"], name=f"{p}.{suffix}",
                                      **attrs))
        return f"{p}.{suffix}"

    def const(suffix: str, value: object, dtype: type = np.float32) -> str:
        nodes.append(helper.make_node("Constant", [], [f"{p}.{suffix}"], name=f"{p}.{suffix}",
                                      value=numpy_helper.from_array(np.asarray(value, dtype))))
        return f"{p}.{suffix}"

    xf = op("Cast", [x], "x32", to=TensorProto.FLOAT)
    s = op("Cast", [tensor_scale], "s32", to=TensorProto.FLOAT)
    shape = op("Shape", [xf], "shape")
    blocked = op("Reshape", [xf, const("block_shape", [-1, FP4_BLOCK], np.int64)],
                 "blocks")
    amax = op("ReduceMax", [op("Abs", [blocked], "abs"), const("axis", [-1], np.int64)],
              "amax", keepdims=1)
    wanted = op("Div", [op("Div", [amax, const("fp4_max", FP4_MAX)], "per_value"), s], "wanted")
    e4m3 = op("Cast", [op("Cast", [wanted], "e4m3", to=TensorProto.FLOAT8E4M3FN)],
              "e4m3_value", to=TensorProto.FLOAT)
    scale = op("Mul", [e4m3, s], "scale")
    zero = op("Equal", [scale, const("zero", 0.0)], "is_zero")
    safe = op("Where", [zero, const("one", 1.0), scale], "safe_scale")
    y = op("Div", [blocked, safe], "scaled")
    held = op("Cast", [op("Cast", [safe], "scale16", to=TensorProto.FLOAT16)], "scale_held",
              to=TensorProto.FLOAT)  # the block scale as DequantizeLinear holds it: FP16
    a = op("Min", [op("Abs", [y], "abs_scaled"), const("max", FP4_MAX)], "clipped")
    fine = op("Div", [op("Round", [op("Mul", [a, const("two", 2.0)], "x2")], "r2"),
                      const("two_b", 2.0)], "step_half")
    mid = op("Round", [a], "step_one")
    coarse = op("Mul", [op("Round", [op("Div", [a, const("two_c", 2.0)], "d2")], "rd2"),
                        const("two_d", 2.0)], "step_two")
    below4 = op("Where", [op("Less", [a, const("four", 4.0)], "lt4"), mid, coarse], "below4")
    rounded = op("Where", [op("Less", [a, const("two_e", 2.0)], "lt2"), fine, below4], "e2m1")
    signed = op("Mul", [rounded, op("Sign", [y], "sign")], "signed")
    value = op("Where", [zero, const("zero_b", 0.0), op("Mul", [signed, held], "dq")], "value")
    flat = op("Reshape", [value, shape], "flat")
    nodes.append(helper.make_node("Cast", [flat], [out], name=f"{p}.out", to=TensorProto.FLOAT16))
    return nodes
