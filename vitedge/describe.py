"""Read a deployed artifact and describe it: `vitedge inspect`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.graph import load_onnx
from vitedge.manifest import manifest_from_onnx

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _value_info(v: Any) -> dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": v.name, "shape": shape, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower()}


def describe_onnx(path: str | Path) -> dict[str, Any]:
    """Manifest, I/O, parameter count, GMACs, tokens, op histogram and precision summary."""
    import onnx

    model = load_onnx(path)
    manifest = manifest_from_onnx(model)
    init_dtypes: Counter[str] = Counter()
    params = 0
    for t in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(t.data_type).lower()
        n = int(np.prod(t.dims)) if t.dims else 1
        if t.data_type != onnx.TensorProto.INT64:
            init_dtypes[name] += n
            if n > 1:
                params += n
    ops = Counter(n.op_type for n in model.graph.node)
    info: dict[str, Any] = {
        "path": str(path),
        "size_bytes": Path(path).stat().st_size,
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        "inputs": [_value_info(v) for v in model.graph.input],
        "outputs": [_value_info(v) for v in model.graph.output],
        "parameters": params,
        "op_histogram": dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))),
        "precision": {
            "declared": manifest.precision if manifest else "unknown",
            "weights_by_dtype": dict(init_dtypes),
            "qdq_nodes": sum(ops[o] for o in QDQ_OPS),
        },
        "manifest": None,
    }
    if manifest is not None:
        cfg = manifest.architecture
        info["manifest"] = json.loads(manifest.to_json())
        info["parameters"] = cfg.num_params()  # the graph folds some parameters together
        info["gmacs"] = round(cfg.macs() / 1e9, 3)
        info["tokens"] = {"patches": cfg.num_patches, "prefix": cfg.num_prefix_tokens,
                          "total": cfg.num_tokens, "grid": list(cfg.grid)}
    return info


def describe_engine(path: str | Path) -> dict[str, Any]:
    """A TensorRT engine as its description file (`NAME.engine.json`) records it; reading it
    needs no GPU, so an engine can be inspected anywhere."""
    from dataclasses import asdict

    from vitedge.backends.tensorrt.engine_info import EngineInfo, sidecar_path

    p = Path(path)
    if not p.is_file():
        raise VitedgeError(f"no such file: {p}")
    info = EngineInfo.read(sidecar_path(p))
    return {"path": str(p), "size_bytes": p.stat().st_size, "engine": asdict(info)}
