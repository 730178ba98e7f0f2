"""FP8 and NVFP4: the graphs vitedge writes compute what onnx's reference implementation of
the same graph computes (`onnx.reference`, which implements E4M3, E2M1 and block sizes
itself; TensorRT's dynamic FP4 quantizer is written here from NVIDIA's definition), stay close
to FP32 where a broken scale does not, build with TensorRT for RTX's real builder for the
compute capabilities that run them and are refused for those that do not, and
`--precision auto` picks a per-layer mix within its budget."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from tests.conftest import DEMO_CALIBRATION, run_cli
from vitedge.compare import agreement
from vitedge.datasets import image_source, model_inputs
from vitedge.emulation import cpu_graph
from vitedge.manifest import require_manifest
from vitedge.options import CalibrationOptions, QuantizeOptions, QuantizeRequest
from vitedge.quantize.quantizer import quantize_model
from vitedge.sessions import graph_output

ml_dtypes = pytest.importorskip("ml_dtypes")

ROOT = Path(__file__).parents[1]
EVALUATION = ROOT / "evaluation" / "fashion-mnist"
FIXTURES = ROOT / "tests" / "fixtures" / "timm"


class TRT_FP4DynamicQuantize(OpRun):  # noqa: N801 - TensorRT's operator name
    """TensorRT's dynamic NVFP4 quantizer, per NVIDIA's definition (ModelOpt's ONNX export):
    blocks of `block_size` along the last axis; block scale = E4M3(amax / 6 / s); values =
    E2M1(x / (block scale * s)). Outputs (E2M1 values, E4M3 block scales)."""

    op_domain = "trt"

    def _run(self, x, s, axis=-1, block_size=16, scale_type=TensorProto.FLOAT8E4M3FN):
        blocks = x.astype(np.float32).reshape(-1, block_size)
        s = np.float32(s)
        scale = np.clip(np.abs(blocks).max(axis=1, keepdims=True) / 6 / s, -448, 448)
        scale8 = scale.astype(ml_dtypes.float8_e4m3fn)
        effective = scale8.astype(np.float32) * s
        q = np.divide(blocks, effective, out=np.zeros_like(blocks), where=effective > 0)
        values = np.clip(q, -6, 6).astype(ml_dtypes.float4_e2m1fn)
        return values.reshape(x.shape), scale8.reshape(*x.shape[:-1], -1)


def reference_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    evaluator = ReferenceEvaluator(model, new_ops=[TRT_FP4DynamicQuantize])
    return evaluator.run(None, {model.graph.input[0].name: x})[0]


def vitedge_check_output(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """What `vitedge quantize` / `build` compare with FP32: ONNX Runtime on the CPU graph."""
    return graph_output(cpu_graph(model), x, "none")


@pytest.fixture(scope="module")
def demo(demo_fp32, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp8")
    shutil.copy(demo_fp32, folder / "m.onnx")
    return folder / "m.onnx"


@pytest.fixture(scope="module")
def images(demo):
    manifest = require_manifest(onnx.load(str(demo)), demo)
    return np.stack(list(model_inputs(image_source(EVALUATION, 64, 3), manifest)))


VARIANTS = {"fp8": ("fp8", "auto"), "nvfp4-w4a8": ("nvfp4", "fp8"),
            "nvfp4-w4a4": ("nvfp4", "nvfp4")}


def quantized(fp32: Path, variant: str, **qdq) -> Path:
    precision, acts = VARIANTS[variant]
    out = fp32.with_name(f"{fp32.stem}.{variant}{'.'.join(['', *qdq]) if qdq else ''}.onnx")
    if not out.exists():
        quantize_model(fp32, out, QuantizeRequest(
            precision, data=str(DEMO_CALIBRATION), calibration=CalibrationOptions(num_images=128),
            qdq=QuantizeOptions(fp4_activations=acts, **qdq)))
    return out


@pytest.mark.parametrize("variant, close, least", [("fp8", 0.999, 0.97),
                                                   ("nvfp4-w4a8", 0.999, 0.93),
                                                   ("nvfp4-w4a4", 0.995, 0.93)])
def test_the_graph_computes_what_onnx_reference_computes(demo, images, variant, close, least):
    """Each part is exact (the tests below); whole graphs differ only where the two compute
    an FP32 op (LayerNorm, Softmax) a rounding apart and a value lands across an E4M3 / E2M1
    boundary, which W4A4's 4-bit activations make most often: both stay as close to FP32."""
    path = quantized(demo, variant)
    model = onnx.load(str(path))
    ours, theirs = vitedge_check_output(model, images), reference_output(model, images)
    same = agreement(theirs, ours)
    assert same.cosine >= close and same.top1_agreement >= 0.95, same.describe()
    fp32 = graph_output(onnx.load(str(demo)), images)
    assert agreement(fp32, theirs).top1_agreement >= least
    assert abs(agreement(fp32, theirs).cosine - agreement(fp32, ours).cosine) < 0.002
    assert require_manifest(model, path).precision == VARIANTS[variant][0]
    types = {t.data_type for t in model.graph.initializer}
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert TensorProto.FLOAT8E4M3FN in types
    assert (TensorProto.FLOAT4E2M1 in types) == variant.startswith("nvfp4")
    assert (("trt", "TRT_FP4DynamicQuantize") in ops) == (variant == "nvfp4-w4a4")
    opset = {o.domain: o.version for o in model.opset_import}
    assert opset[""] >= (23 if variant.startswith("nvfp4") else 19)


def test_fp8_attention_quantizes_both_matrix_products(demo, images):
    model = onnx.load(str(quantized(demo, "fp8", attention=True)))
    made_by = {o: n for n in model.graph.node for o in n.output}
    for mm in (n for n in model.graph.node if n.name.endswith(".attn.qk")
               or n.name.endswith(".attn.context")):
        assert all(made_by[i].op_type == "DequantizeLinear" for i in mm.input), mm.name
    softmax_scales = [numpy_helper.to_array(t) for t in model.graph.initializer
                      if t.name.endswith("attn.softmax.fp8_scale")]
    assert len(softmax_scales) == 6 and all(float(s) == pytest.approx(1 / 448, rel=1e-3)
                                            for s in softmax_scales)
    same = agreement(reference_output(model, images), vitedge_check_output(model, images))
    assert same.cosine >= 0.999


def test_nvfp4_weights_become_what_onnx_reference_dequantizes(demo):
    """The CPU graph's FP16 weights equal onnx.reference's two DequantizeLinear, bit for bit."""
    model = onnx.load(str(quantized(demo, "nvfp4-w4a8")))
    folded = {t.name: numpy_helper.to_array(t) for t in cpu_graph(model).graph.initializer}
    inits = {t.name: t for t in model.graph.initializer}
    made_by = {o: n for n in model.graph.node for o in n.output}
    chains = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
              and inits.get(n.input[0]) is not None
              and inits[n.input[0]].data_type == TensorProto.FLOAT4E2M1]
    assert len(chains) == 24
    for dq in chains:
        scales = made_by[dq.input[1]]
        graph = helper.make_graph([scales, dq], "w", [], [helper.make_tensor_value_info(
            dq.output[0], TensorProto.FLOAT16, None)],
            [inits[dq.input[0]], inits[scales.input[0]], inits[scales.input[1]]])
        expected = ReferenceEvaluator(helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 23)])).run(None, {})[0]
        assert np.array_equal(folded[dq.output[0]], expected), dq.name


def test_the_fp4_activation_emulation_equals_the_quantizer_it_replaces():
    """Blocks with zeros, ties, values past 6 x scale and tiny ones, through TensorRT's
    quantizer and two DequantizeLinear: ONNX Runtime on vitedge's CPU graph against
    onnx.reference on the original, bit for bit."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 7, 64)) * rng.choice([1e-3, 1, 40], (3, 7, 1))).astype(np.float16)
    x[0, 0, :16] = 0
    x[1, 2, :16] = np.array([6, 5, 3.5, 2.5, 1.75, 1.25, 0.75, 0.25] * 2, np.float16)  # ties
    nodes = [helper.make_node("TRT_FP4DynamicQuantize", ["x", "s"], ["q", "qs"], domain="trt",
                              axis=-1, block_size=16, scale_type=TensorProto.FLOAT8E4M3FN),
             helper.make_node("DequantizeLinear", ["qs", "s"], ["scale"]),
             helper.make_node("DequantizeLinear", ["q", "scale"], ["y"], axis=-1, block_size=16)]
    graph = helper.make_graph(
        nodes, "a", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [3, 7, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [3, 7, 64])],
        [numpy_helper.from_array(np.array(2.0 ** -7, np.float16), "s")])  # block scale 1.0
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23),
                                                    helper.make_opsetid("trt", 1)])
    expected = ReferenceEvaluator(model, new_ops=[TRT_FP4DynamicQuantize]).run(None, {"x": x})[0]
    import onnxruntime as ort

    session = ort.InferenceSession(cpu_graph(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x})[0]
    assert np.array_equal(got, expected)
    assert expected[1, 2, :8].tolist() == [6, 4, 4, 2, 2, 1, 1, 0]  # ties to the even code
    assert not expected[0, 0, :16].any() and np.isfinite(expected).all()


def test_a_sabotaged_scale_fails_the_bound_the_real_one_keeps(demo, images):
    model = onnx.load(str(quantized(demo, "fp8")))
    fp32 = graph_output(onnx.load(str(demo)), images)
    bound = 0.97
    assert agreement(fp32, vitedge_check_output(model, images)).top1_agreement >= bound
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    name = next(t.name for t in broken.graph.initializer
                if t.name.startswith("blocks.0.norm1") and t.name.endswith("fp8_scale"))
    for t in broken.graph.initializer:
        if t.name == name:  # a range 10x too small: activations saturate at 448 x scale
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) / np.float16(10), name))
    assert agreement(fp32, vitedge_check_output(broken, images)).top1_agreement < bound
    assert agreement(fp32, reference_output(broken, images)).top1_agreement < bound


@pytest.mark.parametrize("family", ["dinov2", "eva02_small"])
def test_a_family_quantizes_to_fp8_and_nvfp4(tmp_path, family):
    """DINOv2 and EVA-02 (features, their test fixtures): the same reference equality,
    cosine with FP32. EVA-02's mean pooling is a ReduceMean whose `axes` moves from an
    attribute to an input on the way to FP8's opset 19 and NVFP4's 23."""
    from vitedge.export import ExportOptions, export_onnx

    fp32 = tmp_path / f"{family}.onnx"
    export_onnx(FIXTURES / family, fp32, ExportOptions())
    manifest = require_manifest(onnx.load(str(fp32)), fp32)
    x = np.stack(list(model_inputs(image_source(EVALUATION, 16, 0), manifest)))
    reference = graph_output(onnx.load(str(fp32)), x)
    for variant, least in (("fp8", 0.995), ("nvfp4-w4a4", 0.97)):
        model = onnx.load(str(quantized(fp32, variant)))
        ours, theirs = vitedge_check_output(model, x), reference_output(model, x)
        assert agreement(theirs, ours).cosine >= 0.999, variant
        assert agreement(reference, theirs).cosine >= least, variant


def test_auto_on_the_stress_copy_picks_a_mix_within_its_budget(demo, tmp_path):
    from vitedge.quantize import with_outlier_channels

    stress = tmp_path / "stress.onnx"
    stress.write_bytes(with_outlier_channels(onnx.load(str(demo))).SerializeToString())
    result = quantize_model(stress, tmp_path / "stress.auto.onnx", QuantizeRequest(
        "auto", data=str(DEMO_CALIBRATION), profile="desktop-rtx-50", max_drop=0.5))
    formats = set(result.formats.values())
    assert {"nvfp4", "fp8"} <= formats, result.formats  # a mix, cheapest where it can
    assert result.auto["within"] and result.check is not None
    assert result.check.top1_agreement >= 0.995  # the budget, on the images it measured
    model = onnx.load(str(tmp_path / "stress.auto.onnx"))
    assert require_manifest(model, tmp_path / "stress.auto.onnx").precision == "mixed"
    # independently: onnx.reference computes the written graph as vitedge's check did
    manifest = require_manifest(onnx.load(str(stress)), stress)
    x = np.stack(list(model_inputs(image_source(EVALUATION, 48, 5), manifest)))
    assert agreement(reference_output(model, x), vitedge_check_output(model, x)).cosine >= 0.999
    # a stricter budget costs more precision: fewer NVFP4 layers
    stricter = quantize_model(stress, tmp_path / "strict.auto.onnx", replace(QuantizeRequest(
        "auto", data=str(DEMO_CALIBRATION), profile="desktop-rtx-50"), max_drop=0.0))
    cheap = sum(f == "nvfp4" for f in result.formats.values())
    assert sum(f == "nvfp4" for f in stricter.formats.values()) <= cheap


# --- TensorRT for RTX: the real builder, no GPU ------------------------------------------------

def _rtx() -> None:
    pytest.importorskip("tensorrt_rtx")


@pytest.mark.parametrize("profile, precision, targets", [
    ("desktop-rtx-40", "fp8", ["8.9"]), ("desktop-rtx-50", "fp8", ["12.0"]),
    ("desktop-rtx-50", "nvfp4", ["12.0"])])
def test_tensorrt_for_rtx_builds_them_where_they_run(demo, profile, precision, targets, capsys):
    _rtx()
    engine = demo.with_name(f"m.{profile}.{precision}.engine")
    code, out, err = run_cli(["build", str(demo), "--profile", profile, "--precision", precision,
                              "--data", str(DEMO_CALIBRATION), "-o", str(engine), "--json"],
                             capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["precision"] == precision and result["quantization"]["check"]["cosine"] > 0.99
    sidecar = json.loads(Path(f"{engine}.json").read_text())
    assert sidecar["precision"] == precision and sidecar["compute_capabilities"] == targets
    if precision == "nvfp4":  # TensorRT for RTX builds the dynamic FP4 quantizer: W4A4
        assert result["quantization"]["summary"][0].count("W4A4") == 1


@pytest.mark.parametrize("args, target, runs", [
    (["--profile", "desktop-rtx-40", "--precision", "nvfp4"], "8.9", "fp32, fp16, fp8"),
    (["--backend", "tensorrt-rtx", "--precision", "fp8"], "8.6", "fp32, fp16")])
def test_a_target_that_cannot_run_it_is_refused_in_one_line(demo, args, target, runs, capsys):
    _rtx()
    code, _, err = run_cli(["build", str(demo), *args, "--data", str(DEMO_CALIBRATION)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert f"compute capability {target}" in err and f"it runs {runs}" in err


@pytest.mark.parametrize("variant, refused", [("fp8", "8.6"), ("nvfp4-w4a4", "8.9")])
def test_nvidias_builder_refuses_what_the_table_refuses(demo, variant, refused):
    """Past vitedge's table: the builder itself will not compile these formats there."""
    _rtx()
    from vitedge.backends.tensorrt_rtx.build import build_rtx_engine
    from vitedge.errors import VitedgeError
    from vitedge.profiles import BatchRange
    from vitedge.target import load_profile

    path = quantized(demo, variant)
    profile = load_profile("rtx-portable")
    profile = replace(profile, sections={**profile.sections, "tensorrt_rtx": replace(
        profile.tensorrt_rtx, compute_capabilities=(refused,))})
    with pytest.raises(VitedgeError) as info:
        build_rtx_engine(path, path.with_suffix(".refused.engine"),
                         require_manifest(onnx.load(str(path)), path), profile, BatchRange(1, 1, 4))
    assert f"sm{refused.replace('.', '')}" in str(info.value)
    assert ("fp4_e2m1" if variant.startswith("nvfp4") else "fp8_e4m3") in str(info.value)
