"""Recognise a checkpoint's layout from its keys and convert it to vitedge's (timm's)
layout; derive the architecture from a config file or from tensor shapes."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from vitedge.architecture import ViTConfig
from vitedge.errors import CheckpointError
from vitedge.manifest import MANIFEST_KEY

FORMATS = ("vitedge", "timm", "hf", "hf-clip", "hf-siglip", "torchvision")
"""hf: ViT, DeiT and DINOv2 (`embeddings.patch_embeddings.projection`); hf-clip and
hf-siglip: CLIP and SigLIP vision towers (`embeddings.patch_embedding`), alone or inside
the full two-tower model."""
NATIVE_METADATA_KEY = MANIFEST_KEY
"""A native checkpoint carries its manifest under the ONNX models' key."""

Tensors = dict[str, torch.Tensor]


def detect_format(tensors: Tensors, metadata: dict[str, str]) -> str:
    keys = set(tensors)
    if NATIVE_METADATA_KEY in metadata:
        return "vitedge"
    if "patch_embed.proj.weight" in keys:
        return "timm"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        return "hf"
    if any(k.endswith("embeddings.patch_embedding.weight") for k in keys):
        return "hf-clip" if any(k.endswith("embeddings.class_embedding") for k in keys) \
            else "hf-siglip"
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
    # DINOv2: hub names (attention.attention.query etc., above) and transformers-5 names
    (r"encoder\.layer\.(\d+)\.attention\.q_proj\.", r"blocks.\1.attn.q."),
    (r"encoder\.layer\.(\d+)\.attention\.k_proj\.", r"blocks.\1.attn.k."),
    (r"encoder\.layer\.(\d+)\.attention\.v_proj\.", r"blocks.\1.attn.v."),
    (r"encoder\.layer\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.weights_in."),
    (r"encoder\.layer\.(\d+)\.mlp\.weights_out\.", r"blocks.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.mlp\.gate_proj\.", r"blocks.\1.mlp.fc1_g."),
    (r"encoder\.layer\.(\d+)\.mlp\.up_proj\.", r"blocks.\1.mlp.fc1_x."),
    (r"encoder\.layer\.(\d+)\.mlp\.down_proj\.", r"blocks.\1.mlp.fc2."),
]
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
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
        if key.endswith("embeddings.mask_token"):
            continue  # DINOv2's masked-image-modelling token: training only
        head = next((h for h in _HF_HEADS if key.startswith(h)), None)
        if head is not None:
            out[_HF_HEADS[head] + key[len(head) :]] = value
            continue
        name = key[len(prefix) :] if key.startswith(prefix) else key
        if name in _HF_TOP:
            out[_HF_TOP[name]] = value
            continue
        out[_rename(name, _HF_BLOCK)] = value
    for key in [k for k in out if k.endswith(".mlp.weights_in.weight") or
                k.endswith(".mlp.weights_in.bias")]:
        # DINOv2's SwiGLU: SiLU on the first half of weights_in, times the second half
        gate, val = out.pop(key).chunk(2, dim=0)
        out[key.replace(".weights_in.", ".fc1_g.")] = gate
        out[key.replace(".weights_in.", ".fc1_x.")] = val
    if "reg_token" in out:
        # registers are inserted after the class token and get no position embedding;
        # the class token's own is folded into it (timm's no_embed_class layout)
        pos = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
    return out


def vision_config(config: dict[str, Any]) -> dict[str, Any]:
    """The vision tower's part of a Hugging Face config (a two-tower CLIP / SigLIP config
    nests it under vision_config)."""
    nested = config.get("vision_config")
    return nested if isinstance(nested, dict) else config


_HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh",
            "gelu_new": "gelu_tanh"}


def _hf_act(config: dict[str, Any]) -> str:
    act = config.get("hidden_act", "gelu")
    if act not in _HF_ACTS:
        raise CheckpointError(f"unsupported hidden_act '{act}' in config.json",
                              f"vitedge's ViT takes {', '.join(_HF_ACTS)}")
    return _HF_ACTS[act]


def _hf_image_size(config: dict[str, Any], default: int) -> tuple[int, int]:
    size = config.get("image_size", default)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def config_from_hf(config: dict[str, Any], tensors: Tensors) -> ViTConfig:
    if str(config.get("model_type", "")).startswith("dinov2"):
        return config_from_hf_dinov2(config, tensors)
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


def config_from_hf_dinov2(config: dict[str, Any], tensors: Tensors) -> ViTConfig:
    """Dinov2Model / Dinov2ForImageClassification (and their with-registers kin): layer
    scale, patch 14; the classifier reads the class token beside the patch tokens' mean."""
    dim = int(config["hidden_size"])
    swiglu = bool(config.get("use_swiglu_ffn", False))
    hidden = int(dim * float(config.get("mlp_ratio", 4)))
    if swiglu:  # Dinov2SwiGLUFFN's width: two thirds, rounded up to a multiple of 8
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    registers = tensors["reg_token"].shape[1] if "reg_token" in tensors else 0
    return ViTConfig(
        img_size=_hf_image_size(config, 518),
        patch_size=int(config.get("patch_size", 14)),
        in_chans=int(config.get("num_channels", 3)),
        embed_dim=dim,
        depth=int(config["num_hidden_layers"]),
        num_heads=int(config["num_attention_heads"]),
        mlp_hidden=hidden,
        qkv_bias=bool(config.get("qkv_bias", True)),
        fused_qkv=False,
        reg_tokens=registers,
        no_embed_class=registers > 0,
        layer_scale="blocks.0.ls1.gamma" in tensors,
        global_pool="token_avg" if "head.weight" in tensors else "token",
        num_classes=tensors["head.weight"].shape[0] if "head.weight" in tensors else 0,
        norm_eps=float(config.get("layer_norm_eps", 1e-6)),
        act=_hf_act(config),
        mlp="swiglu" if swiglu else "mlp",
    )


# --- Hugging Face CLIP and SigLIP vision towers ------------------------------------------

_TOWER_RULES = [
    (r"(vision_model\.)?embeddings\.class_embedding$", "cls_token"),
    (r"(vision_model\.)?embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"(vision_model\.)?embeddings\.position_embedding\.weight$", "pos_embed"),
    (r"(vision_model\.)?pre_layrnorm\.", "norm_pre."),
    (r"(vision_model\.)?post_layernorm\.", "norm."),
    (r"(vision_model\.)?encoder\.layers\.(\d+)\.layer_norm([12])\.", r"blocks.\2.norm\3."),
    (r"(vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.", r"blocks.\2.attn.\3."),
    (r"(vision_model\.)?encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\2.attn.proj."),
    (r"(vision_model\.)?encoder\.layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\2.mlp.\3."),
    (r"(vision_model\.)?head\.probe$", "attn_pool.latent"),
    (r"(vision_model\.)?head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"(vision_model\.)?head\.layernorm\.", "attn_pool.norm."),
    (r"(vision_model\.)?head\.mlp\.(fc[12])\.", r"attn_pool.mlp.\2."),
    (r"visual_projection\.weight$", "embed_proj.weight"),
]
_OTHER_TOWER = ("text_model.", "text_projection.", "logit_scale", "logit_bias")
"""What a two-tower CLIP / SigLIP checkpoint holds besides the image tower."""


def timm_layout_from_hf_tower(tensors: Tensors) -> Tensors:
    """A CLIP or SigLIP vision tower (alone, with its projection, or inside the full
    CLIPModel / SiglipModel) in vitedge's layout; the text tower is left out."""
    out: Tensors = {}
    for key, value in tensors.items():
        if key.startswith(_OTHER_TOWER) or key.endswith("position_ids"):
            continue
        m = re.match(r"(vision_model\.)?head\.attention\.in_proj_(weight|bias)$", key)
        if m:  # nn.MultiheadAttention's packed q, k, v: the query, and k and v together
            d = value.shape[0] // 3
            out[f"attn_pool.q.{m.group(2)}"] = value[:d]
            out[f"attn_pool.kv.{m.group(2)}"] = value[d:]
            continue
        name = _rename(key, _TOWER_RULES)
        if name == "cls_token":
            value = value.reshape(1, 1, -1)
        elif name == "pos_embed":
            value = value.unsqueeze(0)
        elif name == "attn_pool.latent":
            value = value.reshape(1, 1, -1)
        out[name] = value
    return out


def config_from_hf_tower(config: dict[str, Any], tensors: Tensors, fmt: str) -> ViTConfig:
    """CLIPVisionModel(WithProjection) / CLIPModel, SiglipVisionModel / SiglipModel."""
    vc = vision_config(config)
    clip = fmt == "hf-clip"
    if not clip and "attn_pool.latent" not in tensors:
        raise CheckpointError("a SigLIP vision tower without its attention-pool head "
                              "(vision_use_head=False) has no pooled output to export")
    dim = int(vc.get("hidden_size", 768))
    return ViTConfig(
        img_size=_hf_image_size(vc, 224),
        patch_size=int(vc.get("patch_size", 32 if clip else 16)),
        in_chans=int(vc.get("num_channels", 3)),
        embed_dim=dim,
        depth=int(vc.get("num_hidden_layers", 12)),
        num_heads=int(vc.get("num_attention_heads", 12)),
        mlp_hidden=int(vc.get("intermediate_size", 3072)),
        fused_qkv=False,
        class_token=clip,
        pre_norm=clip,
        patch_bias="patch_embed.proj.bias" in tensors,
        global_pool="token" if clip else "map",
        num_classes=0,
        norm_eps=float(vc.get("layer_norm_eps", 1e-5 if clip else 1e-6)),
        act=_hf_act(vc),
        embed_proj=tensors["embed_proj.weight"].shape[0] if "embed_proj.weight" in tensors else 0,
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
    """timm's vision_transformer layout as it is; timm's EVA layout (q_bias / v_bias beside
    a bias-free qkv, separate q_proj / k_proj / v_proj, gamma_1 / gamma_2) brought to it."""
    out = {_rename(key, _TIMM_RENAMES): value for key, value in tensors.items()}
    for key in [k for k in out if k.endswith(".attn.q_bias")]:
        p = key[: -len("q_bias")]
        q_bias, v_bias = out.pop(f"{p}q_bias"), out.pop(f"{p}v_bias")
        out[f"{p}qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    for key in [k for k in out if re.search(r"\.attn\.[qkv]_proj\.weight$", k)]:
        p, name = key.rsplit(".", 3)[0], key.rsplit(".", 2)[1][0]
        out[f"{p}.attn.{name}.weight"] = out.pop(key)
        bias = out.pop(f"{p}.attn.{name}_proj.bias", None)
        out[f"{p}.attn.{name}.bias"] = bias if bias is not None else torch.zeros(
            out[f"{p}.attn.{name}.weight"].shape[0], dtype=out[f"{p}.attn.{name}.weight"].dtype)
    if "patch_embed.proj.weight" in out and out["patch_embed.proj.weight"].dim() != 4:
        raise CheckpointError(
            "the patch embedding is stored as a matrix (an early timm layout); "
            "load it in timm and re-save it"
        )
    return out


def fit_to_config(tensors: Tensors, config: ViTConfig) -> Tensors:
    """What only the architecture tells: a SwiGLU stored packed (timm's GluMlp: one fc1 of
    twice the width, SiLU on its first half) split into fc1_g and fc1_x."""
    if config.mlp != "swiglu" or "blocks.0.mlp.fc1.weight" not in tensors:
        return tensors
    out = dict(tensors)
    for key in [k for k in tensors if re.match(r"blocks\.\d+\.mlp\.fc1\.(weight|bias)$", k)]:
        gate, value = out.pop(key).chunk(2, dim=0)
        out[key.replace(".fc1.", ".fc1_g.")] = gate
        out[key.replace(".fc1.", ".fc1_x.")] = value
    return out


_TIMM_ACTS = {None: "gelu", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "quick_gelu": "quick_gelu"}
_EVA_HARMLESS = {"use_abs_pos_emb": True, "rope_type": "cat", "rope_grid_offset": 0.0,
                 "rope_grid_indexing": "ij", "rope_rotate_half": False, "qk_norm": False,
                 "num_reg_tokens": 0, "use_pre_transformer_norm": False,
                 "use_post_transformer_norm": None, "attn_type": "eva", "gated_attn": False,
                 "swiglu_align_to": 0}
"""EVA arguments vitedge supports only at these values (others are refused by name)."""


def config_from_timm_args(args: dict[str, Any], distilled: bool = False, layout: str = "timm",
                          norm_eps: float = 1e-6) -> ViTConfig:
    """A ViTConfig from timm `create_model` keyword arguments (architecture defaults with
    the checkpoint's `model_args` applied); `layout` "eva" reads timm's eva.py arguments."""
    eva = layout == "eva"
    unsupported = {
        k: v for k, v in args.items()
        if k in _TIMM_HARMLESS and _TIMM_HARMLESS[k] is not None and v != _TIMM_HARMLESS[k]
    }
    known = {
        "img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim",
        "depth", "num_heads", "mlp_ratio", "qkv_bias", "init_values", "class_token",
        "no_embed_class", "reg_tokens", "pre_norm", "fc_norm", "act_layer", *_TIMM_HARMLESS,
    }
    if eva:
        known |= {"swiglu_mlp", "scale_mlp", "scale_attn_inner", "use_rot_pos_emb",
                  "ref_feat_shape", "qkv_fused", "use_fc_norm", "rope_temperature", *_EVA_HARMLESS}
        unsupported.update({k: v for k, v in args.items()
                            if k in _EVA_HARMLESS and v != _EVA_HARMLESS[k]})
        if args.get("use_rot_pos_emb") and args.get("num_reg_tokens"):
            unsupported["num_reg_tokens"] = args["num_reg_tokens"]
    unsupported.update({k: v for k, v in args.items() if k not in known})
    pool = args.get("global_pool", "avg" if eva else "token")
    if pool not in ("token", "avg", "map"):
        unsupported["global_pool"] = pool
    act = args.get("act_layer")
    if not isinstance(act, (str, type(None))) or act not in _TIMM_ACTS:
        unsupported["act_layer"] = act
    if unsupported:
        listed = ", ".join(f"{k}={v!r}" for k, v in sorted(unsupported.items()))
        raise CheckpointError(f"unsupported timm model options: {listed}",
                              "vitedge exports the options `vitedge archs` lists")
    size = args.get("img_size", 224)
    img = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    dim = int(args.get("embed_dim", 768))
    fc_norm = args.get("use_fc_norm" if eva else "fc_norm")
    ref = args.get("ref_feat_shape")
    pre_norm = bool(args.get("pre_norm", False))
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
        pre_norm=pre_norm,
        layer_scale=args.get("init_values") is not None,
        global_pool=pool,
        fc_norm=(pool == "avg") if fc_norm is None else bool(fc_norm),
        num_classes=int(args.get("num_classes", 1000)),
        norm_eps=norm_eps,
        act=_TIMM_ACTS[act],
        mlp="swiglu" if eva and args.get("swiglu_mlp") else "mlp",
        mlp_norm=eva and bool(args.get("scale_mlp")),
        attn_norm=eva and bool(args.get("scale_attn_inner")),
        patch_bias=not pre_norm,
        rope=eva and bool(args.get("use_rot_pos_emb")),
        rope_ref_grid=(ref, ref) if isinstance(ref, int) else tuple(ref) if ref else None,
        rope_temperature=float(args.get("rope_temperature", 10000.0)),
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
