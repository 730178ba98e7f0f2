"""The ONNX Runtime artifact: the (quantized) model after ONNX Runtime's graph
optimizations, saved so that start-up on the device does not optimize again. The manifest
stays inside, so it is loaded like any vitedge ONNX model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from vitedge.errors import VitedgeError
from vitedge.fileio import write_bytes_atomic
from vitedge.manifest import manifest_from_onnx, set_onnx_manifest
from vitedge.profiles import Profile

OPTIMIZATION = "extended"
"""ORT_ENABLE_EXTENDED: the fusions that are the same on every CPU. ORT_ENABLE_ALL adds
layout changes for the CPU it runs on, which a saved model must not carry to another."""


def build_onnxruntime(onnx_path: Path, output: Path, profile: Profile) -> dict[str, object]:
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    manifest = manifest_from_onnx(model)
    if manifest is None:
        raise VitedgeError(f"{onnx_path} has no vitedge manifest")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    if profile.onnxruntime.threads:
        so.intra_op_num_threads = profile.onnxruntime.threads
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        so.optimized_model_filepath = str(optimized)
        try:
            ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise VitedgeError(f"ONNX Runtime cannot load {onnx_path}: "
                               f"{str(exc).splitlines()[0]}") from exc
        result = onnx.load(str(optimized))
    manifest.source = {**manifest.source, "backend": "onnxruntime",
                       "onnxruntime_optimization": OPTIMIZATION, "onnxruntime_version": ort.__version__,
                       "onnxruntime_threads": profile.onnxruntime.threads, "profile": profile.name}
    set_onnx_manifest(result, manifest)
    write_bytes_atomic(output, result.SerializeToString())
    return {"nodes_before": len(model.graph.node), "nodes_after": len(result.graph.node),
            "threads": profile.onnxruntime.threads or "automatic"}
