"""Recognise a checkpoint's layout from its keys and convert it to vitedge's (timm's)
layout; derive the architecture from a config file or from tensor shapes."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitedge.architecture import ViTConfig
from vitedge.errors import CheckpointError

FORMATS = ("vitedge", "timm", "hf", "torchvision")
NATIVE_METADATA_KEY = "vitedge.manifest"

Tensors = dict[str, torch.Tensor]


def detect_format(tensors: Tensors, metadata: dict[str, str]) -> str:
    keys = set(tensors)
    if NATIVE_METADATA_KEY in metadata:
        return "vitedge"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf"
    if "conv_proj.weight" in keys and "encoder.pos_embedding" in keys:
        return "torchvision"
    sample = ", ".join(sorted(keys)[:5]) or "none"
    raise CheckpointError(
        f"no Vision Transformer found: the keys ({len(keys)}, e.g. {sample}) match none of "
        "the timm, Hugging Face, torchvision or vitedge layouts"
    )


def _rename(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply the first rule whose pattern matches the start of `key`."""
    for pattern, repl in rules:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key, count=1)
    return key


# --- Hugging Face ViTModel / ViTForImageClassification / DeiT ---------------------------

_HF_BLOCK = [
    # transformers < 5 and the files save_pretrained writes
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"blocks.\1.attn.q."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"blocks.\1.attn.k."),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"blocks.\1.attn.v."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    # transformers >= 5 module names (a torch.save of model.state_dict())
    (r"layers\.(\d+)\.attention\.q_proj\.", r"blocks.\1.attn.q."),
    (r"layers\.(\d+)\.attention\.k_proj\.", r"blocks.\1.attn.k."),
    (r"layers\.(\d+)\.attention\.v_proj\.", r"blocks.\1.attn.v."),
    (r"layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"layers\.(\d+)\.mlp\.fc1\.", r"blocks.\1.mlp.fc1."),
    (r"layers\.(\d+)\.mlp\.fc2\.", r"blocks.\1.mlp.fc2."),
    (r"layers\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"layers\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
]
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_HEADS = {
    "classifier.": "head.",
    "cls_classifier.": "head.",
    "distillation_classifier.": "head_dist.",
}


def timm_layout_from_hf(tensors: Tensors) -> Tensors:
    patch_key = next(k for k in tensors if k.endswith("embeddings.patch_embeddings.projection.weight"))
    prefix = patch_key[: -len("embeddings.patch_embeddings.projection.weight")]
    out: Tensors = {}
    for key, value in tensors.items():
        if key.startswith("pooler.") or key.startswith(prefix + "pooler."):
            continue  # ViTModel's tanh pooler is not part of classification
        head = next((h for h in _HF_HEADS if key.startswith(h)), None)
        if head is not None:
            out[_HF_HEADS[head] + key[len(head) :]] = value
            continue
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name in _HF_TOP:
            out[_HF_TOP[name]] = value
            continue
        out[_rename(name, _HF_BLOCK)] = value
    return out


def config_from_hf(config: dict[str, Any], tensors: Tensors) -> ViTConfig:
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"activation '{act}' is not supported (vitedge's ViT uses exact GELU)")
    size = config.get("image_size", 224)
    img = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return ViTConfig(
        img_size=img,
        patch_size=int(config.get("patch_size", 16)),
        in_chans=int(config.get("num_channels", 3)),
        embed_dim=int(config["hidden_size"]),
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        mlp_hidden=int(config["intermediate_size"]),
        qkv_bias=bool(config.get("qkv_bias", True)),
        fused_qkv=False,
        class_token=True,
        dist_token="dist_token" in tensors,
        dist_head="head_dist.weight" in tensors,
        num_classes=tensors["head.weight"].shape[0] if "head.weight" in tensors else 0,
        norm_eps=float(config.get("layer_norm_eps", 1e-12)),
    )


# --- torchvision VisionTransformer ------------------------------------------------------

_TV_RULES = [
    (r"^class_token$", "cls_token"),
    (r"^conv_proj\.", "patch_embed.proj."),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.", "norm."),
    (r"^heads\.head\.", "head."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.", r"blocks.\1.norm1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.", r"blocks.\1.norm2."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$",
     r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(0|linear_1)\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(3|linear_2)\.", r"blocks.\1.mlp.fc2."),
]


def timm_layout_from_torchvision(tensors: Tensors) -> Tensors:
    if any(k.startswith("heads.pre_logits") for k in tensors):
        raise CheckpointError(
            "torchvision ViTs with a pre-logits layer (representation_size) are not supported"
        )
    return {_rename(key, _TV_RULES): value for key, value in tensors.items()}


# --- timm -------------------------------------------------------------------------------

_TIMM_RENAMES = [(r"^blocks\.(\d+)\.gamma_1$", r"blocks.\1.ls1.gamma"),
                 (r"^blocks\.(\d+)\.gamma_2$", r"blocks.\1.ls2.gamma")]

# timm create_model arguments that change nothing at inference, or match vitedge's model
_TIMM_HARMLESS = {
    "drop_rate": None, "pos_drop_rate": None, "patch_drop_rate": None, "proj_drop_rate": None,
    "attn_drop_rate": None, "drop_path_rate": None, "weight_init": None, "fix_init": None,
    "dynamic_img_size": None, "dynamic_img_pad": False, "qk_norm": False,
    "scale_attn_norm": False, "scale_mlp_norm": False, "proj_bias": True, "pos_embed": "learn",
    "final_norm": True, "pool_include_prefix": False, "pretrained_strict": None,
}


def timm_layout_from_timm(tensors: Tensors) -> Tensors:
    out = {_rename(key, _TIMM_RENAMES): value for key, value in tensors.items()}
    if "patch_embed.proj.weight" in out and out["patch_embed.proj.weight"].dim() != 4:
        raise CheckpointError(
            "the patch embedding is stored as a matrix (an early timm layout); "
            "load it in timm and re-save it"
        )
    return out


def config_from_timm_args(args: dict[str, Any], distilled: bool = False) -> ViTConfig:
    """A ViTConfig from timm `create_model` keyword arguments (architecture defaults with
    the checkpoint's `model_args` applied)."""
    unsupported = {
        k: v for k, v in args.items()
        if k in _TIMM_HARMLESS and _TIMM_HARMLESS[k] is not None and v != _TIMM_HARMLESS[k]
    }
    known = {
        "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim",
        "depth", "num_heads", "mlp_ratio", "qkv_bias", "init_values", "class_token",
        "no_embed_class", "reg_tokens", "pre_norm", "fc_norm", *_TIMM_HARMLESS,
    }
    unsupported.update({k: v for k, v in args.items() if k not in known})
    pool = args.get("global_pool", "token")
    if pool not in ("token", "avg"):
        unsupported["global_pool"] = pool
    if unsupported:
        listed = ", ".join(f"{k}={v!r}" for k, v in sorted(unsupported.items()))
        raise CheckpointError(f"unsupported timm model options: {listed}")
    size = args.get("img_size", 224)
    img = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    dim = int(args.get("embed_dim", 768))
    fc_norm = args.get("fc_norm")
    return ViTConfig(
        img_size=img,
        patch_size=int(args.get("patch_size", 16)),
        in_chans=int(args.get("in_chans", 3)),
        embed_dim=dim,
        depth=int(args.get("depth", 12)),
        num_heads=int(args.get("num_heads", 12)),
        mlp_hidden=int(dim * float(args.get("mlp_ratio", 4.0))),
        qkv_bias=bool(args.get("qkv_bias", True)),
        class_token=bool(args.get("class_token", True)),
        dist_token=distilled,
        dist_head=distilled,
        reg_tokens=int(args.get("reg_tokens", 0)),
        no_embed_class=bool(args.get("no_embed_class", False)),
        pre_norm=bool(args.get("pre_norm", False)),
        layer_scale=args.get("init_values") is not None,
        global_pool=pool,
        fc_norm=(pool == "avg") if fc_norm is None else bool(fc_norm),
        num_classes=int(args.get("num_classes", 1000)),
    )


# --- architecture from shapes -----------------------------------------------------------

def config_from_shapes(tensors: Tensors, num_heads: int, norm_eps: float = 1e-6) -> ViTConfig:
    """Everything tensor shapes tell about a timm-layout state dict; heads come from the user."""
    proj = tensors["patch_embed.proj.weight"]
    dim, chans, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    fused = "blocks.0.attn.qkv.weight" in tensors
    qkv_bias = ("blocks.0.attn.qkv.bias" if fused else "blocks.0.attn.q.bias") in tensors
    class_token = "cls_token" in tensors
    fc_norm = "fc_norm.weight" in tensors
    cfg: dict[str, Any] = dict(
        patch_size=patch,
        in_chans=chans,
        embed_dim=dim,
        depth=count_blocks(tensors),
        num_heads=num_heads,
        mlp_hidden=tensors["blocks.0.mlp.fc1.weight"].shape[0] if "blocks.0.mlp.fc1.weight" in tensors else 4 * dim,
        qkv_bias=qkv_bias,
        fused_qkv=fused,
        class_token=class_token,
        dist_token="dist_token" in tensors,
        dist_head="head_dist.weight" in tensors,
        reg_tokens=tensors["reg_token"].shape[1] if "reg_token" in tensors else 0,
        pre_norm="norm_pre.weight" in tensors,
        layer_scale="blocks.0.ls1.gamma" in tensors,
        global_pool="avg" if fc_norm or not class_token else "token",
        fc_norm=fc_norm,
        num_classes=tensors["head.weight"].shape[0] if "head.weight" in tensors else 0,
        norm_eps=norm_eps,
    )
    prefix = int(class_token) + int(cfg["dist_token"]) + int(cfg["reg_tokens"])
    no_embed_class, grid = pos_embed_grid(tensors, prefix)
    cfg["no_embed_class"] = no_embed_class
    cfg["img_size"] = (grid[0] * patch, grid[1] * patch)
    return ViTConfig(**cfg)


def count_blocks(tensors: Tensors) -> int:
    ids = {int(m.group(1)) for k in tensors if (m := re.match(r"blocks\.(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def pos_embed_grid(tensors: Tensors, num_prefix: int) -> tuple[bool, tuple[int, int]]:
    """(no_embed_class, square patch grid) read from the position embedding's length."""
    if "pos_embed" not in tensors:
        raise CheckpointError("the checkpoint has no position embedding (pos_embed)")
    length = tensors["pos_embed"].shape[1]
    for no_embed_class, n in ((False, length - num_prefix), (True, length)):
        side = math.isqrt(max(n, 0))
        if n > 0 and side * side == n:
            return no_embed_class, (side, side)
    raise CheckpointError(
        f"cannot tell the patch grid from a position embedding of {length} entries "
        f"with {num_prefix} prefix tokens",
        "pass --img-size or use a checkpoint folder with its config.json",
    )
