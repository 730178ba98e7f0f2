"""The ONNX Runtime artifact: the (quantized) model with its attention fused for ONNX
Runtime, after ONNX Runtime's graph optimizations and vitedge's folds, saved so that
start-up on the device does not optimize again. The manifest stays inside, so it is loaded
like any vitedge ONNX model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from vitedge.backends.onnxruntime.fusions import (
    fold_bias_adds,
    fold_constant_dequantize,
    fuse_attention,
    fuse_quantized_attention,
)
from vitedge.backends.onnxruntime.int8 import (
    WEIGHT_BITS,
    WEIGHT_MAX,
    largest_integer_weight,
    seven_bit_weights,
)
from vitedge.backends.onnxruntime.settings import OnnxRuntimeSettings
from vitedge.errors import VitedgeError
from vitedge.graph import load_onnx, needs_external_data, save_onnx
from vitedge.lifetime import scratch_folder
from vitedge.manifest import Manifest, manifest_from_onnx, set_onnx_manifest

if TYPE_CHECKING:
    from vitedge.profiles import Profile

OPTIMIZATION = "extended"
"""ORT_ENABLE_EXTENDED: the fusions that are the same on every CPU. ORT_ENABLE_ALL adds
layout changes for the CPU it runs on, which a saved model must not carry to another.
(The level `vitedge.sessions.ort_session` applies.)"""
KEEPS_INTEGER_MATMULS = ("MatMulAddFusion",)
"""ONNX Runtime transformers an INT8 build turns off: with every shape static (a `--batch 1`
export, a streaming graph) MatMulAddFusion rewrites each MatMul + bias into Reshape + Gemm,
and a DequantizeLinear -> Gemm then runs in float instead of as an integer MatMul (ViT-S
INT8: 2.5x slower)."""


@dataclass
class OnnxRuntimeBuild:
    details: dict[str, Any]
    model: onnx.ModelProto
    """The artifact as written (its manifest can still be amended)."""
    manifest: Manifest
    graph: onnx.ModelProto
    """The ONNX graph the artifact computes (for INT8: the Q/DQ graph with the CPU-exact
    weights), before ONNX Runtime's and vitedge's rewrites: what verification compares the
    artifact with."""
    external: bool = False
    """The artifact keeps its weights in a data file beside it (as its source did, or it is
    over 2 GB)."""


def build_onnxruntime(onnx_path: Path, output: Path, profile: Profile) -> OnnxRuntimeBuild:
    """An INT8 model's weights get the encoding ONNX Runtime's integer kernels compute
    exactly on every CPU (`int8.py`). For measuring what each costs or brings only, the
    profile's [onnxruntime] table can turn vitedge's rewrites off (`fusions = false`: ONNX
    Runtime's own still run) or keep 8-bit weights (`int8_weight_bits = 8`: exact only on
    CPUs with VNNI, AMX or ARM)."""
    settings = profile.section("onnxruntime", OnnxRuntimeSettings)
    fusions = settings.fusions
    cpu_exact = settings.int8_weight_bits == WEIGHT_BITS
    import onnxruntime as ort

    from vitedge.sessions import ort_session

    model = load_onnx(onnx_path)
    manifest = manifest_from_onnx(model)
    if manifest is None:
        raise VitedgeError(f"{onnx_path} has no vitedge manifest")
    external = bool(manifest.integrity.get("external_sha256")) or needs_external_data(model)
    nodes_before = len(model.graph.node)
    int8 = manifest.precision == "int8"
    requantized = seven_bit_weights(model) if int8 and cpu_exact else 0
    graph = onnx.ModelProto()  # what the artifact computes, before any rewrite
    graph.CopyFrom(model)
    attention = fuse_attention(model) if fusions else 0
    with scratch_folder("build-") as tmp:
        fused, optimized = Path(tmp) / "fused.onnx", Path(tmp) / "optimized.onnx"
        save_onnx(model, fused)
        ort_session(fused, settings.threads or None, optimization=OPTIMIZATION,
                    saved_model=optimized,
                    disabled_optimizers=KEEPS_INTEGER_MATMULS if int8 else ())
        result = load_onnx(optimized, verify=False)  # ONNX Runtime's, manifest not yet redone
    folds = {"attention_fused": attention,
             "bias_adds_folded": fold_bias_adds(result) if fusions else 0,
             "weight_dequantize_folded": fold_constant_dequantize(result) if fusions else 0,
             "quantized_attention_fused": fuse_quantized_attention(result) if fusions else 0}
    if int8 and cpu_exact and largest_integer_weight(result) > WEIGHT_MAX:
        raise VitedgeError(f"the ONNX Runtime artifact of {onnx_path} still has 8-bit integer "
                           "weights after requantization", "please report this")
    manifest.source = {**manifest.source, "backend": "onnxruntime",
                       "onnxruntime_optimization": OPTIMIZATION, "onnxruntime_version": ort.__version__,
                       "onnxruntime_threads": settings.threads, "profile": profile.name,
                       **({"int8_weight_bits": WEIGHT_BITS if cpu_exact else 8} if int8 else {})}
    set_onnx_manifest(result, manifest)
    save_onnx(result, output, external=external)
    details = {"nodes_before": nodes_before, "nodes_after": len(result.graph.node), **folds,
               "threads": settings.threads or "automatic"}
    if int8:
        details.update(int8_weight_bits=WEIGHT_BITS if cpu_exact else 8,
                       weights_requantized=requantized)
    return OnnxRuntimeBuild(details, result, manifest, graph, external)
