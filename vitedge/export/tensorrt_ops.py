"""The ONNX operators vitedge's graphs may use, and the restrictions TensorRT's ONNX
parser puts on them. Every exported or quantized model is checked against this table and,
where tensorrt_rtx is installed, by TensorRT for RTX's real parser (`tensorrt_check`);
`tests/test_tensorrt_parser.py` shows the two agree on every model the test suite writes.

Source: the operator support matrix of onnx-tensorrt for TensorRT 10.1 GA
(docs/operators.md, Apache-2.0); TensorRT 10.x parses opsets 9 to 20. Listed: the operators
vitedge emits (the streaming graph of token reuse adds TopK, GatherElements,
ScatterElements and what torch makes of its index expansion), and the standard ones ONNX
Runtime's optimizer puts into vitedge's graphs (Exp, Gemm, ReduceMax, ReduceSum, Split);
newer TensorRT releases removed none of them.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

# op -> restriction vitedge relies on (None: none that matters to a ViT graph)
TENSORRT_OPS: dict[str, str | None] = {
    "Add": None,
    "ArgMax": None,  # token merging: each token's best partner
    "Cast": None,
    "Clip": None,  # token reuse: the class token's change raised above any other
    "Concat": None,
    "ConstantOfShape": None,  # these three: how torch exports expand(-1, ...) (token reuse)
    "Equal": None,  # and token merging's one-hot matrices
    "Constant": "no sparse_value / value_string(s)",
    "Conv": None,
    "DequantizeLinear": "x_zero_point must be zero; int8 input",
    "Div": None,
    "Erf": None,
    "Exp": None,
    "Expand": None,
    "Gather": None,
    "GatherElements": None,  # token reuse's picked tokens, token merging's partners
    "Gelu": None,
    "Gemm": None,
    "Identity": None,
    "LayerNormalization": "only the first output Y",
    "Log": None,  # token merging's proportional attention
    "LpNormalization": None,  # token merging's cosine similarity
    "MatMul": None,
    "Max": None,  # the L2 norm's floor in a zero-shot head
    "Mul": None,
    "Neg": None,  # rotary embedding's pair rotation (EVA-02)
    "QuantizeLinear": "y_zero_point must be zero",
    "Range": None,  # token merging: the image index of each row of the batch
    "ReduceMax": "axes must be an initializer",
    "ReduceMean": "axes must be an initializer",
    "ReduceSum": "axes must be an initializer",
    "Reshape": None,
    "ScatterElements": "no reduction",  # token reuse: the picked tokens into their buffer
    "Shape": None,
    "Sigmoid": None,  # quick-GELU (CLIP), SiLU (SwiGLU)
    "Slice": "axes must be an initializer",
    "Softmax": None,
    "Split": "split must be an initializer",  # what ONNX Runtime's GatherSliceToSplitFusion makes
    "Sqrt": None,
    "Sub": None,
    "Tanh": None,  # GELU's tanh approximation (SigLIP)
    "TopK": "k a constant of at most 3840",  # token reuse's most changed tokens, token merging's matches
    "Transpose": None,
    "Unsqueeze": "axes must be a constant tensor",
    "Where": None,
    "Squeeze": "axes must be an initializer",
}
TRT_DOMAIN_OPS: dict[str, str] = {
    "TRT_FP4DynamicQuantize": "NVFP4 activations: block 16 on the last axis, E4M3 block "
                              "scales; TensorRT 11 and TensorRT for RTX build it",
}
"""TensorRT's own ONNX operators (domain "trt"), which its parser knows without a plugin."""
AXES_INPUT = {"Slice": 3, "ReduceMean": 1, "ReduceMax": 1, "ReduceSum": 1, "Squeeze": 1,
              "Unsqueeze": 1, "Split": 1, "TopK": 1}
"""Ops whose axes (or split sizes, or TopK's K) come as an input, which TensorRT needs to be
constant."""
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
    scales = {n.output[0]: constants[n.input[1]] for n in graph.node  # NVFP4's block scales,
              if n.op_type == "DequantizeLinear" and n.input[1] in constants}  # dequantized
    problems: list[str] = []
    for node in graph.node:
        where = f"{node.op_type} '{node.name}'"
        if node.domain == "trt" and node.op_type in TRT_DOMAIN_OPS:
            continue
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: custom domain '{node.domain}' needs a plugin")
            continue
        if node.op_type not in TENSORRT_OPS:
            problems.append(f"{where}: not in vitedge's TensorRT operator table")
            continue
        axes_index = AXES_INPUT.get(node.op_type)
        if axes_index is not None and len(node.input) > axes_index and \
                node.input[axes_index] and node.input[axes_index] not in constants:
            problems.append(f"{where}: input {axes_index} (axes / split / K) must be an initializer")
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale = constants.get(node.input[1], scales.get(node.input[1]))
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
        if node.op_type == "ScatterElements" and any(
                at.name == "reduction" and at.s not in (b"", b"none") for at in node.attribute):
            problems.append(f"{where}: a reduction is not supported")
        if node.op_type == "TopK" and (len(node.input) < 2 or node.input[1] not in constants):
            problems.append(f"{where}: k must be a constant")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: only the first output is supported")
    for t in graph.initializer:
        if t.data_type in UNSUPPORTED_TYPES:
            problems.append(f"initializer '{t.name}': data type "
                            f"{TensorProto.DataType.Name(t.data_type)} is not supported")
    return problems


def tensorrt_check(model: onnx.ModelProto) -> list[str]:
    """What TensorRT would reject in the graph: the real ONNX parser of every backend that
    has one installed here (TensorRT for RTX's; one line per error, naming the node), and
    this table's rules in any case, which also hold where a parser is more lenient than
    TensorRT 10."""
    from vitedge.backends import all_backends

    problems = tensorrt_problems(model)
    for backend in all_backends():
        real = backend.parser_problems(model)
        problems += [f"{backend.product}'s parser: {p}" for p in (real or [])]
    return problems


def parser_summary() -> str:
    """What a graph that passed `tensorrt_check` passed, in one line."""
    from vitedge.backends import all_backends

    real = "".join(f"{b.product}'s ONNX parser and " for b in all_backends()
                   if b.parser_available())
    return (f"TensorRT's parser: ok ({real}vitedge's operator table: symmetric Q/DQ, no int32 "
            "bias, supported ops)")
