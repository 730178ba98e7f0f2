"""The architecture of a ViT as plain data: what the PyTorch model, the ONNX graph
builder and the manifest share. Torch-free, so the runtime can read it on a Jetson."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vitedge.errors import VitedgeError

POOLINGS = ("token", "avg")


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
        h, w = self.img_size
        p = self.patch_size
        problems = []
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
            values["img_size"] = (size, size) if isinstance(size, int) else tuple(size)
        return cls(**values)

    def replace(self, **changes: Any) -> ViTConfig:
        return dataclasses.replace(self, **changes)
