"""The ONNX Runtime artifact: the (quantized) model with its attention fused for ONNX
Runtime, after ONNX Runtime's graph optimizations and vitedge's folds, saved so that
start-up on the device does not optimize again. The manifest stays inside, so it is loaded
like any vitedge ONNX model."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from vitedge.build.onnxruntime_fusions import (
    fold_bias_adds,
    fold_constant_dequantize,
    fuse_attention,
    fuse_quantized_attention,
)
from vitedge.errors import VitedgeError
from vitedge.fileio import write_bytes_atomic
from vitedge.manifest import manifest_from_onnx, set_onnx_manifest
from vitedge.profiles import Profile

OPTIMIZATION = "extended"
"""ORT_ENABLE_EXTENDED: the fusions that are the same on every CPU. ORT_ENABLE_ALL adds
layout changes for the CPU it runs on, which a saved model must not carry to another."""


def build_onnxruntime(onnx_path: Path, output: Path, profile: Profile,
                      fusions: bool = True) -> dict[str, object]:
    """`fusions=False` leaves out vitedge's rewrites (ONNX Runtime's own still run): for
    measuring what they bring."""
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
    nodes_before = len(model.graph.node)
    attention = fuse_attention(model) if fusions else 0
    with tempfile.TemporaryDirectory() as tmp:
        fused, optimized = Path(tmp) / "fused.onnx", Path(tmp) / "optimized.onnx"
        onnx.save(model, str(fused))
        so.optimized_model_filepath = str(optimized)
        try:
            ort.InferenceSession(str(fused), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's own exception types
            raise VitedgeError(f"ONNX Runtime cannot load {onnx_path}: "
                               f"{str(exc).splitlines()[0]}") from exc
        result = onnx.load(str(optimized))
    folds = {"attention_fused": attention,
             "bias_adds_folded": fold_bias_adds(result) if fusions else 0,
             "weight_dequantize_folded": fold_constant_dequantize(result) if fusions else 0,
             "quantized_attention_fused": fuse_quantized_attention(result) if fusions else 0}
    manifest.source = {**manifest.source, "backend": "onnxruntime",
                       "onnxruntime_optimization": OPTIMIZATION, "onnxruntime_version": ort.__version__,
                       "onnxruntime_threads": profile.onnxruntime.threads, "profile": profile.name}
    set_onnx_manifest(result, manifest)
    write_bytes_atomic(output, result.SerializeToString())
    return {"nodes_before": nodes_before, "nodes_after": len(result.graph.node), **folds,
            "threads": profile.onnxruntime.threads or "automatic"}
