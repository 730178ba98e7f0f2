"""Models that keep their weights in a data file beside them (an ONNX model over 2 GB can
only be stored so: ViT-H/14, DINOv2-g, EVA-02-E in FP32): export, hash (graph and data
file), quantize, build, verify and run them, and refuse a data file that was changed,
swapped or named outside the model's folder, each in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import vitedge
import vitedge.graph as graph
from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, DEMO_TEST_IMAGES, run_cli
from vitedge.errors import VitedgeError

IMAGES = sorted(DEMO_TEST_IMAGES.glob("*/test-0000*.png"))[:6]


def data_file(model: Path) -> Path:
    (found,) = graph.data_files(model)
    return found


@pytest.fixture(scope="module")
def external(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("external")
    out = folder / "fm.onnx"
    assert run_cli_plain(["export", str(DEMO_CHECKPOINT), "-o", str(out), "--external-data"]) == 0
    return out


def run_cli_plain(args: list[str]) -> int:
    from vitedge.cli import main

    return main(args)


def scores(model: Path) -> np.ndarray:
    with vitedge.open(model, keep_logits=True) as pipe:
        return np.stack([pipe(p).logits for p in IMAGES])


def test_export_keeps_the_weights_beside_the_model_and_hashes_both(external, demo_fp32):
    data = data_file(external)
    assert data.name.startswith("fm.onnx.") and data.stat().st_size > 500_000
    assert external.stat().st_size < 100_000  # the graph alone
    raw = onnx.load(str(external), load_external_data=False)
    assert graph.external_tensors(raw)
    manifest = json.loads(next(p.value for p in raw.metadata_props if p.key == "vitedge.manifest"))
    assert manifest["integrity"]["external_sha256"] == {
        data.name: __import__("hashlib").sha256(data.read_bytes()).hexdigest()}
    np.testing.assert_allclose(scores(external), scores(demo_fp32), rtol=1e-6, atol=1e-6)


def test_quantize_build_verify_and_run_it(external, tmp_path, capsys):
    model = tmp_path / "fm.onnx"
    shutil.copy(external, model)
    shutil.copy(data_file(external), tmp_path / data_file(external).name)
    code, out, err = run_cli(["build", str(model), "--precision", "int8", "--data",
                              str(DEMO_CALIBRATION), "--backend", "onnxruntime", "--json"],
                             capsys)  # named: the CPU race could pick OpenVINO's IR
    assert code == 0, err
    result = json.loads(out)
    artifact = Path(result["output"])
    assert result["verification"]["vs_graph"]["decided_agreement"] == 1.0
    assert data_file(artifact).name.startswith(artifact.name + ".")  # named after the artifact
    assert data_file(tmp_path / "fm.int8.onnx")  # the quantized model keeps the layout too
    code, out, err = run_cli(["predict", str(artifact), str(IMAGES[0]), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["inspect", str(artifact), "--json"], capsys)
    assert code == 0 and json.loads(out)["parameters"] > 100_000, err
    scratch = [p for p in tmp_path.iterdir() if ".vitedge-" in p.name]
    assert not scratch


def test_a_tensorrt_for_rtx_engine_is_built_from_it(external, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx")
    out = tmp_path / "fm.engine"
    code, text, err = run_cli(["build", str(external), "--precision", "fp16", "--backend",
                               "tensorrt-rtx", "-o", str(out), "--json"], capsys)
    assert code == 0, err
    result = json.loads(text)
    assert result["backend"] == "tensorrt-rtx" and result["precision"] == "fp16"
    # NVIDIA's builder read the weights from the data file: an FP16 engine holds about half
    # of the FP32 weights' bytes (a graph without them would build a few kB)
    assert out.stat().st_size >= 0.4 * data_file(external).stat().st_size
    code, text, err = run_cli(["inspect", str(out), "--json"], capsys)
    assert code == 0, err
    engine = json.loads(text)["engine"]
    assert engine["precision"] == "fp16" and engine["backend"] == "tensorrt-rtx"
    assert engine["manifest"]["integrity"]["external_sha256"]  # built from a model with a data file


@pytest.mark.parametrize("tamper, expected", [
    ("changed", "was changed or replaced since vitedge wrote it"),
    ("swapped", "was changed or replaced since vitedge wrote it"),
    ("missing", "which is missing"),
    ("outside", "outside its folder"),
])
def test_a_tampered_data_file_is_refused_in_one_line(external, tmp_path, capsys, tamper, expected):
    model = tmp_path / "fm.onnx"
    shutil.copy(external, model)
    data = tmp_path / data_file(external).name
    shutil.copy(data_file(external), data)
    if tamper == "changed":
        blob = bytearray(data.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        data.write_bytes(bytes(blob))
    elif tamper == "swapped":
        other = tmp_path / "other"
        run_cli_plain(["export", str(DEMO_CHECKPOINT), "-o", str(other / "fm.onnx"),
                       "--external-data", "--no-head"])
        shutil.copy(data_file(other / "fm.onnx"), data)
        capsys.readouterr()
    elif tamper == "missing":
        data.unlink()
    else:  # a model whose data file is named outside its folder (no vitedge manifest to trust)
        raw = onnx.load(str(model), load_external_data=False)
        for tensor in graph.external_tensors(raw):
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../" + entry.value
        del raw.metadata_props[:]
        model.write_bytes(raw.SerializeToString())
    commands = [["inspect", str(model)],
                ["build", str(model), "--precision", "fp32", "-o", str(tmp_path / "b.ort.onnx")]]
    if tamper != "outside":  # (that model has no manifest: predict refuses it for that)
        commands.append(["predict", str(model), str(IMAGES[0])])
    for command in commands:
        code, _, err = run_cli(command, capsys)
        assert code == 1 and expected in err and len(err.strip().splitlines()) == 1, (command, err)
    assert not (tmp_path / "b.ort.onnx").exists()


def test_over_the_protobuf_limit_every_stage_goes_through_data_files(tmp_path, monkeypatch,
                                                                     demo_fp32, capsys):
    """The 2 GB limit made small: what a ViT-H export meets, on the demo model. Export,
    quantize, build and the sessions that check them can then only use data files."""
    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", 100_000)
    out = tmp_path / "big.onnx"
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(out)], capsys)
    assert code == 0 and "beside the model" in err, err
    assert data_file(out)
    # ONNX Runtime named: without --backend the CPU race may pick OpenVINO, whose IR keeps
    # its weights in a .bin of its own
    code, out_json, err = run_cli(["build", str(out), "--precision", "int8", "--data",
                                   str(DEMO_CALIBRATION), "--backend", "onnxruntime", "--json"],
                                  capsys)
    assert code == 0, err
    artifact = Path(json.loads(out_json)["output"])
    assert data_file(artifact)
    np.testing.assert_allclose(scores(artifact), scores(demo_fp32), atol=0.5)


def test_a_model_that_is_not_vitedges_cannot_reach_outside_its_folder(tmp_path):
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["w"], ["y"])], "g", [],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
        [onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [1, 2, 3, 4])]))
    tensor = model.graph.initializer[0]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.ClearField("float_data")
    onnx.save(model, str(tmp_path / "evil.onnx"))
    with pytest.raises(VitedgeError, match="outside its folder"):
        graph.load_onnx(tmp_path / "evil.onnx")
