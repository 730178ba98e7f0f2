"""The architecture of a ViT as plain data: what the PyTorch model, the ONNX graph
builder and the manifest share. Torch-free, so the runtime can read it on a Jetson."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vitedge.errors import VitedgeError

POOLINGS = ("token", "avg")
LIMITS: dict[str, tuple[int, int]] = {
    "patch_size": (1, 64), "in_chans": (1, 16), "embed_dim": (1, 16384), "depth": (1, 256),
    "num_heads": (1, 256), "mlp_hidden": (1, 131072), "reg_tokens": (0, 64),
    "num_classes": (0, 1_000_000)}
"""Whole-number fields and their sane range: a config outside them is refused in one line
before a module is built (the largest published ViTs are ViT-22B: dim 6144, depth 48)."""
MAX_IMAGE_SIDE = 4096
MAX_TOKENS = 16384
"""Token limit: attention is quadratic in it (16384 tokens is a 2048x2048 image at patch 16)."""


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes a ViT's computation (not its weights).

    Mirrors the knobs published checkpoints use (timm's VisionTransformer arguments,
    Hugging Face ViT / DeiT configs, torchvision's VisionTransformer).
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int = 3072
    qkv_bias: bool = True
    fused_qkv: bool = True
    class_token: bool = True
    dist_token: bool = False
    dist_head: bool = False
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    layer_scale: bool = False
    global_pool: str = "token"
    fc_norm: bool = False
    num_classes: int = 1000
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _check_types(self)
        h, w = self.img_size
        p = self.patch_size
        problems = []
        if self.num_tokens > MAX_TOKENS:
            problems.append(f"{self.num_tokens} tokens ({h}x{w} at patch {p}) is more than "
                            f"{MAX_TOKENS}")
        if p <= 0 or h % p or w % p:
            problems.append(f"image size {h}x{w} is not a multiple of the patch size {p}")
        if self.embed_dim % self.num_heads:
            problems.append(
                f"embed dim {self.embed_dim} is not divisible by {self.num_heads} heads"
            )
        if self.global_pool not in POOLINGS:
            problems.append(f"pooling '{self.global_pool}' is not one of {', '.join(POOLINGS)}")
        if self.global_pool == "token" and not self.class_token:
            problems.append("token pooling needs a class token")
        if self.dist_token and not self.class_token:
            problems.append("a distillation token needs a class token")
        if self.dist_head and not self.dist_token:
            problems.append("a distillation head needs a distillation token")
        if problems:
            raise VitedgeError("invalid ViT architecture: " + "; ".join(problems))

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    @property
    def num_tokens(self) -> int:
        return self.num_prefix_tokens + self.num_patches

    @property
    def pos_embed_len(self) -> int:
        return self.num_patches if self.no_embed_class else self.num_tokens

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector, C*P*P (channel-major, as the conv weights)."""
        return self.in_chans * self.patch_size * self.patch_size

    def macs(self) -> int:
        """Multiply-accumulates of one image through the model (matrix products only)."""
        n, t, d, hid = self.num_patches, self.num_tokens, self.embed_dim, self.mlp_hidden
        per_block = t * d * 3 * d + 2 * t * t * d + t * d * d + 2 * t * d * hid
        heads = 2 if self.dist_head else 1
        return n * d * self.patch_dim + self.depth * per_block + heads * d * self.num_classes

    def num_params(self) -> int:
        """Parameter count of the PyTorch model (the graph folds some of them together)."""
        d, hid, c = self.embed_dim, self.mlp_hidden, self.num_classes
        tokens = (int(self.class_token) + int(self.dist_token) + self.reg_tokens) * d
        block = (4 * d + 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d
                 + (2 * d if self.layer_scale else 0) + 2 * d * hid + hid + d)
        heads = (2 if self.dist_head else 1) * (d * c + c) if c else 0
        return (d * self.patch_dim + d + tokens + self.pos_embed_len * d
                + (2 * d if self.pre_norm else 0) + self.depth * block + 2 * d + heads)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ViTConfig:
        if not isinstance(data, dict):
            raise VitedgeError(f"an architecture must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise VitedgeError(
                f"unknown architecture fields: {', '.join(unknown)}",
                "was this made by a newer vitedge?",
            )
        values = dict(data)
        if "img_size" in values:
            size = values["img_size"]
            if isinstance(size, int) and not isinstance(size, bool):
                values["img_size"] = (size, size)
            elif isinstance(size, (list, tuple)) and len(size) == 2:
                values["img_size"] = tuple(size)
            else:
                raise VitedgeError(f"architecture img_size must be a number or [H, W], not {size!r}")
        return cls(**values)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)


def _check_types(cfg: ViTConfig) -> None:
    """Every field of the type it must have and within its range: one line for the first
    that is not (configs come from files users and tools write)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "img_size":
            if not (isinstance(value, tuple) and len(value) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                    for v in value)):
                raise VitedgeError(f"architecture img_size must be two whole numbers from 1 to "
                                   f"{MAX_IMAGE_SIDE}, not {value!r}")
        elif f.name in LIMITS:
            low, high = LIMITS[f.name]
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise VitedgeError(f"architecture {f.name} must be a whole number from {low} to "
                                   f"{high}, not {value!r}")
        elif isinstance(f.default, bool):
            if not isinstance(value, bool):
                raise VitedgeError(f"architecture {f.name} must be true or false, not {value!r}")
        elif f.name == "norm_eps":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < 1:
                raise VitedgeError(f"architecture norm_eps must be a small positive number, not "
                                   f"{value!r}")
        elif isinstance(f.default, str) and not isinstance(value, str):
            raise VitedgeError(f"architecture {f.name} must be a string, not {value!r}")

