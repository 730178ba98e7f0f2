"""Named architectures (timm and torchvision names) as timm `create_model` arguments,
with the preprocessing their published weights were trained with: the classic ViT / DeiT /
DeiT III, DINOv2, CLIP, SigLIP (timm's `vision_transformer`) and EVA-02 (timm's `eva`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitedge.manifest import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocess

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
    "giant": (1536, 40, 24),
    "so400m": (1152, 27, 16),
}


@dataclass(frozen=True)
class NamedArch:
    name: str
    args: dict[str, Any]
    preprocess: Preprocess
    distilled: bool = False
    layout: str = "timm"
    """timm (vision_transformer), eva (timm's eva.py) or torchvision."""
    notes: list[str] = field(default_factory=list)
    norm_eps: float = 1e-6
    """The LayerNorm epsilon (timm passes it as a norm_layer partial: CLIP's is 1e-5)."""


def _entry(
    name: str,
    size: str,
    patch: int,
    img: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float,
    interpolation: str = "bicubic",
    distilled: bool = False,
    layout: str = "timm",
    norm_eps: float = 1e-6,
    **extra: Any,
) -> NamedArch:
    dim, depth, heads = _SIZES[size]
    args = dict(
        patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, img_size=img, **extra
    )
    prep = Preprocess.from_crop_pct((img, img), crop_pct, interpolation, mean, std)
    return NamedArch(name, args, prep, distilled, layout, norm_eps=norm_eps)


def _build() -> dict[str, NamedArch]:
    table: list[NamedArch] = []
    inc, inet = (INCEPTION_MEAN, INCEPTION_STD), (IMAGENET_MEAN, IMAGENET_STD)
    for size in ("tiny", "small", "base", "large"):
        for patch in (16, 32):
            for img in (224, 384):
                table.append(
                    _entry(f"vit_{size}_patch{patch}_{img}", size, patch, img, *inc,
                           0.9 if img == 224 else 1.0)
                )
    table += [
        _entry("vit_base_patch8_224", "base", 8, 224, *inc, 0.9),
        _entry("vit_huge_patch14_224", "huge", 14, 224, *inc, 0.9),
        _entry("vit_base_patch16_224_miil", "base", 16, 224, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
               0.875, "bilinear", qkv_bias=False),
        _entry("vit_medium_patch16_gap_256", "medium", 16, 256, *inc, 0.95, class_token=False,
               global_pool="avg", qkv_bias=False, init_values=1e-6, fc_norm=False),
        _entry("vit_base_patch16_reg4_gap_256", "base", 16, 256, *inc, 0.9, class_token=False,
               no_embed_class=True, global_pool="avg", reg_tokens=4),
    ]
    for size in ("tiny", "small", "base"):
        table.append(_entry(f"deit_{size}_patch16_224", size, 16, 224, *inet, 0.9))
        table.append(_entry(f"deit_{size}_distilled_patch16_224", size, 16, 224, *inet, 0.9,
                            distilled=True))
    table += [
        _entry("deit_base_patch16_384", "base", 16, 384, *inet, 1.0),
        _entry("deit_base_distilled_patch16_384", "base", 16, 384, *inet, 1.0, distilled=True),
    ]
    for size in ("small", "medium", "base"):
        table.append(_entry(f"deit3_{size}_patch16_224", size, 16, 224, *inet, 0.9,
                            no_embed_class=True, init_values=1e-6))
    # DINOv2 (timm: layer scale, patch 14, 518 px; reg4: four registers, no class pos embed)
    for size in ("small", "base", "large"):
        table.append(_entry(f"vit_{size}_patch14_dinov2", size, 14, 518, *inet, 1.0,
                            init_values=1e-5))
        table.append(_entry(f"vit_{size}_patch14_reg4_dinov2", size, 14, 518, *inet, 1.0,
                            init_values=1e-5, reg_tokens=4, no_embed_class=True))
    # CLIP image towers (timm: pre-norm, no patch bias, LayerNorm eps 1e-5; the OpenAI
    # weights' projection is the head), GELU and quick-GELU
    clip = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    for size, patch in (("base", 16), ("base", 32), ("large", 14)):
        for act in ("", "_quickgelu"):
            extra: dict[str, Any] = {"act_layer": "quick_gelu"} if act else {}
            table.append(_entry(f"vit_{size}_patch{patch}_clip{act}_224", size, patch, 224, *clip,
                                0.9, pre_norm=True, norm_eps=1e-5, **extra))
    # SigLIP image towers (no class token, attention-pool head)
    siglip: tuple[tuple[str, str, int, int, dict[str, Any]], ...] = (
            ("vit_base_patch16_siglip_224", "base", 16, 224, {}),
            ("vit_base_patch16_siglip_256", "base", 16, 256, {}),
            ("vit_base_patch16_siglip_384", "base", 16, 384, {}),
            ("vit_large_patch16_siglip_256", "large", 16, 256, {}),
            ("vit_so400m_patch14_siglip_224", "so400m", 14, 224, {"mlp_ratio": 3.7362}),
            ("vit_so400m_patch14_siglip_384", "so400m", 14, 384, {"mlp_ratio": 3.7362}))
    for name, size, patch, img, extra in siglip:
        table.append(_entry(name, size, patch, img, *inc, 1.0, class_token=False,
                            global_pool="map", **extra))
    # EVA-02 (timm's eva.py: SwiGLU MLP, rotary position embedding, average pooling; base
    # and large: separate q/k/v and a LayerNorm inside the MLP)
    for size, img, big in (("tiny", 224, False), ("small", 224, False), ("base", 224, True),
                           ("large", 224, True), ("tiny", 336, False), ("small", 336, False),
                           ("base", 448, True), ("large", 448, True)):
        eva: dict[str, Any] = dict(mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
                                   ref_feat_shape=(16, 16))
        if big:
            eva.update(qkv_fused=False, scale_mlp=True)
        table.append(_entry(f"eva02_{size}_patch14_{img}", size, 14, img, *clip,
                            0.9 if img == 224 else 1.0, layout="eva", **eva))
    # torchvision's names: weights IMAGENET1K_V1, resize 256 (bilinear), crop 224.
    for name, size, patch in (("vit_b_16", "base", 16), ("vit_b_32", "base", 32),
                              ("vit_l_16", "large", 16), ("vit_l_32", "large", 32),
                              ("vit_h_14", "huge", 14)):
        table.append(_entry(name, size, patch, 224, *inet, 224 / 256, "bilinear",
                            layout="torchvision"))
    return {a.name: a for a in table}


ARCHITECTURES: dict[str, NamedArch] = _build()


def find_arch(name: str) -> NamedArch:
    from difflib import get_close_matches

    from vitedge.errors import VitedgeError

    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    base = name.split(".")[0]  # timm tags: vit_base_patch16_224.augreg_in21k
    if base in ARCHITECTURES:
        return ARCHITECTURES[base]
    close = get_close_matches(name, ARCHITECTURES, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "`vitedge archs` lists them"
    raise VitedgeError(f"unknown architecture '{name}'", hint)


def architecture_rows() -> list[dict[str, Any]]:
    """`vitedge archs`: each name with its size, patch, image size and layout."""
    return [{"name": a.name, **{k: a.args[k] for k in ("embed_dim", "depth", "num_heads",
                                                        "patch_size", "img_size")},
             "distilled": a.distilled, "layout": a.layout} for a in ARCHITECTURES.values()]
