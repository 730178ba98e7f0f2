"""The ONNX Runtime artifact's graph rewrites give what the graph they replace gives, run by
ONNX Runtime on the demo model, and leave alone what they must not touch: attention
probabilities that are graph outputs, quantized attention, float16."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, relative_error
from vitedge.backends.onnxruntime.fusions import (
    fold_bias_adds,
    fold_constant_dequantize,
    fuse_attention,
    fuse_quantized_attention,
    split_quantized_attention,
)
from vitedge.export import ExportOptions, export_onnx
from vitedge.quantize.qdq import QuantizeOptions
from vitedge.quantize.quantizer import QuantizeRequest, quantize_model

DEPTH = 6


def run(model: onnx.ModelProto, images: np.ndarray, optimize: bool = True) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: images})


def ops(model: onnx.ModelProto) -> Counter[str]:
    return Counter(n.op_type for n in model.graph.node)


def ort_optimized(model: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


@pytest.fixture(scope="module")
def int8(demo_fp32, tmp_path_factory) -> onnx.ModelProto:
    out = tmp_path_factory.mktemp("fusions") / "int8.onnx"
    quantize_model(demo_fp32, out, QuantizeRequest("int8", data=str(DEMO_CALIBRATION)))
    return onnx.load(str(out))


def test_attention_fusion_matches_the_graph_it_replaces(demo_fp32, demo_images):
    model = onnx.load(str(demo_fp32))
    reference = run(model, demo_images[:64])[0]
    assert fuse_attention(model) == DEPTH
    onnx.checker.check_model(model)
    assert ops(model)["MultiHeadAttention"] == DEPTH
    assert ops(model)["Softmax"] == 0 and ops(model)["Transpose"] == 1  # patch tokens only
    assert relative_error(reference, run(model, demo_images[:64])[0]) < 1e-5


def test_attention_fusion_skips_probabilities_that_are_outputs(tmp_path, demo_images):
    exported = tmp_path / "attn.onnx"
    export_onnx(DEMO_CHECKPOINT, exported, ExportOptions(attention_outputs=True, verify=False))
    model = onnx.load(str(exported))
    assert fuse_attention(model) == 0
    assert ops(model)["Softmax"] == DEPTH


def test_attention_fusion_skips_quantized_attention(demo_fp32, tmp_path):
    out = tmp_path / "attn.int8.onnx"
    quantize_model(demo_fp32, out, QuantizeRequest(
        "int8", data=str(DEMO_CALIBRATION), qdq=QuantizeOptions(attention=True)))
    model = onnx.load(str(out))
    assert fuse_attention(model) == 0


def test_attention_fusion_skips_float16(demo_fp32, tmp_path):
    out = tmp_path / "fp16.onnx"
    quantize_model(demo_fp32, out, QuantizeRequest("fp16", data=str(DEMO_CALIBRATION)))
    assert fuse_attention(onnx.load(str(out))) == 0


def test_folds_on_the_optimized_int8_graph_change_no_number(int8, demo_images, tmp_path):
    optimized = ort_optimized(int8, tmp_path)
    assert ops(optimized)["MatMulIntegerToFloat"] == 4 * DEPTH
    reference = run(optimized, demo_images[:64], optimize=False)[0]
    adds = ops(optimized)["Add"]
    assert fold_bias_adds(optimized) == 3 * DEPTH  # qkv, proj, fc2 (fc1's bias is in its GELU)
    assert ops(optimized)["Add"] == adds - 3 * DEPTH
    assert fold_constant_dequantize(optimized) == 2  # patch embedding and head weights
    constants = {t.name for t in optimized.graph.initializer}
    assert not [n.name for n in optimized.graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    folded = run(optimized, demo_images[:64], optimize=False)[0]
    assert relative_error(reference, folded) < 1e-6


def test_fused_int8_artifact_agrees_with_the_int8_model(int8, demo_images, tmp_path):
    fused = onnx.ModelProto()
    fused.CopyFrom(int8)
    assert fuse_attention(fused) == DEPTH
    reference, candidate = run(int8, demo_images)[0], run(fused, demo_images)[0]
    same = (reference.argmax(1) == candidate.argmax(1)).mean()
    assert same >= 0.99 and relative_error(reference, candidate) < 0.05


def fused_and_optimized(int8: onnx.ModelProto, tmp_path) -> onnx.ModelProto:
    """The INT8 graph as `vitedge build` has it before the QAttention fusion."""
    fused = onnx.ModelProto()
    fused.CopyFrom(int8)
    fuse_attention(fused)
    optimized = ort_optimized(fused, tmp_path)
    fold_bias_adds(optimized)
    return optimized


def test_quantized_attention_fusion_agrees_and_splits_back_exactly(int8, demo_images, tmp_path):
    model = fused_and_optimized(int8, tmp_path)
    assert ops(model)["MultiHeadAttention"] == DEPTH and ops(model)["Split"] == DEPTH
    reference = run(model, demo_images, optimize=False)[0]
    assert fuse_quantized_attention(model) == DEPTH
    assert ops(model)["QAttention"] == DEPTH
    assert ops(model)["MultiHeadAttention"] == ops(model)["Split"] == 0
    assert ops(model)["MatMulIntegerToFloat"] == 3 * DEPTH  # proj, fc1, fc2 stay
    onnx.checker.check_model(model)
    fused = run(model, demo_images, optimize=False)[0]
    assert (fused.argmax(1) == reference.argmax(1)).mean() >= 0.99
    assert relative_error(reference, fused) < 0.02
    assert split_quantized_attention(model) == DEPTH
    assert ops(model)["QAttention"] == 0 and ops(model)["MultiHeadAttention"] == DEPTH
    assert relative_error(reference, run(model, demo_images, optimize=False)[0]) < 1e-7


def test_quantized_attention_fusion_needs_the_integer_qkv_matmul(demo_fp32, tmp_path):
    model = onnx.load(str(demo_fp32))
    fuse_attention(model)
    optimized = ort_optimized(model, tmp_path)
    assert ops(optimized)["MultiHeadAttention"] == DEPTH
    assert fuse_quantized_attention(optimized) == 0  # float QKV: nothing to fuse


def test_a_static_batch_int8_build_keeps_integer_matmuls(tmp_path, demo_images):
    """With every shape static (`--batch 1`; a streaming graph), ONNX Runtime's
    MatMulAddFusion would turn each MatMul + bias into Reshape + Gemm, which then runs in
    float: the build keeps every weight-quantized MatMul of the Q/DQ graph an integer one,
    as for a dynamic batch, and computes what the Q/DQ graph computes."""
    from vitedge.deploy import BuildOptions, build
    from vitedge.sessions import graph_output

    fp32 = tmp_path / "b1.onnx"
    export_onnx(DEMO_CHECKPOINT, fp32, ExportOptions(batch=1))
    out = tmp_path / "b1.int8.ort.onnx"
    build(fp32, out, BuildOptions(precision="int8", data=str(DEMO_CALIBRATION),
                                  backend="onnxruntime"))
    qdq = onnx.load(str(tmp_path / "b1.int8.onnx"))
    dequantized = {o for n in qdq.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    weight_matmuls = sum(1 for n in qdq.graph.node
                         if n.op_type == "MatMul" and n.input[1] in dequantized)
    built = ops(onnx.load(str(out)))
    assert weight_matmuls > 0 and built["Gemm"] == 0, built
    integer = built["MatMulIntegerToFloat"] + built["QAttention"]  # QAttention: the QKV MatMul
    assert integer == weight_matmuls, (built, weight_matmuls)
    x = demo_images[:1]
    from vitedge.backends.cpu_int8 import seven_bit_weights

    seven_bit_weights(qdq)  # what the artifact holds
    same = relative_error(graph_output(qdq, x, "none"), run(onnx.load(str(out)), x)[0])
    assert same < 1e-2, same
