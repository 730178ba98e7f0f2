"""`vitedge eval` per class: accuracy of each class and the confusion matrix, as text, in
--json and as a picture (issue 31, item 17), checked against ONNX Runtime's own argmax."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.conftest import DEMO_TEST_IMAGES, run_cli
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.manifest import manifest_from_file
from vitedge.runtime.preprocess import load_image, model_input

CLASSES = ["bag", "coat", "shirt", "trouser"]


@pytest.fixture()
def labelled(tmp_path):
    root = tmp_path / "eval"
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for f in sorted((DEMO_TEST_IMAGES / name).glob("*.png"))[:12]:
            shutil.copy(f, root / name / f.name)
    return root


def test_eval_gives_each_class_s_accuracy_and_the_confusion_matrix(demo_fp32, labelled, tmp_path,
                                                                   capsys):
    plot = tmp_path / "confusion.png"
    code, out, err = run_cli(["eval", str(demo_fp32), "--data", str(labelled), "--json", "--plot",
                              str(plot)], capsys)
    assert code == 0, err
    r = json.loads(out)
    manifest = manifest_from_file(demo_fp32)
    labels = manifest.labels
    assert r["labels"] == labels
    runner = OnnxRuntimeRunner(demo_fp32)
    expected = np.zeros((len(labels), len(labels)), int)
    folders = {name: next(lab for lab in labels if lab.lower().replace("/", "-").replace(" ", "-")
                          .startswith(name.split("-")[0])) for name in CLASSES}
    for name in CLASSES:
        truth = labels.index(folders[name])
        for f in sorted((labelled / name).glob("*.png")):
            x = model_input(load_image(f), manifest)[None]
            expected[truth, int(runner.infer(x).argmax())] += 1
    assert r["confusion"] == expected.tolist()
    for i, c in enumerate(r["per_class"]):
        assert c["label"] == labels[i] and c["images"] == expected[i].sum()
        assert c["accuracy"] == (pytest.approx(expected[i, i] / expected[i].sum())
                                 if expected[i].sum() else None)
    assert r["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_prints_the_per_class_table_and_the_matrix(demo_fp32, labelled, capsys):
    code, out, err = run_cli(["eval", str(demo_fp32), "--data", str(labelled)], capsys)
    assert code == 0, err
    assert "per class" in out and "confusion matrix (rows: true class, columns: predicted" in out
    assert "Bag" in out
