"""The ONNX operators vitedge's graphs may use, and the restrictions TensorRT's ONNX
parser puts on them. Every exported or quantized model is checked against this table.

Source: the operator support matrix of onnx-tensorrt for TensorRT 10.1 GA
(docs/operators.md, Apache-2.0); TensorRT 10.x parses opsets 9 to 20. Only the operators
vitedge emits are listed; newer TensorRT releases removed none of them.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

# op -> restriction vitedge relies on (None: none that matters to a ViT graph)
TENSORRT_OPS: dict[str, str | None] = {
    "Add": None,
    "Cast": None,
    "Concat": None,
    "Constant": "no sparse_value / value_string(s)",
    "Conv": None,
    "DequantizeLinear": "x_zero_point must be zero; int8 input",
    "Div": None,
    "Erf": None,
    "Expand": None,
    "Gather": None,
    "Gelu": None,
    "Identity": None,
    "LayerNormalization": "only the first output Y",
    "MatMul": None,
    "Mul": None,
    "QuantizeLinear": "y_zero_point must be zero",
    "ReduceMean": "axes must be an initializer",
    "Reshape": None,
    "Shape": None,
    "Slice": "axes must be an initializer",
    "Softmax": None,
    "Sqrt": None,
    "Sub": None,
    "Transpose": None,
    "Unsqueeze": "axes must be a constant tensor",
    "Squeeze": "axes must be an initializer",
}
UNSUPPORTED_TYPES = {TensorProto.DOUBLE, TensorProto.STRING, TensorProto.UINT16,
                     TensorProto.UINT32, TensorProto.UINT64, TensorProto.COMPLEX64}


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """What in the graph TensorRT's ONNX parser would reject; empty when all is well."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    constants[node.output[0]] = attr.t
    problems: list[str] = []
    for node in graph.node:
        where = f"{node.op_type} '{node.name}'"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain '{node.domain}' needs a plugin")
            continue
        if node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: not in vitedge's TensorRT operator table")
            continue
        if node.op_type in ("Slice", "ReduceMean", "Squeeze", "Unsqueeze"):
            axes_index = {"Slice": 3, "ReduceMean": 1, "Squeeze": 1, "Unsqueeze": 1}[node.op_type]
            if len(node.input) > axes_index and node.input[axes_index] and \
                    node.input[axes_index] not in constants:
                problems.append(f"{where}: axes must be an initializer")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = constants.get(node.input[1])
            if scale is None:
                problems.append(f"{where}: scale must be a constant")
            elif not (numpy_helper.to_array(scale) > 0).all():
                problems.append(f"{where}: scale must be positive")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = constants.get(node.input[2])
            if zp is None:
                problems.append(f"{where}: zero point must be a constant")
            else:
                arr = numpy_helper.to_array(zp)
                if arr.any():
                    problems.append(f"{where}: zero point must be 0 (symmetric quantization)")
                if zp.data_type == TensorProto.INT32:
                    problems.append(f"{where}: int32 (bias) quantization is not supported")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: only the first output is supported")
    for t in graph.initializer:
        if t.data_type in UNSUPPORTED_TYPES:
            problems.append(f"initializer '{t.name}': data type "
                            f"{TensorProto.DataType.Name(t.data_type)} is not supported")
    return problems
