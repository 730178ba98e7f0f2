"""A backend is one folder and one line: `tests/plugins/ort_basic` (a backend that really
runs through ONNX Runtime, with its own profile table) is registered with one call, and
build, inspect, bench, serve, profiles and doctor all offer it; no other file knows it.
And the registry is the one list of backends: no module outside `vitedge/backends/`
imports a backend's internals or branches on a backend's name."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import DEMO_TEST_IMAGES, ROOT, run_cli
from vitedge import backends

PLUGIN = "tests.plugins.ort_basic:BasicBackend"
BUILT_IN = ("onnxruntime", "tensorrt", "tensorrt-rtx")


@pytest.fixture
def plugin(monkeypatch):
    """The one line: registered here, and in the environment for processes vitedge starts
    (Triton's Python-backend stubs)."""
    backends.register("ort-basic", PLUGIN)
    monkeypatch.setenv(backends.ENVIRONMENT, f"ort-basic={PLUGIN}")
    yield backends.get("ort-basic")
    backends.unregister("ort-basic")


@pytest.fixture
def built(plugin, demo_fp32, tmp_path, capsys) -> Path:
    artifact = tmp_path / "fmnist.basic.onnx"
    code, out, err = run_cli(["build", str(demo_fp32), "--backend", "ort-basic", "--precision",
                              "fp32", "-o", str(artifact), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["backend"] == "ort-basic" and result["details"]["ort-basic"]
    assert result["verification"]["vs_graph"]["cosine_min"] > 0.9999  # it really ran
    return artifact


def test_build_offers_it_and_the_runner_runs_it(built, demo_fp32, capsys):
    from vitedge.backends import backend_of

    assert "ort-basic" in run_cli(["build", "--help"], capsys)[1]
    assert backend_of(built) == "ort-basic" and backend_of(demo_fp32) == "onnxruntime"
    image = sorted(DEMO_TEST_IMAGES.glob("*/*.png"))[:4]
    import vitedge

    with vitedge.open(built) as mine, vitedge.open(demo_fp32) as export:
        assert mine.model.backend == "ort-basic"
        for path in image:
            np.testing.assert_allclose(mine(path).score, export(path).score, atol=1e-5)


def test_inspect_and_bench_offer_it(built, capsys):
    code, out, _ = run_cli(["inspect", str(built)], capsys)
    assert code == 0 and "ort-basic, basic optimizations" in out
    code, out, err = run_cli(["bench", str(built), "--iterations", "3", "--warmup", "1",
                              "--json"], capsys)
    assert code == 0, err
    data = json.loads(out)
    assert data["results"][0]["backend"] == "ort-basic" and "ort-basic" in data["machine"]


def test_profiles_and_doctor_offer_it(plugin, tmp_path, capsys):
    profile = tmp_path / "basic.toml"
    profile.write_text('description = "ONNX Runtime, basic"\nbackend = "ort-basic"\n'
                       'precision = "fp32"\n[ort_basic]\noptimization = "none"\n')
    code, out, _ = run_cli(["profiles", str(profile)], capsys)
    assert code == 0 and "ort_basic" in out and "optimization none" in out
    code, out, _ = run_cli(["profiles", "cpu", "--json"], capsys)
    assert json.loads(out)["ort_basic"] == {"optimization": "basic"}
    (tmp_path / "bad.toml").write_text(profile.read_text().replace('"none"', '"all"'))
    code, _, err = run_cli(["profiles", str(tmp_path / "bad.toml")], capsys)
    assert code == 1 and "ort_basic.optimization must be one of basic, none" in err
    code, out, _ = run_cli(["doctor", "--json"], capsys)
    assert "ort-basic" in out


def test_a_profile_that_names_it_builds_with_it(plugin, demo_fp32, tmp_path):
    from vitedge.deploy import BuildOptions, build

    profile = tmp_path / "basic.toml"
    profile.write_text('description = "d"\nbackend = "ort-basic"\nprecision = "fp32"\n')
    result = build(demo_fp32, tmp_path / "m.basic.onnx", BuildOptions(profile=str(profile)))
    assert result.backend == "ort-basic" and result.artifact.name == "m.basic.onnx"


def test_serve_offers_it(built, tmp_path):
    from tests.test_serve import HAS_TRITON, http

    if not HAS_TRITON:
        pytest.skip("needs tritonserver (make setup)")
    from vitedge.options import ServeOptions
    from vitedge.serve import TritonServer, serving_repository

    repo = tmp_path / "repo"
    entries = serving_repository([built], repo, ServeOptions(max_batch=4))
    assert {e.name for e in entries} == {"fmnist_basic", "fmnist_basic_image"}
    image = sorted(DEMO_TEST_IMAGES.glob("*/*.png"))[0]
    import vitedge

    with vitedge.open(built, keep_logits=True) as pipe:
        want = pipe(image).logits
    with TritonServer(repo) as server:
        client = http.InferenceServerClient(server.url)
        blob = http.InferInput("image", [1, 1], "BYTES")
        blob.set_data_from_numpy(np.array([[image.read_bytes()]], dtype=object))
        got = client.infer("fmnist_basic_image", [blob]).as_numpy("logits")
        client.close()  # an open connection holds Triton's exit for its 30 s timeout
    np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-4)


def test_unknown_backends_are_one_line_with_the_nearest(capsys, demo_fp32, tmp_path):
    code, _, err = run_cli(["build", str(demo_fp32), "--backend", "onnxruntme"], capsys)
    assert code == 2 and "onnxruntme" in err
    with pytest.raises(Exception, match="did you mean 'onnxruntime'"):
        backends.get("onnxruntme")


# --- nothing outside the registry knows a backend ------------------------------------------

PACKAGE = ROOT / "vitedge"


def _outside_backends() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "backends" not in p.relative_to(PACKAGE).parts]


SHARED = ("vitedge.backends.base", "vitedge.backends.precisions")
"""What every backend shares: the interface, and the precision table."""


def test_no_module_outside_backends_imports_a_backends_internals():
    found = []
    for path in _outside_backends():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                      if n.startswith("vitedge.backends.") and n not in SHARED]
    assert not found, found


def test_no_module_outside_backends_names_a_backend():
    """A string that is a backend's name, compared or looked up outside the registry."""
    found = []
    for path in _outside_backends():
        tree = ast.parse(path.read_text())
        triton = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                  and any(getattr(t, "id", "").startswith("TRITON_") for t in node.targets)
                  for c in ast.walk(node.value)}  # Triton's own backend names
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in BUILT_IN and id(node) not in triton:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, found


def test_the_folder_is_all_the_plugin_needs():
    """The plugin's folder holds its whole code: nothing in vitedge or the rest of the
    tests names it but this file."""
    mentions = [p for p in (*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py"))
                if "ort_basic" in p.read_text() and p.name != Path(__file__).name]
    assert not mentions, mentions
