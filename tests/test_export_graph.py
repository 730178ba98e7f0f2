"""The exported graph: ONNX-valid, TensorRT-parsable, named as documented, with its
manifest inside; dynamic and static batch; written atomically."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from vitedge.export import ExportOptions, export_onnx
from vitedge.export.tensorrt_ops import TENSORRT_OPS, tensorrt_problems
from vitedge.manifest import manifest_from_onnx

from .conftest import FIXTURES

HUB = FIXTURES / "vit_tiny_hub"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    result = export_onnx(HUB, out)
    return out, result


def test_graph_is_valid_and_tensorrt_parsable(exported):
    path, _ = exported
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True)
    assert tensorrt_problems(model) == []
    ops = {n.op_type for n in model.graph.node}
    assert ops <= set(TENSORRT_OPS)
    assert "LayerNormalization" in ops and "Pow" not in ops and "ReduceMean" not in ops
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_manifest_travels_inside(exported):
    path, result = exported
    manifest = manifest_from_onnx(onnx.load(str(path)))
    assert manifest is not None
    assert manifest.architecture.depth == 2 and manifest.architecture.num_classes == 10
    assert manifest.labels is not None and len(manifest.labels) == 10
    assert manifest.source["format"] == "timm" and len(manifest.source["sha256"]) == 64
    assert manifest.precision == "fp32" and manifest.schema == 1
    assert manifest.preprocess.crop == (224, 224)
    assert result.comparisons and all(c.relative < 1e-4 for c in result.comparisons)
    assert {c.case for c in result.comparisons} == {"random", "photos"}


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch(exported, batch):
    path, _ = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    out = sess.run(None, {"images": x})[0]
    assert out.shape == (batch, 10)
    single = sess.run(None, {"images": x[:1]})[0]
    np.testing.assert_allclose(out[:1], single, rtol=1e-4, atol=1e-5)


def test_static_batch_and_opset(tmp_path):
    out = tmp_path / "static.onnx"
    export_onnx(HUB, out, ExportOptions(batch=2, opset=18))
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert model.opset_import[0].version == 18


def test_avg_pool_opset_variants(tmp_path):
    for opset in (17, 18, 20):
        out = tmp_path / f"gap{opset}.onnx"
        export_onnx(FIXTURES / "vit_reg4_gap", out, ExportOptions(opset=opset))
        assert tensorrt_problems(onnx.load(str(out))) == []


def test_attention_outputs(tmp_path):
    out = tmp_path / "attn.onnx"
    export_onnx(HUB, out, ExportOptions(attention_outputs=True))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    assert names == ["logits", "attn.0", "attn.1"]
    x = np.zeros((1, 3, 224, 224), np.float32)
    probs = sess.run(["attn.1"], {"images": x})[0]
    assert probs.shape == (1, 3, 197, 197)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_export_replaces_existing_file_atomically(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    export_onnx(HUB, out, ExportOptions(verify=False))
    assert onnx.load(str(out)).graph.output[0].name == "logits"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_checker_rejects_nonzero_zero_point():
    from onnx import TensorProto, helper, numpy_helper

    zp = numpy_helper.from_array(np.array(3, np.int8), "zp")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    node = helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["y"], name="q")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1])],
                              initializer=[zp, scale])
    problems = tensorrt_problems(helper.make_model(graph))
    assert problems == ["QuantizeLinear 'q': zero point must be 0 (symmetric quantization)"]


def test_cli_export_json(tmp_path, capsys):
    from vitedge.cli import main

    assert main(["export", str(HUB), "-o", str(tmp_path / "m.onnx"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verified"] and data["manifest"]["architecture"]["depth"] == 2
    assert set(data["timings_s"]) == {"import", "build graph", "check", "verify", "write"}


@pytest.mark.parametrize("fmt", ["txt", "json"])
def test_labels_file_replaces_checkpoint_labels(tmp_path, fmt):
    names = [f"class {i}" for i in range(10)]
    labels = tmp_path / f"labels.{fmt}"
    labels.write_text("\n".join(names) + "\n" if fmt == "txt"
                      else json.dumps({str(i): n for i, n in enumerate(names)}))
    out = tmp_path / "m.onnx"
    export_onnx(HUB, out, ExportOptions(labels=labels, verify=False))
    manifest = manifest_from_onnx(onnx.load(str(out)))
    assert manifest is not None and manifest.labels == names
