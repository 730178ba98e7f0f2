"""Q/DQ placement, FP16 conversion, equalisation and the TensorRT parser rules, on a small
exported ViT (the committed timm fixture), run in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import FIXTURES, relative_error
from vitedge.export import ExportOptions, export_onnx
from vitedge.export.tensorrt_ops import tensorrt_problems
from vitedge.quantize import equalize
from vitedge.quantize.calibrate import CalibrationOptions, calibrate
from vitedge.quantize.fp16 import convert_fp16
from vitedge.quantize.qdq import QuantizeOptions, quantize_int8
from vitedge.quantize.table import CalibrationTable
from vitedge.sessions import ort_session

PHOTOS = Path(__file__).parents[1] / "vitedge" / "data" / "photos"
LINEARS = ["patch_embed.proj", "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1",
           "blocks.0.mlp.fc2", "blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc1",
           "blocks.1.mlp.fc2", "head"]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, onnx.ModelProto, CalibrationTable]:
    out = tmp_path_factory.mktemp("q") / "vit_tiny.onnx"
    export_onnx(FIXTURES / "vit_tiny_hub", out, ExportOptions(verify=False))
    table = calibrate(out, None, CalibrationOptions(data=PHOTOS, batch=2, num_images=4)).table
    return out, onnx.load(str(out)), table


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (3, 3, 224, 224)).astype(np.float32)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort_session(model.SerializeToString()).run(None, {"images": x})[0]


def producer(model: onnx.ModelProto, tensor: str) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if tensor in n.output), None)


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def dequantized_from(model: onnx.ModelProto, tensor: str) -> bool:
    """`tensor` is a DequantizeLinear output fed by a QuantizeLinear (an activation Q/DQ)."""
    dq = producer(model, tensor)
    if dq is None or dq.op_type != "DequantizeLinear":
        return False
    q = producer(model, dq.input[0])
    return q is not None and q.op_type == "QuantizeLinear"


def test_vit_scheme_puts_qdq_on_linear_inputs_and_weights_only(fp32, images):
    _, model, table = fp32
    q, plan = quantize_int8(model, table, QuantizeOptions())
    assert plan.layers == LINEARS
    for layer in LINEARS:
        n = node(q, layer if layer == "patch_embed.proj" else f"{layer}/MatMul")
        assert dequantized_from(q, n.input[0]), layer
        w_dq = producer(q, n.input[1])
        assert w_dq.op_type == "DequantizeLinear"
        weight = initializer(q, w_dq.input[0])
        scales = initializer(q, w_dq.input[1])
        axis = next(a.i for a in w_dq.attribute if a.name == "axis")
        assert weight.dtype == np.int8 and np.abs(weight).max() == 127
        # per output channel: a MatMul weight is (in, out), the Conv weight (out, in, kh, kw)
        assert axis == (0 if layer == "patch_embed.proj" else 1)
        assert scales.shape == (weight.shape[axis],)
        assert not initializer(q, w_dq.input[2]).any()
    # LayerNorm, residual adds, Softmax and GELU read float tensors
    for name in ("blocks.0.norm1", "blocks.0.residual1", "blocks.0.residual2",
                 "blocks.0.attn.softmax", "blocks.0.mlp.act.erf", "norm"):
        assert not any(dequantized_from(q, i) for i in node(q, name).input), name
    for name in ("blocks.0.attn.qk", "blocks.0.attn.context"):
        assert not any(dequantized_from(q, i) for i in node(q, name).input), name
    biases = [t for t in q.graph.initializer if t.name.endswith(".bias")]
    assert biases and all(t.data_type == TensorProto.FLOAT for t in biases)
    assert tensorrt_problems(q) == []


def test_weights_round_trip_within_half_a_step(fp32):
    _, model, table = fp32
    q, _ = quantize_int8(model, table, QuantizeOptions(smooth=False))
    original = initializer(model, "blocks.1.mlp.fc1.weight")
    w_dq = producer(q, node(q, "blocks.1.mlp.fc1/MatMul").input[1])
    restored = initializer(q, w_dq.input[0]).astype(np.float32) * initializer(q, w_dq.input[1])
    step = initializer(q, w_dq.input[1])
    assert np.all(np.abs(restored - original) <= step / 2 + 1e-7)


def test_attention_option_quantizes_both_matmul_inputs(fp32):
    _, model, table = fp32
    q, plan = quantize_int8(model, table, QuantizeOptions(attention=True))
    for block in (0, 1):
        qk, ctx = node(q, f"blocks.{block}.attn.qk"), node(q, f"blocks.{block}.attn.context")
        assert all(dequantized_from(q, t) for t in (*qk.input, *ctx.input))
        assert ctx.input[0] == f"blocks.{block}.attn.softmax.dequantized"
    assert "blocks.0.attn.qk" in plan.layers


def test_scheme_all_quantizes_residuals_and_layernorm(fp32):
    _, model, table = fp32
    q, _ = quantize_int8(model, table, QuantizeOptions(scheme="all", smooth=False))
    for name in ("blocks.0.residual1", "blocks.0.norm1", "blocks.0.attn.softmax"):
        assert any(dequantized_from(q, i) for i in node(q, name).input), name
    assert tensorrt_problems(q) == []


def test_exclude_keeps_matching_layers_in_float(fp32):
    _, model, table = fp32
    q, plan = quantize_int8(model, table, QuantizeOptions(exclude=("blocks.1.*", "head")))
    assert plan.layers == LINEARS[:5]
    assert producer(q, node(q, "head/MatMul").input[1]) is None  # still a float initializer


def test_quantized_models_run_and_stay_close_to_fp32(fp32, images):
    _, model, table = fp32
    ref = run(model, images)
    for opts in (QuantizeOptions(), QuantizeOptions(attention=True), QuantizeOptions(smooth=False)):
        q, _ = quantize_int8(model, table, opts)
        onnx.checker.check_model(q, full_check=True)
        out = run(q, images)
        cos = np.sum(ref * out, -1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(out, axis=-1))
        assert cos.min() > 0.95, opts
        assert relative_error(ref, out) > 1e-4  # it really is quantized


def test_equalisation_and_outlier_copy_keep_the_function(fp32, images):
    _, model, table = fp32
    pairs = equalize.smoothing_pairs(model)
    assert {p.tensor for p in pairs} == {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1",
                                         "blocks.1.norm2", "norm", "blocks.0.attn.merged",
                                         "blocks.1.attn.merged"}
    smoothed = onnx.ModelProto()
    smoothed.CopyFrom(model)
    equalize.apply_smoothing(smoothed, pairs, {k: np.asarray(v, np.float32)
                                               for k, v in table.smoothing.items()})
    ref = run(model, images)
    assert relative_error(ref, run(smoothed, images)) < 1e-4
    stressed = equalize.with_outlier_channels(model)
    assert relative_error(ref, run(stressed, images)) < 1e-4
    gamma, stressed_gamma = (initializer(m, "blocks.0.norm1.weight") for m in (model, stressed))
    ratio = np.abs(stressed_gamma / gamma)
    assert np.sum(ratio > 19) == 4 and np.sum(np.isclose(ratio, 1)) == len(ratio) - 4


def test_fp16_keeps_io_float32_and_layernorm_float32(fp32, images):
    _, model, table = fp32
    h, report = convert_fp16(model, table.ranges(False))
    onnx.checker.check_model(h, full_check=True)
    assert h.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert h.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    weights = {t.name: t.data_type for t in h.graph.initializer}
    assert weights["blocks.0.mlp.fc1.weight.fp16"] == TensorProto.FLOAT16
    ln = node(h, "blocks.0.norm1")
    assert all(weights.get(i, TensorProto.FLOAT) == TensorProto.FLOAT for i in ln.input[1:])
    assert producer(h, ln.input[0]).op_type == "Cast"
    assert set(report.fp32_nodes) == {n.name for n in model.graph.node
                                      if n.op_type == "LayerNormalization"}
    assert relative_error(run(model, images), run(h, images)) < 1e-2
    assert tensorrt_problems(h) == []


def test_fp16_keeps_ops_near_the_fp16_limit_in_float32(fp32):
    _, model, table = fp32
    ranges = table.ranges(False)
    ranges["blocks.1.mlp.fc1"] = {"amax": 3e4, "absmax": 3e4}
    _, report = convert_fp16(model, ranges)
    assert report.overflow_nodes == ["blocks.1.mlp.fc1"]


def qdq_graph(zero_point: np.ndarray) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(zero_point, "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def test_tensorrt_checker_rejects_asymmetric_and_int32_quantization():
    assert tensorrt_problems(qdq_graph(np.array(0, np.int8))) == []
    zero_scale = qdq_graph(np.array(0, np.int8))
    zero_scale.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.array(0.0, np.float32), "s"))
    assert any("scale must be positive" in p for p in tensorrt_problems(zero_scale))
    asymmetric = tensorrt_problems(qdq_graph(np.array(3, np.int8)))
    assert asymmetric and all("zero point must be 0" in p for p in asymmetric)
    int32 = tensorrt_problems(qdq_graph(np.array(0, np.int32)))
    assert int32 and all("int32 (bias) quantization" in p for p in int32)
