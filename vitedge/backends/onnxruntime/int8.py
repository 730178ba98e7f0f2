"""The INT8 encoding ONNX Runtime's integer kernels compute exactly on every CPU.

vitedge's Q/DQ graph (what TensorRT builds) has symmetric 8-bit weights. ONNX Runtime runs
it on x86 as u8 activations x s8 weights, and on CPUs without VNNI (AVX2, AVX-512 without
VNNI: AMD Zen 2/3, Intel before Cascade Lake, Atom) its kernels add each pair of products
in a saturating 16-bit lane, so large activations against large weights are clipped and the
model silently computes something else (`vitedge.backends.onnxruntime.cpu`). With every weight within
-63..63 no pair can overflow, and the integer kernels give the graph's own numbers on every
CPU class (measured on the demo model under an AVX2 CPU: `benchmarks/RESULTS.md`).

`seven_bit_weights` requantizes each weight channel from its 8-bit integers: the channel's
largest |q| maps to 63 and its scale grows by the same factor. On the demo model and its
outlier-channel copy this changed top-1 agreement with FP32 by less than the noise of 2,000
images (99.60 -> 99.70 % and 99.60 -> 99.60 %), which is why it is the one encoding of the
ONNX Runtime artifact rather than one per CPU class; the Q/DQ graph given to TensorRT
keeps its 8 bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

WEIGHT_BITS = 7
WEIGHT_MAX = 2 ** (WEIGHT_BITS - 1) - 1
"""63: |w| <= 63 keeps 2 * 255 * |w| within a 16-bit lane (see vitedge.backends.onnxruntime.cpu)."""
INTEGER_KERNEL_OPS = ("MatMulIntegerToFloat", "QAttention", "MatMulInteger", "QLinearMatMul",
                      "QLinearConv", "ConvInteger", "QGemm", "DynamicQuantizeMatMul")
"""Ops whose int8 weight ONNX Runtime multiplies in integers (after its QDQ fusions)."""


def seven_bit_weights(model: onnx.ModelProto) -> int:
    """Every constant int8 weight behind a symmetric DequantizeLinear requantized, in place,
    to at most |63| per channel (its scale raised to match); returns how many changed."""
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        weight = inits.get(node.input[0])
        scale = inits.get(node.input[1]) if len(node.input) > 1 else None
        zero = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None or scale is None or weight.data_type != TensorProto.INT8:
            continue
        if zero is not None and numpy_helper.to_array(zero).any():
            continue  # asymmetric: not a vitedge graph's weight
        q = numpy_helper.to_array(weight).astype(np.int32)
        s = numpy_helper.to_array(scale).astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(q.ndim, 1)
        shape = [1] * q.ndim
        if s.ndim == 1 and q.ndim:
            shape[axis] = -1
        reduce = tuple(i for i in range(q.ndim) if i != axis) if s.ndim == 1 else None
        peak = np.abs(q).max(axis=reduce) if q.size else np.zeros_like(s)
        factor = np.maximum(peak.astype(np.float32), WEIGHT_MAX) / WEIGHT_MAX
        if not (factor > 1).any():
            continue
        q7 = np.clip(np.round(q / factor.reshape(shape)), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int8)
        weight.CopyFrom(numpy_helper.from_array(q7, weight.name))
        scale.CopyFrom(numpy_helper.from_array((s * factor).astype(np.float32), scale.name))
        changed += 1
    return changed


def largest_integer_weight(model: onnx.ModelProto) -> int:
    """The largest |int8 weight| that an integer kernel (or a weight DequantizeLinear)
    reads: at most WEIGHT_MAX means no CPU's kernels saturate on this model."""
    inits = {t.name: t for t in model.graph.initializer}
    largest = 0
    for node in model.graph.node:
        if node.op_type not in (*INTEGER_KERNEL_OPS, "DequantizeLinear"):
            continue
        for name in node.input:
            t = inits.get(name)
            if t is not None and t.data_type == TensorProto.INT8 and t.dims:
                largest = max(largest, int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()))
    return largest


def cpu_exact_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A raw Q/DQ INT8 model (not built) with the weights ONNX Runtime's integer kernels
    compute exactly on every CPU, in place: the same numbers on an AVX2 laptop as on a
    VNNI server. Returns the model."""
    seven_bit_weights(model)
    return model


def saturation_warnings(manifest: Any, name: str) -> list[str]:
    """Why a built INT8 artifact may compute wrong numbers on this CPU (one line each)."""
    from vitedge.backends.onnxruntime.cpu import cpu_int8

    bits = int(manifest.source.get("int8_weight_bits", 8))
    cpu = cpu_int8()
    if manifest.precision != "int8" or bits <= WEIGHT_BITS or not cpu.saturates:
        return []
    return [f"{name} has 8-bit weights (built by vitedge {manifest.vitedge_version}) and this "
            f"CPU ({', '.join(cpu.features) or cpu.arch}, no VNNI) adds INT8 products in "
            "saturating 16-bit lanes, so its results can differ from its Q/DQ graph; "
            "rebuild it with `vitedge build` (7-bit weights, exact on every CPU)"]
