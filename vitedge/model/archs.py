"""Named architectures (timm and torchvision names) as timm `create_model` arguments,
with the preprocessing their published weights were trained with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vitedge.manifest import IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, Preprocess

_SIZES = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}


@dataclass(frozen=True)
class NamedArch:
    name: str
    args: dict[str, Any]
    preprocess: Preprocess
    distilled: bool = False
    layout: str = "timm"
    notes: list[str] = field(default_factory=list)


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
    **extra: Any,
) -> NamedArch:
    dim, depth, heads = _SIZES[size]
    args = dict(
        patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, img_size=img, **extra
    )
    prep = Preprocess.from_crop_pct((img, img), crop_pct, interpolation, mean, std)
    return NamedArch(name, args, prep, distilled, layout)


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
