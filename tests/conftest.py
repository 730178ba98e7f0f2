from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "timm"
ROOT = Path(__file__).parents[1]
DEMO_CHECKPOINT = ROOT / "examples" / "fashion_mnist" / "vit_fmnist.safetensors"
DEMO_CALIBRATION = ROOT / "calibration" / "fashion-mnist"
DEMO_TEST_IMAGES = ROOT / "evaluation" / "fashion-mnist"


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `vitedge ARGS`, run in-process."""
    from vitedge.cli import main

    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def without_manifest(model: Path, out: Path) -> str:
    """A copy of an exported model with its vitedge manifest removed."""
    import onnx

    m = onnx.load(str(model))
    del m.metadata_props[:]
    onnx.save(m, str(out))
    return str(out)


def collapsing_table(model: Path, out: Path) -> Path:
    """A calibration table vitedge wrote for `model` (valid, checksum and all) whose ranges
    clip every activation, as a table calibrated on the wrong data could: the INT8 model
    made from it no longer classifies."""
    from vitedge.quantize.calibrate import CalibrationOptions, calibrate

    table = calibrate(model, out, CalibrationOptions(data=DEMO_CALIBRATION)).table
    for ranges in (table.tensors, table.smoothed_tensors):
        for r in ranges.values():
            r["amax"] = 1e-4
    out.write_text(table.to_json())
    return out


@pytest.fixture(scope="session")
def demo_fp32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint exported to ONNX (verified against PyTorch)."""
    from vitedge.export import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("demo") / "fmnist.onnx"
    export_onnx(DEMO_CHECKPOINT, out, ExportOptions())
    return out


@pytest.fixture(scope="session")
def demo_images(demo_fp32: Path) -> np.ndarray:
    """500 of the shipped test images, preprocessed for the demo model."""
    from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
    from vitedge.datasets import image_source, model_inputs

    source = image_source(DEMO_TEST_IMAGES, 500)
    return np.stack(list(model_inputs(source, OnnxRuntimeRunner(demo_fp32).manifest)))


@pytest.fixture(scope="session")
def demo_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo model's FP32 ONNX, its Q/DQ INT8 graph and its ONNX Runtime INT8 artifact:
    from VITEDGE_DEMO_ARTIFACTS (built once by the main environment, for Pythons and CPUs
    without torch: `make test-pythons`, `make test-arm`), else built here."""
    given = os.environ.get("VITEDGE_DEMO_ARTIFACTS")
    if given:
        folder = Path(given)
    else:
        pytest.importorskip("torch", reason="builds the demo artifacts from the checkpoint "
                                            "(or set VITEDGE_DEMO_ARTIFACTS)")
        from vitedge.cli import main

        folder = tmp_path_factory.mktemp("demo-artifacts")
        (folder / "fmnist.safetensors").write_bytes(DEMO_CHECKPOINT.read_bytes())
        assert main(["build", str(folder / "fmnist.safetensors"), "--precision", "int8",
                     "--data", str(DEMO_CALIBRATION), "--backend", "onnxruntime",
                     "-o", str(folder / "fmnist.int8.ort.onnx")]) == 0
    paths = {"fp32": folder / "fmnist.onnx", "qdq": folder / "fmnist.int8.onnx",
             "artifact": folder / "fmnist.int8.ort.onnx"}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    assert not missing, f"demo artifacts missing: {missing}"
    return paths


@pytest.fixture(scope="session")
def demo_streaming(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo checkpoint's streaming graph at k = 13 of its 50 tokens (`cam.onnx`, verified
    at export) and its full pass beside it (`cam.full.onnx`), exported once for the token
    reuse tests; each copies the pair into a folder of its own (`streaming_pair`)."""
    from vitedge.export.streaming import export_streaming

    out = tmp_path_factory.mktemp("demo-streaming") / "cam.onnx"
    export_streaming(DEMO_CHECKPOINT, out, 13)
    return out


def streaming_pair(graph: Path, folder: Path) -> Path:
    """A copy of a streaming graph and its full pass (names kept: the graph names its full
    pass) in `folder`; the copy of the graph."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    for name in (graph.name, graph.name.replace(".onnx", ".full.onnx")):
        shutil.copy(graph.with_name(name), folder / name)
    return folder / graph.name


def images_from_pixels(pixels: np.ndarray) -> np.ndarray:
    """The fixture script's expression, uint8 pixels to [-1, 1] floats."""
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def reference_cases() -> list[dict]:
    return json.loads((FIXTURES / "cases.json").read_text())["cases"]


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    return float(np.abs(reference - candidate).max() / np.abs(reference).max())


WRITTEN_ONNX: list[Path] = []
"""Every ONNX file vitedge's atomic writer moved into place during this test run (the hook
below); tests/test_tensorrt_parser.py checks each with both TensorRT checks."""
_REAL_REPLACE = os.replace


def _recording_replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
    _REAL_REPLACE(src, dst, *args, **kwargs)  # type: ignore[arg-type]
    if str(dst).endswith(".onnx"):
        WRITTEN_ONNX.append(Path(str(dst)))


def pytest_configure(config: pytest.Config) -> None:
    os.replace = _recording_replace  # type: ignore[assignment]
    if "VITEDGE_SCRATCH" not in os.environ:  # the suite's scratch files stay out of ~/.cache
        import tempfile

        os.environ["VITEDGE_SCRATCH"] = tempfile.mkdtemp(prefix="vitedge-test-scratch-")


def pytest_unconfigure(config: pytest.Config) -> None:
    os.replace = _REAL_REPLACE


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the parser-agreement test reads what every other test wrote: it runs last
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_tensorrt_parser.py"))
    try:
        import tensorrt  # noqa: F401

        has_trt = hasattr(tensorrt, "Builder")
    except ImportError:
        has_trt = False
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and TensorRT (see README: GPU tests)")
    for item in items:
        # TensorRT for RTX's gpu tests carry their own condition (an RTX GPU)
        if "gpu" in item.keywords and not has_trt and "tensorrt_rtx" not in item.nodeid:
            item.add_marker(skip)


@pytest.fixture
def rtsp_plaza():
    """vtest.avi served as H.264 by GStreamer's RTSP server on loopback (system python3)."""
    import shutil
    import socket
    import subprocess

    python = shutil.which("python3", path="/usr/bin:/bin")
    vtest = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    if not vtest.is_file() or python is None:
        pytest.skip("needs opencv-doc and the system python3 (make system)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    helper = Path(__file__).parent / "helpers" / "rtsp_server.py"
    proc = subprocess.Popen([python, str(helper), str(port), str(vtest)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline().strip() if proc.stdout else ""
        if line != "ready":
            pytest.skip(f"GStreamer's RTSP server is not available ({line or 'no answer'}): "
                        "apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
                        "gstreamer1.0-plugins-ugly (make system)")
        yield f"rtsp://127.0.0.1:{port}/clip"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
