"""Read a deployed artifact and describe it: `vitedge inspect`."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.graph import load_onnx
from vitedge.manifest import manifest_from_file

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _value_info(v: Any) -> dict[str, Any]:
    import onnx

    t = v.type.tensor_type
    shape = [d.dim_param or d.dim_value for d in t.shape.dim]
    return {"name": v.name, "shape": shape, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower()}


def describe_onnx(path: str | Path) -> dict[str, Any]:
    """Manifest, I/O, parameter count, GMACs, tokens, op histogram and precision summary."""
    import onnx

    manifest = manifest_from_file(path)  # checked first: a model changed since is refused
    model = load_onnx(path)
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
        "artifact": str(path),
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
        if cfg.merge:
            info["tokens"].update(merge_info(cfg))
            info["gflops"] = round(2 * cfg.macs() / 1e9, 3)
            info["gflops_unmerged"] = round(2 * cfg.replace(merge=()).macs() / 1e9, 3)
    return info


def merge_info(cfg: Any) -> dict[str, Any]:
    """A merged model's schedule and tokens per block (`vitedge.architecture.ViTConfig`)."""
    return {"merge": list(cfg.merge), "per_block": cfg.tokens_per_block()}


def merge_choice_words(choice: dict[str, Any]) -> str:
    """How `--merge auto` chose (`vitedge.export.merge_choice.MergeChoice.to_dict`), in a line."""
    judged = choice["candidates"][1:] if choice["candidates"] else []
    timed = [c for c in judged if c.get("ms") is not None]
    unmerged = choice["candidates"][0].get("ms") if choice["candidates"] else None
    kept = ("kept unmerged (nothing within the budget ran faster)" if not choice["schedule"]
            else "kept the fastest (of those the timings cannot tell apart or put within "
            f"{choice.get('tie_percent', 0):g} %, the fewest FLOPs)")
    return (f"--merge auto within {choice['max_drop']} points ({choice['measure']}) on "
            f"{choice['images']} images: {sum(c['within'] for c in judged)} of {len(judged)} "
            f"schedules within, {len(timed)} timed against the unmerged model "
            f"({unmerged} ms, {choice['timed_on']}), {kept}")


def merge_row(tokens: dict[str, Any], gflops: float, unmerged: float) -> tuple[str, str]:
    """`inspect`'s token-merging row."""
    from vitedge.architecture import merge_words

    return ("token merging", merge_words(tokens["merge"], tokens["per_block"], gflops, unmerged))


def _engine_merge_rows(data: dict[str, Any]) -> list[tuple[str, str]]:
    """A merged model's schedule for an artifact its backend describes (an OpenVINO IR, an
    engine), from the manifest it carries; added to `data` as an ONNX model's are."""
    manifest = data.get("manifest") or (data.get("engine") or {}).get("manifest")
    if not isinstance(manifest, dict) or not manifest.get("architecture", {}).get("merge"):
        return []
    from vitedge.manifest import Manifest

    cfg = Manifest.from_json(json.dumps(manifest)).architecture
    data["tokens"] = merge_info(cfg)
    data["gflops"] = round(2 * cfg.macs() / 1e9, 3)
    data["gflops_unmerged"] = round(2 * cfg.replace(merge=()).macs() / 1e9, 3)
    return [merge_row(data["tokens"], data["gflops"], data["gflops_unmerged"])]


def describe_engine(path: str | Path) -> dict[str, Any]:
    """An artifact that is not an ONNX model (an engine) as its backend describes it."""
    from vitedge.backends import backend_of, get

    p = Path(path)
    if not p.is_file():
        raise VitedgeError(f"no such file: {p}")
    return get(backend_of(p)).describe(p)


@dataclass
class Description:
    """What `vitedge inspect` shows: `data` is its JSON; the rest, the same in rows."""

    data: dict[str, Any]
    title: str
    rows: list[tuple[str, str]]
    io: list[tuple[str, str, str, str]] = field(default_factory=list)
    """(input or output, name, shape, dtype) of an ONNX model."""
    ops: str = ""


def describe(path: str | Path) -> Description:
    """An artifact described for `vitedge inspect`: an ONNX model from its graph and
    manifest, anything else by the backend that runs it."""
    from vitedge.backends import claimant

    p = Path(path)
    if is_checkpoint(p):
        raise VitedgeError(f"{p} is a checkpoint, not a deployed artifact",
                           "vitedge.model.summary.describe_checkpoint describes it")
    backend = claimant(p) if p.is_file() else None
    if backend is not None and not backend.onnx_artifact:
        data = backend.describe(p)
        verification = data.get("verification") or \
            data.get("engine", {}).get("verification") or {}
        return Description(data, f"{path} ({data['size_bytes'] / 1e6:.1f} MB)",
                           [*backend.inspect_rows(data), *_engine_merge_rows(data),
                            ("verified", verification_line(verification))])
    info = describe_onnx(path)
    io = [(kind[:-1], v["name"], str(v["shape"]), v["dtype"])
          for kind in ("inputs", "outputs") for v in info[kind]]
    rows = [("parameters", f"{info['parameters'] / 1e6:.2f} M")]
    manifest = info["manifest"]
    if manifest:
        rows += manifest_rows(info, manifest)
    else:
        rows.append(("manifest", "none (not made by vitedge)"))
    prec = info["precision"]
    rows.append(("precision", f"{prec['declared']}; weights "
                 + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in prec["weights_by_dtype"].items())
                 + f"; Q/DQ nodes {prec['qdq_nodes']}"))
    return Description(info, f"{info['artifact']} ({info['size_bytes'] / 1e6:.1f} MB, opset "
                             f"{info['opset']})", rows, io,
                       ", ".join(f"{k} {v}" for k, v in info["op_histogram"].items()))


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt", ".tar")
FORMATS = {"timm": "timm", "hf": "Hugging Face ViT (ViT, DeiT, DINOv2)",
           "hf-clip": "Hugging Face CLIP image tower", "hf-siglip": "Hugging Face SigLIP image tower",
           "torchvision": "torchvision VisionTransformer", "vitedge": "vitedge's own checkpoint"}


def is_checkpoint(path: Path) -> bool:
    """A training checkpoint (a weights file, or a model folder), not a deployed artifact."""
    return path.is_dir() or (path.is_file() and path.suffix in CHECKPOINT_SUFFIXES
                             and not path.name.endswith(".ort.onnx"))


def manifest_rows(info: dict[str, Any], manifest: dict[str, Any]) -> list[tuple[str, str]]:
    from vitedge.backends import get, names

    a, p = manifest["architecture"], manifest["preprocess"]
    t = info["tokens"]
    extras = [f"{a['act']}" if a.get("act") else "", "SwiGLU" if a.get("mlp") == "swiglu" else "",
              "sub-LN" if a.get("mlp_norm") or a.get("attn_norm") else "",
              "rotary embedding" if a.get("rope") else "", "pre-norm" if a["pre_norm"] else "",
              f"{a['reg_tokens']} registers" if a["reg_tokens"] else "",
              f"projection {a['embed_proj']}" if a.get("embed_proj") else "",
              "zero-shot head" if a.get("head_l2norm") else "",
              "distilled" if a["dist_token"] else ""]
    rows = [("GMACs / image", f"{info['gmacs']:.3f}"),
            ("tokens", f"{t['total']} = {t['prefix']} prefix + {t['patches']} patches "
                       f"({t['grid'][0]}x{t['grid'][1]} grid)"),
            ("architecture", f"dim {a['embed_dim']}, depth {a['depth']}, heads "
                             f"{a['num_heads']}, mlp {a['mlp_hidden']}, patch {a['patch_size']}, "
                             f"pool {a['global_pool']}" + "".join(f", {x}" for x in extras if x))]
    if t.get("merge"):
        rows.insert(2, merge_row(t, info["gflops"], info["gflops_unmerged"]))
    if manifest["source"].get("merge_auto"):
        rows.insert(3, ("merge choice", merge_choice_words(manifest["source"]["merge_auto"])))
    rows += [(f"output {name}", what) for name, what in (manifest.get("outputs") or {}).items()]
    labels = manifest["labels"]
    src = manifest["source"]
    rows += [("preprocess", f"{p['resize_mode']} resize {p['resize']} {p['interpolation']}, "
                            f"crop {p['crop']}, mean {p['mean']}, std {p['std']}"),
             ("labels", f"{len(labels)}: {', '.join(labels[:5])}"
                        f"{', ...' if len(labels) > 5 else ''}" if labels else "none"),
             ("source", f"{src.get('format')} {src.get('file')} ({src.get('stored_dtype')}), "
                        f"sha256 {str(src.get('sha256'))[:16]}..."),
             ("made by", f"vitedge {manifest['vitedge_version']}, manifest schema "
                         f"{manifest['schema']}")]
    if src.get("backend") in names():
        rows += get(src["backend"]).inspect_rows(src)
        rows.append(("verified", verification_line(src.get("verification") or {})))
    return rows


def verification_line(v: dict[str, Any]) -> str:
    """The build's verification of an artifact, in one line."""
    if v.get("skipped"):
        return str(v["skipped"])
    if not v:
        return "no (built without verification, or by an older vitedge)"
    if v.get("line"):  # a build that words its own (a streaming graph: `streaming_build`)
        return str(v["line"])

    def agreement(a: dict[str, Any]) -> str:  # as the build's summary says it: all, then decided
        decided = a.get("decided_agreement")
        return f"{a['top1_agreement']:.2%}" + (
            f" of all ({decided:.2%} of the {a['decided']} decided)"
            if decided is not None and a.get("decided") not in (None, a.get("images")) else "")

    parts = [f"vs {v['graph']} {agreement(v['vs_graph'])}"]
    if v.get("vs_fp32"):
        parts.append(f"vs FP32 {agreement(v['vs_fp32'])} (KL {v['vs_fp32']['mean_kl']:.1e})")
    if v.get("vs_unmerged_fp32"):
        u = v["vs_unmerged_fp32"]
        parts.append(f"vs the unmerged FP32 model {agreement(u)} (cosine {u['cosine']:.5f})")
    missing = f"; {v['unmerged_fp32_missing']}" if v.get("unmerged_fp32_missing") else ""
    return (f"on {v['data']} with {v['backend']} on {v['device']}: top-1 agreement "
            + ", ".join(parts) + missing)
