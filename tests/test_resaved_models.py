"""A vitedge model's fingerprint follows its tensors' values, not how the file stores them:
re-saved by onnx with its weights in a data file (or back in one file) it still runs,
builds and inspects; a real change to a weight is still refused (issue 31, item 4c)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import DEMO_CHECKPOINT, DEMO_TEST_IMAGES, run_cli
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner

IMAGE = str(next(DEMO_TEST_IMAGES.glob("*/*.png")))
MANIFEST = "vitedge.manifest"


def resaved(source, out, external: bool):
    """`source` loaded by onnx and saved again, as a user's script would."""
    model = onnx.load(str(source))
    onnx.save(model, str(out), save_as_external_data=external,
              location=f"{out.name}.data" if external else None)
    return out


def logits(path, images):
    return OnnxRuntimeRunner(path).infer(images)


def test_an_export_resaved_with_external_data_still_predicts_builds_and_inspects(
        demo_fp32, demo_images, tmp_path, capsys):
    model = resaved(demo_fp32, tmp_path / "ext.onnx", external=True)
    assert onnx.load(str(model), load_external_data=False).graph.initializer[0].external_data
    for args in (["predict", str(model), IMAGE], ["inspect", str(model)],
                 ["build", str(model), "--precision", "fp32", "--profile", "cpu"]):
        code, _, err = run_cli(args, capsys)
        assert code == 0, err
    np.testing.assert_array_equal(logits(model, demo_images), logits(demo_fp32, demo_images))


def test_a_model_stored_in_a_data_file_resaved_in_one_file_still_loads(tmp_path, capsys):
    split = tmp_path / "split.onnx"
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(split), "--external-data",
                            "--no-verify"], capsys)
    assert code == 0, err
    one = resaved(split, tmp_path / "one.onnx", external=False)
    assert not onnx.load(str(one), load_external_data=False).graph.initializer[0].external_data
    code, _, err = run_cli(["predict", str(one), IMAGE], capsys)
    assert code == 0, err


def test_a_manifest_without_the_values_fingerprint_still_accepts_a_resave(demo_fp32, tmp_path,
                                                                         capsys):
    """A model written before the values' fingerprint was recorded: its one-file graph is it."""
    model = onnx.load(str(demo_fp32))
    entry = next(p for p in model.metadata_props if p.key == MANIFEST)
    manifest = json.loads(entry.value)
    manifest["integrity"].pop("tensors_sha256")
    entry.value = json.dumps(manifest, sort_keys=True)
    older = tmp_path / "older.onnx"
    onnx.save(model, str(older))
    resaved(older, tmp_path / "ext.onnx", external=True)
    code, _, err = run_cli(["inspect", str(tmp_path / "ext.onnx")], capsys)
    assert code == 0, err


@pytest.mark.parametrize("external", [True, False])
def test_a_changed_weight_is_still_refused(demo_fp32, tmp_path, capsys, external):
    model = onnx.load(str(demo_fp32))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] += 0.01
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    out = tmp_path / "changed.onnx"
    onnx.save(model, str(out), save_as_external_data=external,
              location="changed.onnx.data" if external else None)
    for command in ("predict", "inspect"):
        code, _, err = run_cli([command, str(out), *([IMAGE] if command == "predict" else [])],
                               capsys)
        assert code == 1
        assert "was changed since vitedge wrote it: its graph (weights or operators) is not the " \
               "one its manifest records" in err
