"""Explicit INT8 quantization: QuantizeLinear/DequantizeLinear pairs placed the way ViTs
need, the portable INT8 artifact for TensorRT 10 (strongly typed) and 11.

Symmetric int8 everywhere (zero points 0, the only kind TensorRT's parser accepts),
weights per output channel as int8 initializers followed by a DequantizeLinear, activations
per tensor, biases left in float.

Schemes:
- `vit` (default): the inputs and weights of every Linear (QKV, attention projection, fc1,
  fc2, head) and the patch-embedding Conv. LayerNorm, the residual adds, Softmax and GELU
  stay in float. `attention=True` adds Q/DQ on both inputs of Q*K^T and of
  probabilities*V, which TensorRT needs to run fused multi-head attention in INT8.
- `all`: every float input of every compute op, the naive baseline kept for comparison.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitedge.errors import VitedgeError
from vitedge.options import SCHEMES, QuantizeOptions  # noqa: F401 - re-exported
from vitedge.quantize import equalize
from vitedge.quantize.graph import (
    activation_matmuls,
    initializer_names,
    linear_layers,
    topological_order,
)
from vitedge.quantize.histogram import INT8_MAX
from vitedge.quantize.table import CalibrationTable

COMPUTE_OPS = ("MatMul", "Conv", "Gemm", "Add", "Sub", "Mul", "Div", "LayerNormalization",
               "Softmax", "Erf", "ReduceMean", "Sqrt", "Pow")


@dataclass
class QuantizationPlan:
    """What gets Q/DQ: activation tensor -> the (node, input index) slots that read the
    quantized copy, and the Linear layers whose weights become int8."""

    activations: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    weights: dict[str, tuple[str, int]] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    """Quantized layer names, in graph order (the unit --sensitivity and --exclude use)."""


def plan_quantization(model: onnx.ModelProto, options: QuantizeOptions,
                      keep_float: tuple[str, ...] = ()) -> QuantizationPlan:
    def excluded(name: str) -> bool:
        return name in keep_float or any(fnmatch.fnmatchcase(name, pat) for pat in options.exclude)

    plan = QuantizationPlan()

    def add(tensor: str, node: onnx.NodeProto, index: int) -> None:
        plan.activations.setdefault(tensor, []).append((node.name, index))

    for layer in linear_layers(model):
        if excluded(layer.name):
            continue
        add(layer.activation, layer.node, 0)
        plan.weights[layer.weight] = (layer.node.name, layer.channel_axis)
        plan.layers.append(layer.name)
    if options.attention or options.scheme == "all":
        for node in activation_matmuls(model):
            name = node.name
            if excluded(name):
                continue
            add(node.input[0], node, 0)
            add(node.input[1], node, 1)
            plan.layers.append(name)
    if options.scheme == "all":
        inits = initializer_names(model)
        done = {(n, i) for slots in plan.activations.values() for n, i in slots}
        fused = fused_inside(model)
        integers = integer_tensors(model)  # token merging's index arithmetic, shapes
        for node in model.graph.node:
            if node.op_type not in COMPUTE_OPS or node.name in fused or excluded(node.name):
                continue
            for i, tensor in enumerate(node.input):
                if tensor and tensor not in inits and tensor not in integers and \
                        (node.name, i) not in done:
                    add(tensor, node, i)
            if node.name not in plan.layers:
                plan.layers.append(node.name)
    return plan


def integer_tensors(model: onnx.ModelProto) -> set[str]:
    """Tensors ONNX shape inference types as integers or booleans: never quantized."""
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
              onnx.TensorProto.DOUBLE, onnx.TensorProto.UNDEFINED}
    return {v.name for v in values if v.type.tensor_type.elem_type not in floats}


def fused_inside(model: onnx.ModelProto) -> set[str]:
    """Nodes TensorRT fuses into the op before them, where a Q/DQ would only break the
    fusion: a bias Add after its MatMul, and the Erf GELU's inner ops after its Div."""
    inits = initializer_names(model)
    made_by = {o: n for n in model.graph.node for o in n.output}
    inner: set[str] = set()
    for node in model.graph.node:
        src = made_by.get(node.input[0]) if node.input else None
        if node.op_type == "Add" and src is not None and src.op_type == "MatMul" and \
                len(node.input) > 1 and node.input[1] in inits:
            inner.add(node.name)
        gelu = ".mlp.act." in node.name or node.name.endswith(".mlp.act")
        if gelu and not node.name.endswith(".mlp.act.div"):
            inner.add(node.name)
    return inner


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Every activation some scheme quantizes: what calibration has to measure."""
    plan = plan_quantization(model, QuantizeOptions(scheme="all", attention=True))
    return list(plan.activations)


def quantize_int8(model: onnx.ModelProto, table: CalibrationTable, options: QuantizeOptions,
                  keep_float: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, QuantizationPlan]:
    """A copy of the FP32 `model` with explicit Q/DQ, from the calibration `table`."""
    q = onnx.ModelProto()
    q.CopyFrom(model)
    smoothed = options.smoothing and bool(table.smoothing)
    if smoothed:
        pairs = [p for p in equalize.smoothing_pairs(q) if p.tensor in table.smoothing]
        equalize.apply_smoothing(q, pairs, {k: np.asarray(v, np.float32)
                                           for k, v in table.smoothing.items()})
    ranges = table.ranges(smoothed)
    plan = plan_quantization(q, options, keep_float)
    missing = [t for t in plan.activations if t not in ranges]
    if missing:
        raise VitedgeError(f"the calibration table has no range for {len(missing)} tensor(s) "
                           f"({', '.join(missing[:3])})", "recalibrate this model")
    insert_qdq(q, plan, {t: ranges[t]["amax"] for t in plan.activations})
    return q, plan


def insert_qdq(model: onnx.ModelProto, plan: QuantizationPlan, amax: dict[str, float]) -> None:
    """Rewrite `model` in place: one Q/DQ pair per planned activation (shared by its
    planned readers) and int8 per-channel weights behind a DequantizeLinear."""
    graph = model.graph
    nodes_by_name = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    zero = "quant.zero_point"
    graph.initializer.append(numpy_helper.from_array(np.zeros((), np.int8), zero))
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted before the named node

    for tensor, slots in plan.activations.items():
        scale = np.float32(max(float(amax[tensor]), 1e-8) / INT8_MAX)
        scale_name = f"{tensor}.act_scale"
        graph.initializer.append(numpy_helper.from_array(np.asarray(scale, np.float32), scale_name))
        qn = helper.make_node("QuantizeLinear", [tensor, scale_name, zero], [f"{tensor}.quantized"],
                              name=f"{tensor}.quantize")
        dq = helper.make_node("DequantizeLinear", [qn.output[0], scale_name, zero],
                              [f"{tensor}.dequantized"], name=f"{tensor}.dequantize")
        first = slots[0][0]
        new_nodes.setdefault(first, []).extend([qn, dq])
        for node_name, index in slots:
            nodes_by_name[node_name].input[index] = dq.output[0]

    for weight, (node_name, axis) in plan.weights.items():
        w = numpy_helper.to_array(inits[weight]).astype(np.float32)
        q, scales = quantize_weight(w, axis)
        inits[weight].CopyFrom(numpy_helper.from_array(q, f"{weight}.int8"))
        scale_name, zp_name = f"{weight}.scale", f"{weight}.zero_point"
        graph.initializer.extend([numpy_helper.from_array(scales, scale_name),
                                  numpy_helper.from_array(np.zeros(len(scales), np.int8), zp_name)])
        dq = helper.make_node("DequantizeLinear", [f"{weight}.int8", scale_name, zp_name],
                              [f"{weight}.dequantized"], name=f"{weight}.dequantize", axis=axis)
        new_nodes.setdefault(node_name, []).append(dq)
        node = nodes_by_name[node_name]
        node.input[1] = dq.output[0]

    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.extend(new_nodes.get(node.name, []))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(topological_order(ordered, graph))


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output channel along `axis`: (int8 weights, float32 scales)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce)
    scales = (np.maximum(amax, 1e-12) / INT8_MAX).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scales.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, scales
