"""`vitedge eval` per class: accuracy of each class and the confusion matrix, as text, in
--json and as a picture (issue 31, item 17), checked against ONNX Runtime's own argmax."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


def test_compare_puts_accuracy_agreement_size_and_speed_of_several_artifacts_in_one_table(
        demo_fp32, labelled, tmp_path, capsys):
    from tests.conftest import DEMO_CALIBRATION
    from vitedge.compare import agreement

    int8 = tmp_path / "fm.int8.onnx"
    code, _, err = run_cli(["quantize", str(demo_fp32), "--precision", "int8", "--data",
                            str(DEMO_CALIBRATION), "--num-images", "32", "-o", str(int8)], capsys)
    assert code == 0, err
    fp16 = tmp_path / "fm.fp16.onnx"
    code, _, err = run_cli(["quantize", str(demo_fp32), "--precision", "fp16", "-o", str(fp16)],
                           capsys)
    assert code == 0, err
    code, out, err = run_cli(["compare", str(demo_fp32), str(int8), str(fp16), "--data",
                              str(labelled), "--iterations", "5", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert [Path(a["artifact"]).name for a in r["artifacts"]] == ["fmnist.onnx", "fm.int8.onnx",
                                                                 "fm.fp16.onnx"]
    manifest = manifest_from_file(demo_fp32)
    files = sorted(labelled.glob("*/*.png"))
    x = np.stack([model_input(load_image(f), manifest) for f in files])
    reference = OnnxRuntimeRunner(demo_fp32).infer(x)
    for row, path in zip(r["artifacts"], (demo_fp32, int8, fp16), strict=True):
        assert row["size_bytes"] == path.stat().st_size and row["latency_ms"] > 0
        logits = OnnxRuntimeRunner(path).infer(x)
        expected = None if path == demo_fp32 else agreement(reference, logits).top1_agreement
        assert row["agreement"] == (None if expected is None else pytest.approx(expected))
    assert r["images"] == len(files)
    code, out, err = run_cli(["compare", str(demo_fp32), str(int8), "--data", str(labelled),
                              "--iterations", "3"], capsys)
    assert code == 0, err
    assert "fm.int8.onnx" in out and "ms / image" in out and "reference" in out
