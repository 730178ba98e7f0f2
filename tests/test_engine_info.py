"""The engine description beside a TensorRT engine, and the rules that decide whether an
engine may run here: pure Python, checked with descriptions of other GPUs and versions."""

from __future__ import annotations

import dataclasses

import pytest

from vitedge.backends.tensorrt.engine_info import (
    EngineInfo,
    compatibility_problem,
    rebuild_hint,
    sidecar_path,
)
from vitedge.backends.tensorrt.runner import check_engine
from vitedge.errors import VitedgeError

ORIN = EngineInfo(
    tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7", precision="int8",
    batch="1:1:4", profile="jetson-orin-nano",
    inputs=[{"name": "images", "shape": [-1, 1, 28, 28], "dtype": "FLOAT"}],
    outputs=[{"name": "logits", "shape": [-1, 10], "dtype": "FLOAT"}], manifest={"source": {"file": "vit_fmnist.safetensors"}},
    onnx_sha256="a" * 64, engine_sha256="b" * 64)


@pytest.mark.parametrize("info_changes, trt, gpu, cc, expected", [
    ({}, "10.3.0", "Orin", "8.7", None),
    ({}, "10.3.0.30", "Orin", "8.7", None),  # the build number does not matter
    ({}, "10.4.0", "Orin", "8.7", "only on the TensorRT that built them"),
    ({}, "11.4.1", "Orin", "8.7", "only on the TensorRT that built them"),
    ({}, "10.3.0", "NVIDIA A100", "8.0", "only on the GPU generation that built them"),
    ({"version_compatible": True}, "10.8.0", "Orin", "8.7", None),
    ({"version_compatible": True}, "10.2.0", "Orin", "8.7", "at 10.3.0 or later"),
    ({"version_compatible": True}, "11.4.1", "Orin", "8.7", "needs TensorRT 10.x"),
    ({"hardware_compatibility": "ampere+"}, "10.3.0", "NVIDIA RTX 4090", "8.9", None),
    ({"hardware_compatibility": "ampere+"}, "10.3.0", "Tesla T4", "7.5", "needs compute 8.0+"),
])
def test_compatibility_rules(info_changes, trt, gpu, cc, expected):
    info = dataclasses.replace(ORIN, **info_changes)
    problem = compatibility_problem(info, trt, gpu, cc)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem
        assert "built for Orin (compute 8.7) with TensorRT 10.3.0" in problem
        assert f"this machine has {gpu}" in problem


def test_sidecar_round_trip_and_rebuild_hint(tmp_path):
    engine = tmp_path / "m.int8.engine"
    assert sidecar_path(engine).name == "m.int8.engine.json"
    sidecar_path(engine).write_text(ORIN.to_json())
    assert EngineInfo.read(sidecar_path(engine)) == ORIN
    assert rebuild_hint(ORIN) == ("rebuild on this machine: vitedge build vit_fmnist.safetensors "
                                  "--precision int8 --profile jetson-orin-nano")


def test_loading_refuses_a_foreign_or_changed_engine(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan bytes")
    from vitedge.fileio import sha256_file

    info = dataclasses.replace(ORIN, engine_sha256=sha256_file(engine))
    sidecar_path(engine).write_text(info.to_json())
    assert check_engine(engine, "10.3.0", ("Orin", "8.7")) == info
    with pytest.raises(VitedgeError, match="only on the GPU generation") as err:
        check_engine(engine, "10.3.0", ("NVIDIA H100", "9.0"))
    assert "rebuild on this machine" in str(err.value)
    engine.write_bytes(b"other plan bytes")
    with pytest.raises(VitedgeError, match="changed or replaced since it was built"):
        check_engine(engine, "10.3.0", ("Orin", "8.7"))
    sidecar_path(engine).unlink()
    with pytest.raises(VitedgeError, match="describes the engine beside it"):
        check_engine(engine, "10.3.0", ("Orin", "8.7"))
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(VitedgeError, match="not a vitedge engine description"):
        check_engine(engine, "10.3.0", ("Orin", "8.7"))


def test_inspect_an_engine_without_a_gpu(tmp_path, capsys):
    from vitedge.cli import main

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    sidecar_path(engine).write_text(ORIN.to_json())
    assert main(["inspect", str(engine), "--json"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert shown["engine"]["gpu_name"] == "Orin" and shown["size_bytes"] == 4
    assert main(["inspect", str(engine)]) == 0
    assert "TensorRT 10.3.0" in capsys.readouterr().out


def test_cuda_paths_without_a_gpu_fail_with_one_clear_line(tmp_path, monkeypatch):
    """cuda-python is installed here and there is no GPU: the CUDA helpers say so."""
    pytest.importorskip("cuda.bindings.runtime")
    from vitedge.backends.tensorrt.cuda import CudaPython, cuda_api
    from vitedge.backends.tensorrt.device import gpu_info
    from vitedge.backends.tensorrt.runner import TensorRTRunner
    from vitedge.errors import MissingDependency

    assert gpu_info() is None
    with pytest.raises(VitedgeError, match="CUDA cudaMalloc failed: cudaError"):
        CudaPython().malloc(16)
    assert cuda_api().name == "cuda-python"
    monkeypatch.setenv("VITEDGE_CUDA", "pycuda")
    with pytest.raises(MissingDependency, match="pycuda"):
        cuda_api()
    monkeypatch.setenv("VITEDGE_CUDA", "opencl")
    with pytest.raises(VitedgeError, match="is not one of cuda-python, pycuda"):
        cuda_api()
    monkeypatch.delenv("VITEDGE_CUDA")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    sidecar_path(engine).write_text(ORIN.to_json())
    with pytest.raises(VitedgeError, match="no CUDA GPU is visible"):
        TensorRTRunner(engine)
