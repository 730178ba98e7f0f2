"""Serving through a real NVIDIA Triton Inference Server (the `tritonserver` binary of the
nvidia-pytriton wheel, Python backend, `make setup` installs it) on loopback ports, talked
to with Triton's own clients (tritonclient HTTP and gRPC); the repositories vitedge writes
for a production Triton, checked against Triton's own ModelConfig schema; and DeepStream's
nvinfer arithmetic against the runtime's normalisation.

Reference for every answer: `vitedge.open` / the runner, in this process, on the same
images. Requests are bounded in count and time and go to 127.0.0.1 only."""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO_CALIBRATION, DEMO_TEST_IMAGES, FIXTURES, ROOT, run_cli

http = pytest.importorskip("tritonclient.http")
grpc = pytest.importorskip("tritonclient.grpc")
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

import vitedge  # noqa: E402
from vitedge.errors import VitedgeError  # noqa: E402
from vitedge.options import DeepStreamOptions, ServeOptions  # noqa: E402
from vitedge.serve import TritonServer, find_triton  # noqa: E402

try:
    find_triton()
    HAS_TRITON = True
except VitedgeError:
    HAS_TRITON = False
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs tritonserver (make setup)")

IMAGES = sorted(DEMO_TEST_IMAGES.glob("*/test-000[0-4]*.png"))[:8]
"""Eight test images: one request of the largest batch the served models take."""


@pytest.fixture(scope="module")
def artifacts(demo_fp32, tmp_path_factory) -> dict[str, Path]:
    """The demo model in FP32 (the export) and INT8 (the ONNX Runtime artifact)."""
    from vitedge.deploy import BuildOptions, build

    work = tmp_path_factory.mktemp("serve")
    fp32 = work / "fmnist.onnx"
    shutil.copy(demo_fp32, fp32)
    int8 = work / "fmnist.int8.ort.onnx"
    build(fp32, str(int8), BuildOptions(precision="int8", data=str(DEMO_CALIBRATION)))
    return {"fp32": fp32, "int8": int8}


@pytest.fixture(scope="module")
def headless(tmp_path_factory) -> Path:
    """A model without a classification head (the SigLIP fixture): it answers embeddings."""
    from vitedge.export import ExportOptions, export_onnx

    out = tmp_path_factory.mktemp("headless") / "siglip.onnx"
    export_onnx(FIXTURES / "siglip", out, ExportOptions())
    return out


@pytest.fixture(scope="module")
def server(artifacts, headless, tmp_path_factory):
    """One real tritonserver serving the artifacts, as `vitedge serve` sets it up."""
    from vitedge.serve import serving_repository

    if not HAS_TRITON:
        pytest.skip("needs tritonserver (make setup)")
    repo = tmp_path_factory.mktemp("repo") / "models"
    options = ServeOptions(max_batch=8, max_delay_us=2000)
    serving_repository([artifacts["fp32"], artifacts["int8"], headless], repo, options)
    with TritonServer(repo) as running:
        yield running


def reference(artifact: Path, paths: list[Path]) -> list[vitedge.Prediction]:
    with vitedge.open(artifact, keep_logits=True) as pipe:
        return [pipe(p) for p in paths]


def model_inputs(artifact: Path, paths: list[Path]) -> np.ndarray:
    from vitedge.backends import load_runner
    from vitedge.datasets import image_source, model_inputs

    (listing := artifact.parent / "images.txt").write_text("".join(f"{p}\n" for p in paths))
    with load_runner(artifact) as runner:
        return np.stack(list(model_inputs(image_source(listing), runner.manifest)))


def image_bytes(paths: list[Path]) -> np.ndarray:
    return np.array([[p.read_bytes()] for p in paths], dtype=object)


def infer(client, module, model: str, name: str, data: np.ndarray, dtype: str):
    inp = module.InferInput(name, list(data.shape), dtype)
    inp.set_data_from_numpy(data)
    outputs = [module.InferRequestedOutput(n) for n in ("logits", "label", "score", "topk_ids")]
    return client.infer(model, [inp], outputs=outputs)


@needs_triton
@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tensors_and_image_bytes_give_what_vitedge_open_gives(server, artifacts, precision,
                                                               protocol):
    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(server.url if protocol == "http" else server.grpc_url)
    name = "fmnist_int8" if precision == "int8" else "fmnist"
    expected = reference(artifacts[precision], IMAGES)
    want = np.stack([p.logits for p in expected])
    tensors = infer(client, module, name, "images", model_inputs(artifacts[precision], IMAGES), "FP32")
    np.testing.assert_allclose(tensors.as_numpy("logits"), want, rtol=1e-4, atol=1e-4)
    encoded = infer(client, module, f"{name}_image", "image", image_bytes(IMAGES), "BYTES")
    np.testing.assert_allclose(encoded.as_numpy("logits"), want, rtol=1e-4, atol=1e-4)
    labels = [x[0].decode() for x in encoded.as_numpy("label")]
    assert labels == [p.label for p in expected]
    np.testing.assert_allclose(encoded.as_numpy("score")[:, 0], [p.score for p in expected],
                               atol=1e-5)
    assert (encoded.as_numpy("topk_ids")[:, 0] == want.argmax(1)).all()


@needs_triton
def test_a_headless_model_answers_its_embedding(server, headless):
    photos = sorted((ROOT / "vitedge" / "data" / "photos").glob("*.jpg"))
    client = http.InferenceServerClient(server.url)
    inp = http.InferInput("image", [len(photos), 1], "BYTES")
    inp.set_data_from_numpy(image_bytes(photos))
    got = client.infer("siglip_image", [inp]).as_numpy("embedding")
    with vitedge.open(headless) as pipe:
        want = np.stack([p.embedding for p in pipe.batch(photos)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@needs_triton
def test_health_metrics_and_statistics_are_tritons(server):
    client = http.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert {m["name"] for m in client.get_model_repository_index()} >= {
        "fmnist", "fmnist_image", "fmnist_int8", "fmnist_int8_image"}
    import urllib.request

    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        assert b"nv_inference_request_success" in r.read()
    config = client.get_model_config("fmnist_int8")
    assert config["max_batch_size"] == 8 and "dynamic_batching" in config


@needs_triton
def test_sixteen_clients_are_batched_and_all_answered_right(server, artifacts):
    """16 clients x 50 requests of one image each: every answer equals the in-process
    runner's, and Triton's statistics show that it formed batches larger than one."""
    from vitedge.backends import load_runner

    paths = sorted(DEMO_TEST_IMAGES.glob("*/*.png"))[:64]
    x = model_inputs(artifacts["int8"], paths)
    with load_runner(artifacts["int8"]) as runner:
        want = runner.infer(x)
    client = http.InferenceServerClient(server.url)
    before = client.get_inference_statistics("fmnist_int8")["model_stats"][0]
    latencies: list[float] = []
    wrong: list[str] = []

    def worker(k: int) -> None:
        c = http.InferenceServerClient(server.url)
        for i in range(50):
            j = (k * 50 + i) % len(x)
            start = time.perf_counter()
            r = infer(c, http, "fmnist_int8", "images", x[j:j + 1], "FP32")
            latencies.append(time.perf_counter() - start)
            if not np.allclose(r.as_numpy("logits")[0], want[j], atol=1e-4):
                wrong.append(f"client {k} request {i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    seconds = time.perf_counter() - start
    assert not wrong and len(latencies) == 800
    after = client.get_inference_statistics("fmnist_int8")["model_stats"][0]
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    ms = sorted(1e3 * t for t in latencies)
    print(f"\n16 clients x 50 requests: {800 / seconds:.0f} requests/s, p50 "
          f"{statistics.median(ms):.1f} ms, p99 {ms[int(0.99 * len(ms))]:.1f} ms, "
          f"{inferences} inferences in {executions} executions "
          f"(mean batch {inferences / executions:.2f})")
    assert inferences == 800 and executions < inferences  # batches larger than one formed


@needs_triton
@pytest.mark.parametrize("case", ["shape", "dtype", "corrupt_jpeg", "not_an_image",
                                  "unknown_model"])
def test_a_bad_request_gets_an_error_and_the_next_good_one_succeeds(server, artifacts, case):
    client = http.InferenceServerClient(server.url)
    good = model_inputs(artifacts["int8"], IMAGES[:1])
    with pytest.raises(InferenceServerException) as caught:
        if case == "shape":
            infer(client, http, "fmnist_int8", "images", np.zeros((1, 3, 28, 28), np.float32), "FP32")
        elif case == "dtype":
            infer(client, http, "fmnist_int8", "images", good.astype(np.int32), "INT32")
        elif case in ("corrupt_jpeg", "not_an_image"):
            blob = np.array([[b"\xff\xd8\xff\xe0 this is not a JPEG" if case == "corrupt_jpeg"
                              else b"hello, server"]], dtype=object)
            infer(client, http, "fmnist_int8_image", "image", blob, "BYTES")
        else:
            infer(client, http, "no_such_model", "images", good, "FP32")
    assert str(caught.value)
    if case in ("corrupt_jpeg", "not_an_image"):  # the client's fault, said in one line, no
        # Python object (`<_io.BytesIO object at 0x...>`) in it
        assert caught.value.status() == "400", (caught.value.status(), str(caught.value))
        assert "cannot read image (encoded bytes): " in caught.value.message()
        assert "object at 0x" not in str(caught.value) and "\n" not in caught.value.message()
    r = infer(client, http, "fmnist_int8", "images", good, "FP32")
    assert r.as_numpy("logits").shape == (1, 10)
    r = infer(client, http, "fmnist_int8_image", "image", image_bytes(IMAGES[:1]), "BYTES")
    assert r.as_numpy("label")[0, 0].decode() == reference(artifacts["int8"], IMAGES[:1])[0].label


def _port_free(port: int) -> bool:
    """Nothing listens on it (closed connections may linger in TIME_WAIT, which a listener
    with SO_REUSEADDR, as servers use, does not mind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmd:
                found.append(f"{pid}: {cmd[:200]}")
    return found


@needs_triton
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_leaving_no_process_port_or_shared_memory(artifacts, tmp_path, sig):
    """SIGTERM with a client still connected (Triton waits out its exit timeout for it, so
    serve's stop ends the server's group itself); SIGINT after the client closed (Triton
    ends by itself)."""
    shm_before = {n for n in os.listdir("/dev/shm") if n.startswith("triton")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitedge", "serve", str(artifacts["int8"]), "--http-port", "0",
         "--grpc-port", "0", "--metrics-port", "0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        info = json.loads(line)
        ports = [int(info["http"].rsplit(":", 1)[1]), int(info["grpc"].rsplit(":", 1)[1])]
        client = http.InferenceServerClient(info["http"].removeprefix("http://"))
        assert client.is_server_ready()
        repo = info["models"][0]["config"].split("/models/")[0]
        assert _processes_mentioning("tritonserver")
        if sig == signal.SIGINT:
            client.close()
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not _processes_mentioning(repo)  # the server and its stubs name the repository
    assert all(_port_free(p) for p in ports)
    assert {n for n in os.listdir("/dev/shm") if n.startswith("triton")} <= shm_before
    assert not Path(repo).exists()


def test_serve_refuses_bad_artifacts_in_one_line(tmp_path, capsys):
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    code, _, err = run_cli(["serve", str(tmp_path / "x.onnx")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# --- export-triton ------------------------------------------------------------------------

def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """Triton's own schema: unknown or mistyped fields fail here."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_an_onnx_model_becomes_onnxruntime_onnx_with_an_image_ensemble(artifacts, tmp_path, capsys):
    repo = tmp_path / "repo"
    code, _, err = run_cli(["export-triton", str(artifacts["int8"]), str(artifacts["fp32"]),
                            "-o", str(repo), "--max-batch", "16"], capsys)
    assert code == 0, err
    model = parse_config(repo / "fmnist_int8_model" / "config.pbtxt")
    assert model.platform == "onnxruntime_onnx" and model.max_batch_size == 16
    assert [i.name for i in model.input] == ["images"] and list(model.input[0].dims) == [1, 28, 28]
    assert model.output[0].name == "logits" and list(model.output[0].dims) == [10]
    assert model.output[0].label_filename == "labels.txt"
    assert model.dynamic_batching.max_queue_delay_microseconds == 1000
    assert model.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert model.model_warmup[0].inputs["images"].zero_data
    assert (repo / "fmnist_int8_model" / "1" / "model.onnx").read_bytes() == \
        artifacts["int8"].read_bytes()
    labels = (repo / "fmnist_int8_model" / "labels.txt").read_text().splitlines()
    assert labels == vitedge.open(artifacts["int8"]).manifest.labels
    ensemble = parse_config(repo / "fmnist_int8_image" / "config.pbtxt")
    assert ensemble.platform == "ensemble"
    steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
    assert steps == ["fmnist_int8_preprocess", "fmnist_int8_model", "fmnist_int8_postprocess"]
    tensor = parse_config(repo / "fmnist_int8" / "config.pbtxt")  # what serve's NAME takes
    assert tensor.platform == "ensemble" and [i.name for i in tensor.input] == ["images"]
    assert [s.model_name for s in tensor.ensemble_scheduling.step] == [
        "fmnist_int8_model", "fmnist_int8_postprocess"]
    assert parse_config(repo / "fmnist_int8_preprocess" / "config.pbtxt").backend == "python"
    assert "Triton" in (repo / "README.md").read_text()


@needs_triton
def test_the_exported_repository_loads_in_triton_and_answers_image_bytes(artifacts, tmp_path):
    """Through the Python backend (this Triton has no ONNX Runtime backend): the
    preprocessing model, the model and the ensemble load and answer image bytes as
    `vitedge.open` does; the onnxruntime_onnx repository's preprocessing model loads too."""
    from vitedge.serve import export_repository

    repo = tmp_path / "repo"
    export_repository([artifacts["int8"]], repo, ServeOptions(onnx_backend="python"))
    plain = tmp_path / "plain"
    export_repository([artifacts["int8"]], plain, ServeOptions())
    for step in ("preprocess", "postprocess"):
        shutil.copytree(plain / f"fmnist_int8_{step}", repo / f"plain_{step}")
        config = repo / f"plain_{step}" / "config.pbtxt"
        config.write_text(config.read_text().replace(f'"fmnist_int8_{step}"', f'"plain_{step}"'))
    expected = reference(artifacts["int8"], IMAGES)
    with TritonServer(repo) as running:
        client = http.InferenceServerClient(running.url)
        r = infer(client, http, "fmnist_int8_image", "image", image_bytes(IMAGES), "BYTES")
        np.testing.assert_allclose(r.as_numpy("logits"), np.stack([p.logits for p in expected]),
                                   rtol=1e-4, atol=1e-4)
        assert [x[0].decode() for x in r.as_numpy("label")] == [p.label for p in expected]
        inp = http.InferInput("image", [len(IMAGES), 1], "BYTES")
        inp.set_data_from_numpy(image_bytes(IMAGES))
        pre = client.infer("plain_preprocess", [inp]).as_numpy("input")
        np.testing.assert_array_equal(pre, model_inputs(artifacts["int8"], IMAGES))
        logits = http.InferInput("logits", [len(IMAGES), 10], "FP32")
        logits.set_data_from_numpy(np.stack([p.logits for p in expected]).astype(np.float32))
        post = client.infer("plain_postprocess", [logits])
        assert [x[0].decode() for x in post.as_numpy("label")] == [p.label for p in expected]
        assert post.as_numpy("topk_ids")[:, 0].tolist() == [p.class_id for p in expected]
        np.testing.assert_allclose(post.as_numpy("score")[:, 0], [p.score for p in expected],
                                   atol=1e-6)
        client.close()  # an open connection holds Triton's exit for its 30 s timeout
    ensemble = (plain / "fmnist_int8_image" / "config.pbtxt").read_text()
    for output in ("logits", "label", "score", "topk_ids", "topk_scores"):
        assert f'name: "{output}"' in ensemble  # what serve answers, the fleet's Triton too


def served_interface(client, model: str) -> tuple[list[tuple[str, str, list[int]]], list[str]]:
    """(inputs as (name, type, dims without the batch), output names) as the running
    Triton reports the model (its metadata API)."""
    meta = client.get_model_metadata(model)
    return ([(t["name"], t["datatype"], [int(d) for d in t["shape"][1:]]) for t in meta["inputs"]],
            sorted(t["name"] for t in meta["outputs"]))


def declared_interface(config: Path) -> tuple[list[tuple[str, str, list[int]]], list[str]]:
    """The same, as a config.pbtxt declares it (Triton's schema)."""
    c = parse_config(config)

    def kind(t):
        return model_config_pb2.DataType.Name(t.data_type).removeprefix("TYPE_").replace(
            "STRING", "BYTES")

    return ([(t.name, kind(t), list(t.dims)) for t in c.input], sorted(t.name for t in c.output))


@needs_triton
def test_serve_and_export_triton_give_one_interface_for_one_model(server, artifacts, headless,
                                                                  tmp_path):
    """A client written for `vitedge serve` works unchanged on the repository export-triton
    writes: same models, same input names and types, same outputs; the onnxruntime_onnx
    repository declares it, the Python-backend one is loaded in a real Triton and asked."""
    from vitedge.serve import export_repository

    served = http.InferenceServerClient(server.url)
    models = ["fmnist_int8", "fmnist_int8_image", "siglip", "siglip_image"]
    want = {m: served_interface(served, m) for m in models}
    assert want["fmnist_int8"] == ([("images", "FP32", [1, 28, 28])],
                                   ["label", "logits", "score", "topk_ids", "topk_scores"])
    assert want["siglip_image"][1] == ["embedding"]
    plain, python = tmp_path / "plain", tmp_path / "python"
    export_repository([artifacts["int8"], headless], plain, ServeOptions())
    export_repository([artifacts["int8"], headless], python, ServeOptions(onnx_backend="python"))
    for m in models:
        assert declared_interface(plain / m / "config.pbtxt") == want[m], m
    x = model_inputs(artifacts["int8"], IMAGES[:3])
    expected = infer(served, http, "fmnist_int8", "images", x, "FP32")
    with TritonServer(python) as running:
        client = http.InferenceServerClient(running.url)
        for m in models:
            assert served_interface(client, m) == want[m], m
        got = infer(client, http, "fmnist_int8", "images", x, "FP32")
        client.close()  # an open connection holds Triton's exit for its 30 s timeout
    assert got.as_numpy("label").tolist() == expected.as_numpy("label").tolist()
    np.testing.assert_allclose(got.as_numpy("logits"), expected.as_numpy("logits"), atol=1e-5)


def engine_description(tmp_path: Path, demo_fp32: Path, batch: str) -> Path:
    """A TensorRT engine file and the description `vitedge build --backend tensorrt`
    writes beside it (vitedge's own sidecar format; the plan's bytes are not read when a
    repository is written, and no TensorRT builder installs here)."""
    from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner
    from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path

    manifest = OnnxRuntimeRunner(demo_fp32).manifest
    engine = tmp_path / "fmnist.int8.engine"
    engine.write_bytes(b"plan")
    info = EngineInfo(tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
                      precision="int8", batch=batch, profile="jetson-orin-nano",
                      inputs=[{"name": "images", "shape": [-1, 1, 28, 28], "dtype": "FLOAT"}],
                      outputs=[{"name": "logits", "shape": [-1, 10], "dtype": "FLOAT"}],
                      manifest=json.loads(manifest.to_json()), onnx_sha256="0" * 64,
                      engine_sha256=hashlib.sha256(b"plan").hexdigest())
    sidecar_path(engine).write_text(info.to_json())
    return engine


def test_a_raw_int8_graph_is_given_weights_exact_on_every_cpu(artifacts, tmp_path):
    """Triton's ONNX Runtime backend on a CPU without VNNI would saturate 8-bit weights;
    the repository's copy gets the 7-bit encoding `vitedge.open` uses, and the same answers."""
    import onnx

    from vitedge.backends import load_runner
    from vitedge.backends.onnxruntime.int8 import WEIGHT_MAX, largest_integer_weight
    from vitedge.serve import export_repository

    qdq = artifacts["int8"].with_name("fmnist.int8.onnx")
    assert largest_integer_weight(onnx.load(str(qdq))) > WEIGHT_MAX
    entries = export_repository([qdq], tmp_path / "repo", ServeOptions())
    copy = tmp_path / "repo" / "fmnist_int8_model" / "1" / "model.onnx"
    assert largest_integer_weight(onnx.load(str(copy))) <= WEIGHT_MAX
    assert any("7 bits" in n for n in entries[0].notes)
    x = model_inputs(qdq, IMAGES)
    with load_runner(qdq) as a, load_runner(copy) as b:
        np.testing.assert_allclose(a.infer(x), b.infer(x), atol=1e-5)


def test_an_engine_becomes_a_tensorrt_plan_batched_to_its_profile(demo_fp32, tmp_path, capsys):
    engine = engine_description(tmp_path, demo_fp32, "1:4:16")
    repo = tmp_path / "repo"
    code, _, err = run_cli(["export-triton", str(engine), "-o", str(repo)], capsys)
    assert code == 0, err
    plan = parse_config(repo / "fmnist_int8_model" / "config.pbtxt")
    assert plan.platform == "tensorrt_plan" and plan.max_batch_size == 16  # the profile's max
    assert list(plan.input[0].dims) == [1, 28, 28] and list(plan.output[0].dims) == [10]
    assert plan.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "fmnist_int8_model" / "1" / "model.plan").read_bytes() == b"plan"
    assert declared_interface(repo / "fmnist_int8" / "config.pbtxt") == (
        [("images", "FP32", [1, 28, 28])], ["label", "logits", "score", "topk_ids", "topk_scores"])
    assert "TensorRT 10.3.0" in (repo / "README.md").read_text()
    code, _, err = run_cli(["export-triton", str(engine), "-o", str(tmp_path / "r2"),
                            "--max-batch", "32"], capsys)
    assert code == 1 and "1:4:16" in err and "Triton would refuse" in err
    assert not (tmp_path / "r2" / "fmnist_int8").exists()


def test_a_tensorrt_rtx_engine_is_refused_for_triton(demo_fp32, tmp_path, capsys):
    pytest.importorskip("tensorrt_rtx")
    engine = tmp_path / "m.engine"
    code, _, err = run_cli(["build", str(demo_fp32), "--precision", "fp32", "--backend",
                            "tensorrt-rtx", "-o", str(engine)], capsys)
    assert code == 0, err
    code, _, err = run_cli(["export-triton", str(engine), "-o", str(tmp_path / "repo")], capsys)
    assert code == 1 and "tensorrt-rtx" in err and len(err.strip().splitlines()) == 1


def test_export_triton_never_writes_into_a_folder_that_holds_other_things(artifacts, tmp_path,
                                                                           capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "mine.txt").write_text("keep")
    code, _, err = run_cli(["export-triton", str(artifacts["int8"]), "-o", str(repo)], capsys)
    assert code == 1 and "not empty" in err
    assert sorted(p.name for p in repo.iterdir()) == ["mine.txt"]


# --- export-deepstream ----------------------------------------------------------------------

def read_properties(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    return dict(parser["property"])


def test_deepstream_arithmetic_reproduces_the_models_normalisation(artifacts, tmp_path, capsys):
    """nvinfer computes y = net-scale-factor * (x - offsets[c]) on 0..255 pixels; on random
    pixels that equals the runtime's own normalisation."""
    from vitedge.runtime.preprocess import normalize

    code, _, err = run_cli(["export-deepstream", str(artifacts["int8"].with_name("fmnist.int8.onnx")),
                            "-o", str(tmp_path / "ds")], capsys)
    assert code == 0, err
    props = read_properties(tmp_path / "ds" / "config_infer_fmnist_int8.txt")
    manifest = vitedge.open(artifacts["fp32"]).manifest
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    offsets = np.array([float(o) for o in props["offsets"].split(";")], np.float32)
    nvinfer = np.float32(props["net-scale-factor"]) * (pixels.astype(np.float32) - offsets)
    np.testing.assert_allclose(nvinfer.transpose(2, 0, 1), normalize(pixels, manifest.preprocess),
                               rtol=1e-5, atol=1e-5)
    assert props["network-mode"] == "1" and props["network-type"] == "1"
    assert props["model-color-format"] == "2" and props["infer-dims"] == "1;28;28"
    assert props["output-blob-names"] == "probs" and props["process-mode"] == "1"
    labels = (tmp_path / "ds" / "labels.txt").read_text().strip().split(";")
    assert labels == manifest.labels


def test_the_deepstream_model_outputs_the_softmax_of_its_logits(artifacts, tmp_path):
    import onnxruntime as ort

    from vitedge.compare import softmax
    from vitedge.serve import export_deepstream

    result = export_deepstream(artifacts["fp32"], tmp_path / "ds", DeepStreamOptions())
    x = model_inputs(artifacts["fp32"], IMAGES)
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    logits, probs = session.run(["logits", "probs"], {"images": x})
    np.testing.assert_allclose(probs, softmax(logits), rtol=1e-5, atol=1e-6)
    with vitedge.open(result.model) as pipe:  # its manifest is intact: vitedge still runs it
        assert pipe.manifest.labels


def test_a_per_channel_std_model_is_refused_with_the_pixels_hint(tmp_path, capsys):
    """ImageNet's std differs per channel (DeiT): nvinfer cannot express it; the graph can.
    Inception's (0.5 for every channel) it can."""
    from vitedge.export import ExportOptions, export_onnx

    export_onnx(FIXTURES / "vit_tiny_hub", tmp_path / "inception.onnx", ExportOptions(verify=False))
    code, _, err = run_cli(["export-deepstream", str(tmp_path / "inception.onnx"), "-o",
                            str(tmp_path / "ok")], capsys)
    assert code == 0, err
    props = read_properties(tmp_path / "ok" / "config_infer_inception.txt")
    assert float(props["net-scale-factor"]) == pytest.approx(1 / 127.5)
    assert [float(o) for o in props["offsets"].split(";")] == [127.5] * 3
    assert props["model-color-format"] == "0"  # RGB

    checkpoint = FIXTURES / "deit_tiny_distilled.pth"
    arch = "deit_tiny_distilled_patch16_224"
    images = tmp_path / "images.onnx"
    export_onnx(checkpoint, images, ExportOptions(arch=arch, verify=False))
    code, _, err = run_cli(["export-deepstream", str(images), "-o", str(tmp_path / "ds")], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "per channel" in err and "--input pixels" in err
    assert not (tmp_path / "ds").exists()
    pixels = tmp_path / "pixels.onnx"
    export_onnx(checkpoint, pixels, ExportOptions(arch=arch, input_kind="pixels"))  # verified
    code, _, err = run_cli(["export-deepstream", str(pixels), "-o", str(tmp_path / "ds")], capsys)
    assert code == 0, err
    props = read_properties(tmp_path / "ds" / "config_infer_pixels.txt")
    assert float(props["net-scale-factor"]) == 1.0 and props["offsets"] == "0.0;0.0;0.0"


def test_a_pixels_export_computes_what_the_images_export_computes(tmp_path):
    """float 0..255 NCHW pixels through the graph's own normalisation give the logits the
    images model gives on the runtime's normalised input, and the pipeline feeds both."""
    from vitedge.backends import load_runner
    from vitedge.export import ExportOptions, export_onnx
    from vitedge.runtime.preprocess import crop_pixels, normalize

    checkpoint = FIXTURES / "vit_tiny_hub"
    export_onnx(checkpoint, tmp_path / "images.onnx", ExportOptions())
    export_onnx(checkpoint, tmp_path / "pixels.onnx", ExportOptions(input_kind="pixels"))
    photo = ROOT / "vitedge" / "data" / "photos" / "chelsea.jpg"
    from PIL import Image

    with load_runner(tmp_path / "images.onnx") as images, \
            load_runner(tmp_path / "pixels.onnx") as pixels:
        crop = crop_pixels(Image.open(photo).convert("RGB"), images.manifest.preprocess)
        a = images.infer(normalize(crop, images.manifest.preprocess)[None])
        b = pixels.infer(crop.transpose(2, 0, 1)[None].astype(np.float32))
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with vitedge.open(tmp_path / "images.onnx", keep_logits=True) as p1, \
            vitedge.open(tmp_path / "pixels.onnx", keep_logits=True) as p2:
        np.testing.assert_allclose(p1(photo).logits, p2(photo).logits, rtol=1e-4, atol=1e-4)


# --- who may use what: the admin surface and keys ---------------------------------------------

def test_off_loopback_the_admin_apis_need_the_key(tmp_path, monkeypatch):
    """Without starting a server: 0.0.0.0 gets the admin APIs restricted, with a key made
    in a file only this user can read; loopback stays open as before."""
    from vitedge.serve import access_for

    monkeypatch.setenv("HOME", str(tmp_path))
    access, notes = access_for(ServeOptions(host="0.0.0.0"))
    key_file = tmp_path / ".config" / "vitedge" / "serve-admin.key"
    assert access.admin_key == key_file.read_text().strip() and key_file.stat().st_mode & 0o077 == 0
    args = " ".join(access.arguments())
    for group in ("model-repository", "shared-memory", "statistics", "trace", "logging"):
        assert group in args
    assert access.admin_key not in " ".join(notes) + repr(access)  # never printed
    assert access_for(ServeOptions())[0].arguments() == []
    key_file.chmod(0o644)
    with pytest.raises(VitedgeError, match="can be read by other users"):
        access_for(ServeOptions(host="0.0.0.0"))


@needs_triton
def test_a_stranger_cannot_use_the_admin_apis_and_the_model_keeps_serving(artifacts, tmp_path):
    from vitedge.serve import serve

    keys = {"admin": tmp_path / "admin.key", "api": tmp_path / "api.key"}
    options = ServeOptions(http_port=0, grpc_port=0, metrics_port=0,
                           admin_key_file=str(keys["admin"]), api_key_file=str(keys["api"]))
    stop, ready = threading.Event(), {}
    log = tmp_path / "triton.log"
    thread = threading.Thread(target=serve, args=([artifacts["fp32"]], options), kwargs=dict(
        on_ready=lambda server, _entries: ready.setdefault("server", server), stop=stop, log=log))
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while "server" not in ready and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        server = ready["server"]
        admin = {"vitedge-admin-key": keys["admin"].read_text().strip()}
        api = {"vitedge-api-key": keys["api"].read_text().strip()}
        client = http.InferenceServerClient(server.url)
        x = model_inputs(artifacts["fp32"], IMAGES[:2])

        def infer_with(headers=None):
            inp = http.InferInput("images", list(x.shape), "FP32")
            inp.set_data_from_numpy(x)
            return client.infer("fmnist", [inp], headers=headers).as_numpy("logits")

        def refused(call) -> str:
            with pytest.raises(InferenceServerException) as info:
                call()
            return str(info.value)

        from tritonclient.utils import shared_memory as shm

        region = shm.create_shared_memory_region("vitedge_test", "/vitedge_test", 64)
        try:
            for call in (lambda h: client.register_system_shared_memory("r", "/vitedge_test", 64,
                                                                        headers=h),
                         lambda h: client.update_log_settings({"log_verbose_level": 0}, headers=h),
                         lambda h: client.get_model_repository_index(headers=h),
                         lambda h: client.get_inference_statistics(headers=h)):
                assert "restricted" in refused(lambda c=call: c(None))
                call(admin)  # with the key: done
                np.testing.assert_allclose(infer_with(api), reference_logits(artifacts, x))
            client.unregister_system_shared_memory("r", headers=admin)
        finally:
            shm.destroy_shared_memory_region(region)
        assert "vitedge-api-key" in refused(lambda: infer_with())  # inference needs its key
        assert "vitedge-api-key" in refused(lambda: infer_with(admin))  # not the admin's
        client.close()  # an open connection holds Triton's exit for its 30 s timeout
    finally:
        stop.set()
        thread.join(timeout=60)
    assert admin["vitedge-admin-key"] not in log.read_text()


def reference_logits(artifacts, x):
    from vitedge.backends import load_runner

    with load_runner(artifacts["fp32"]) as runner:
        return runner.infer(x)
