"""The runtime on a device's own Python: only numpy, Pillow, ONNX Runtime (and OpenCV for
video), no torch. `make test-pythons` runs this file under Python 3.10 (JetPack 6) and 3.12
(JetPack 7) and `make test-arm` under QEMU's emulated Arm CPUs, on the demo artifacts built
once by the main environment (VITEDGE_DEMO_ARTIFACTS: a folder with fmnist.onnx, its Q/DQ
graph fmnist.int8.onnx and the ONNX Runtime artifact fmnist.int8.ort.onnx); with torch
present and no such folder, the tests build them. References: the shipped images' folder
labels, and the Q/DQ graph computed in float by ONNX Runtime with its optimizations off."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import DEMO_TEST_IMAGES, run_cli
from vitedge.backends.cpu_int8 import cpu_int8, seven_bit_weights
from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
from vitedge.compare import agreement
from vitedge.datasets import image_source, model_inputs

pytestmark = pytest.mark.runtime
IMAGES = int(os.environ.get("VITEDGE_RUNTIME_IMAGES", "500"))
"""How many shipped test images the agreement check uses (fewer under emulation)."""


def label_of(path: Path) -> str:
    """The shipped folder's class name ('ankle-boot') in the model's spelling rule."""
    return path.parent.name


def spelled(label: str) -> str:
    """'Ankle boot' -> 'ankle-boot', 'T-shirt/top' -> 'tshirt-top': the folder names."""
    return label.lower().replace("-", "").replace(" ", "-").replace("/", "-")


def float_graph(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    """Q/DQ computed in float: ONNX Runtime with every graph optimization off."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {session.get_inputs()[0].name: x})[0]


def test_int8_artifact_computes_its_qdq_graph_on_this_cpu(demo_artifacts):
    """The artifact on this CPU's integer kernels against its own Q/DQ graph (7-bit
    weights) in float; and where vitedge says this CPU's kernels do not saturate, the 8-bit
    graph on the integer kernels against itself in float, so that claim is measured too."""
    manifest = OnnxRuntimeRunner(demo_artifacts["fp32"]).manifest
    x = np.stack(list(model_inputs(image_source(DEMO_TEST_IMAGES, IMAGES), manifest)))
    own = onnx.load(str(demo_artifacts["qdq"]))
    seven_bit_weights(own)
    built = agreement(float_graph(own, x), OnnxRuntimeRunner(demo_artifacts["artifact"]).infer(x))
    assert built.top1_agreement >= 0.995, (cpu_int8(), built)
    if not cpu_int8().saturates:
        so = ort.SessionOptions()  # ORT_ENABLE_ALL: its QDQ fusions, the integer kernels
        session = ort.InferenceSession(str(demo_artifacts["qdq"]), so, providers=["CPUExecutionProvider"])
        eight = session.run(["logits"], {session.get_inputs()[0].name: x})[0]
        assert agreement(float_graph(demo_artifacts["qdq"], x), eight).top1_agreement >= 0.995


def test_open_predicts_the_shipped_labels(demo_artifacts):
    import vitedge

    paths = sorted(DEMO_TEST_IMAGES.rglob("*.png"))[::50][:40]  # every class
    with vitedge.open(demo_artifacts["artifact"]) as pipe:
        predictions = [pipe(p) for p in paths]
    right = sum(spelled(p.label) == label_of(path) for p, path in zip(predictions, paths,
                                                                         strict=True))
    assert right >= 0.8 * len(paths), [p.label for p in predictions]  # the demo: ~91 %


def test_predict_names_the_sneaker(demo_artifacts, capsys):
    image = DEMO_TEST_IMAGES / "sneaker" / "test-00036.png"
    code, out, err = run_cli(["predict", str(demo_artifacts["artifact"]), str(image), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["predictions"][0]["label"] == "Sneaker"


def test_run_on_a_video_gives_what_the_pipeline_gives_each_frame(demo_artifacts, tmp_path, capsys):
    cv2 = pytest.importorskip("cv2")
    import vitedge

    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (28, 28))
    for p in sorted(DEMO_TEST_IMAGES.rglob("*.png"))[::100][:20]:
        writer.write(cv2.imread(str(p)))
    writer.release()
    events = tmp_path / "events.jsonl"
    code, out, err = run_cli(["run", str(demo_artifacts["artifact"]), "--source", str(video),
                              "--events", str(events), "--no-status", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["frames"] == 20
    got = [json.loads(line)["top"][0]["class_id"] for line in events.read_text().splitlines()]
    frames = []
    capture = cv2.VideoCapture(str(video))
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    with vitedge.open(demo_artifacts["artifact"], color="bgr") as pipe:
        assert got == [pipe(f).class_id for f in frames]


def test_bench_names_the_int8_kernels(demo_artifacts, capsys):
    code, out, err = run_cli(["bench", str(demo_artifacts["artifact"]), str(demo_artifacts["fp32"]), "--iterations",
                              "3", "--warmup", "1", "--batch", "1", "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert len(data["results"]) == 2
    cpu = cpu_int8()
    assert data["machine"]["int8_kernels"] == cpu.kernel
    assert f"{', '.join(cpu.features)}; INT8 kernels {cpu.kernel}" in data["machine_line"]


def test_eval_against_fp32(demo_artifacts, capsys):
    code, out, err = run_cli(["eval", str(demo_artifacts["artifact"]), "--data", str(DEMO_TEST_IMAGES),
                              "--limit", "60", "--reference", str(demo_artifacts["fp32"]), "--json"],
                             capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["images"] == 60 and data["top1"] >= 0.8
    assert data["agreement"]["top1_agreement"] >= 0.95


def test_doctor_names_this_cpus_int8_class(capsys):
    """VITEDGE_EXPECT_KERNEL: the class the emulated CPU model must give (tests/test_arm.py)."""
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    assert code == 0
    cpu = next(c for c in json.loads(out)["checks"] if c["name"] == "cpu")
    expected = os.environ.get("VITEDGE_EXPECT_KERNEL") or cpu_int8().kernel
    assert f"({expected})" in cpu["detail"], cpu


def test_doctor_points_a_jetson_virtualenv_at_jetpacks_tensorrt(tmp_path, monkeypatch, capsys):
    """JetPack's TensorRT lives in the system Python's packages; a virtualenv made without
    --system-site-packages cannot import it, and doctor says how to fix that."""
    from vitedge.backends.tensorrt import backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable here
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    trt = next(c for c in json.loads(out)["checks"] if c["name"] == "tensorrt")
    assert code == 0 and not trt["ok"] and "--system-site-packages" not in trt["fix"]
    (tmp_path / "tensorrt").mkdir()
    monkeypatch.setattr(backend, "JETPACK_PACKAGES", tmp_path)
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    trt = next(c for c in json.loads(out)["checks"] if c["name"] == "tensorrt")
    assert not trt["ok"] and "--system-site-packages" in trt["fix"] and str(tmp_path) in trt["fix"]


def test_the_exact_resize_gives_pillows_bytes_on_this_machine():
    """The exact path's resize and crop here (the C resampler where it is built for this
    machine: on arm64 cross-compiled by tools/arm_root.sh, NEON; else Pillow's path)
    against plain Pillow resizing the whole frame and cropping, from a camera's BGR array:
    the same bytes, every filter the C resampler takes. VITEDGE_EXPECT_NATIVE=1 (set where
    the runners built it) makes a missing C resampler a failure, not a quiet fallback."""
    from PIL import Image

    from vitedge.manifest import Preprocess
    from vitedge.runtime import resample
    from vitedge.runtime.decode import decode_frame
    from vitedge.runtime.preprocess import crop_pixels

    if os.environ.get("VITEDGE_EXPECT_NATIVE") == "1":
        assert resample.library() is not None, "the C resampler was built but does not load"
    rgb = np.random.default_rng(7).integers(0, 256, (480, 640, 3), np.uint8)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    for interpolation in ("bilinear", "bicubic", "lanczos"):
        prep = Preprocess(crop=(224, 224), resize=(248, 248), interpolation=interpolation)
        whole = Image.fromarray(rgb).resize((330, 248), getattr(Image.Resampling,
                                                                  interpolation.upper()))
        top, left = prep.crop_box(248, 330)
        reference = np.asarray(whole.crop((left, top, left + 224, top + 224)))
        assert np.array_equal(crop_pixels(decode_frame(bgr, "bgr"), prep), reference), \
            (interpolation, resample.library())
