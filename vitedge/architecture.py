"""The architecture of a ViT as plain data: what the PyTorch model, the ONNX graph
builder and the manifest share. Torch-free, so the runtime can read it on a Jetson."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError

POOLINGS = ("token", "avg", "map", "token_avg")
"""token: the class token; avg: the mean of the patch tokens; map: attention pooling with a
learned query (SigLIP); token_avg: the class token and the patch mean side by side (Hugging
Face's Dinov2ForImageClassification)."""
ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu")
"""The MLP's activation: exact GELU, GELU's tanh approximation (SigLIP), x * sigmoid(1.702 x)
(OpenAI CLIP). A SwiGLU MLP uses SiLU."""
MLPS = ("mlp", "swiglu")
LIMITS: dict[str, tuple[int, int]] = {
    "patch_size": (1, 64), "in_chans": (1, 16), "embed_dim": (1, 16384), "depth": (1, 256),
    "num_heads": (1, 256), "mlp_hidden": (1, 131072), "reg_tokens": (0, 64),
    "num_classes": (0, 1_000_000), "embed_proj": (0, 16384)}
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
    # --- fields of the newer families; left out of the manifest where at their default, so
    # that artifacts written before them keep their checksums (`to_dict`)
    act: str = "gelu"
    mlp: str = "mlp"
    """mlp: fc1 -> act -> fc2; swiglu: SiLU(fc1_g x) * fc1_x x -> [norm] -> fc2 (EVA-02)."""
    mlp_norm: bool = False
    """A LayerNorm inside the MLP before fc2 (EVA-02's sub-LN, timm's scale_mlp)."""
    attn_norm: bool = False
    """A LayerNorm on the attention output before its projection (timm's scale_attn_inner)."""
    patch_bias: bool = True
    """The patch embedding has a bias (not in CLIP)."""
    rope: bool = False
    """Rotary position embedding on the patch tokens' queries and keys (EVA-02)."""
    rope_ref_grid: tuple[int, int] | None = None
    """The patch grid the rotary embedding was trained at; another grid is scaled onto it."""
    rope_temperature: float = 10000.0
    embed_proj: int = 0
    """A linear projection (no bias) of the pooled features to this size (CLIP's
    visual_projection); 0: none."""
    head_l2norm: bool = False
    """The head reads the L2-normalised embedding (a zero-shot head made of text embeddings)."""
    merge: tuple[int, ...] = ()
    """Token merging (ToMe, Bolya et al. 2023): the tokens each block merges between its
    attention and its MLP, one count per block; empty: none (`merge_schedule`)."""

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
        if self.global_pool in ("token", "token_avg") and not self.class_token:
            problems.append(f"{self.global_pool} pooling needs a class token")
        if self.act not in ACTIVATIONS:
            problems.append(f"activation '{self.act}' is not one of {', '.join(ACTIVATIONS)}")
        if self.mlp not in MLPS:
            problems.append(f"MLP '{self.mlp}' is not one of {', '.join(MLPS)}")
        if self.rope and self.head_dim % 4:
            problems.append(f"rotary embedding needs a head size divisible by 4, not {self.head_dim}")
        if self.dist_token and not self.class_token:
            problems.append("a distillation token needs a class token")
        if self.dist_head and not self.dist_token:
            problems.append("a distillation head needs a distillation token")
        problems += _merge_problems(self)
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
    def pooled_dim(self) -> int:
        """Width of the pooled features the head (or the projection) reads."""
        return 2 * self.embed_dim if self.global_pool == "token_avg" else self.embed_dim

    @property
    def feature_dim(self) -> int:
        """Width of the embedding a headless model outputs (after the projection)."""
        return self.embed_proj or self.pooled_dim

    @property
    def output_dim(self) -> int:
        return self.num_classes or self.feature_dim

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch vector, C*P*P (channel-major, as the conv weights)."""
        return self.in_chans * self.patch_size * self.patch_size

    @property
    def mlp_matrices(self) -> int:
        """Weight matrices of d x hidden in one MLP: 2, or 3 for SwiGLU."""
        return 3 if self.mlp == "swiglu" else 2

    def tokens_per_block(self) -> list[int]:
        """The tokens each block's attention sees, then the tokens the head reads (token
        merging removes `merge[i]` after block i's attention)."""
        tokens, counts = self.num_tokens, [self.num_tokens]
        for r in self.merge or (0,) * self.depth:
            tokens -= r
            counts.append(tokens)
        return counts

    def macs(self) -> int:
        """Multiply-accumulates of one image through the model (matrix products only)."""
        n, d, hid = self.num_patches, self.embed_dim, self.mlp_hidden
        counts = self.tokens_per_block()
        blocks = sum(t * d * 3 * d + 2 * t * t * d + t * d * d + self.mlp_matrices * after * d * hid
                     for t, after in zip(counts, counts[1:], strict=False))
        heads = 2 if self.dist_head else 1
        n_out = counts[-1] - self.num_prefix_tokens
        pool = (d * d + n_out * 2 * d * d + 2 * n_out * d + d * d + 2 * d * hid
                if self.global_pool == "map" else 0)
        return (n * d * self.patch_dim + blocks + pool
                + self.pooled_dim * self.embed_proj + heads * self.feature_dim * self.num_classes)

    def num_params(self) -> int:
        """Parameter count of the PyTorch model (the graph folds some of them together)."""
        d, hid, c = self.embed_dim, self.mlp_hidden, self.num_classes
        tokens = (int(self.class_token) + int(self.dist_token) + self.reg_tokens) * d
        mlp = self.mlp_matrices * d * hid + (self.mlp_matrices - 1) * hid + d
        block = (4 * d + 3 * d * d + (3 * d if self.qkv_bias else 0) + d * d + d
                 + (2 * d if self.layer_scale else 0) + mlp + (2 * hid if self.mlp_norm else 0)
                 + (2 * d if self.attn_norm else 0))
        heads = (2 if self.dist_head else 1) * (self.feature_dim * c + c) if c else 0
        pool = (d + 4 * d * d + 4 * d + 2 * d + 2 * d * hid + hid + d
                if self.global_pool == "map" else 0)
        return (d * self.patch_dim + (d if self.patch_bias else 0) + tokens
                + self.pos_embed_len * d + (2 * d if self.pre_norm else 0) + self.depth * block
                + 2 * d + pool + self.pooled_dim * self.embed_proj + heads)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON; those added for the newer families only where they differ
        from their default (a manifest written before them reads, and hashes, the same)."""
        d = dataclasses.asdict(self)
        d["img_size"] = list(self.img_size)
        for f in dataclasses.fields(self):
            if f.name in LATER_FIELDS and d[f.name] == f.default:
                del d[f.name]
        if d.get("rope_ref_grid") is not None:
            d["rope_ref_grid"] = list(d["rope_ref_grid"])
        if "merge" in d:
            d["merge"] = list(d["merge"])
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
        if isinstance(values.get("merge"), list):
            values["merge"] = tuple(values["merge"])
        grid = values.get("rope_ref_grid")
        if isinstance(grid, list) and len(grid) == 2:
            values["rope_ref_grid"] = tuple(grid)
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


LATER_FIELDS = ("act", "mlp", "mlp_norm", "attn_norm", "patch_bias", "rope", "rope_ref_grid",
                "rope_temperature", "embed_proj", "head_l2norm", "merge")


def max_merge(tokens: int, prefix: int) -> int:
    """The most tokens one block can merge: half the unprotected ones (ToMe's bound; each
    merged token of the first set needs a partner in the second)."""
    return max(0, (tokens - prefix) // 2)


def merge_schedule(cfg: ViTConfig, r: int | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """Tokens to merge per block: `r` in every block (capped, as ToMe caps it, at half the
    unprotected tokens left) or one count per block as given; () when nothing merges."""
    if isinstance(r, int):
        counts, tokens = [], cfg.num_tokens
        for _ in range(cfg.depth):
            counts.append(min(r, max_merge(tokens, cfg.num_prefix_tokens)))
            tokens -= counts[-1]
    else:
        counts = list(r)
    if len(counts) != cfg.depth:
        raise VitedgeError(f"a merge schedule needs one count per block: {cfg.depth}, not "
                           f"{len(counts)}")
    return tuple(counts) if any(counts) else ()


def _merge_problems(cfg: ViTConfig) -> list[str]:
    if not cfg.merge:
        return []
    if cfg.rope:
        return ["token merging is undefined with rotary position embedding (EVA-02): a merged "
                "token has no position to rotate by"]
    if len(cfg.merge) != cfg.depth:
        return [f"the merge schedule has {len(cfg.merge)} counts for {cfg.depth} blocks"]
    tokens = cfg.num_tokens
    for i, r in enumerate(cfg.merge):
        most = max_merge(tokens, cfg.num_prefix_tokens)
        if not 0 <= r <= most:
            return [f"block {i} can merge 0..{most} of its {tokens} tokens, not {r}"]
        tokens -= r
    return []


def rope_tables(cfg: ViTConfig) -> tuple[np.ndarray, np.ndarray]:
    """The rotary embedding's (sin, cos), each (num_patches, head_dim) float32, as timm's
    RotaryEmbeddingCat builds them for EVA-02 (`rope_type='cat'`, index grid, interleaved):
    per axis, the patch index (scaled onto `rope_ref_grid` when the grid differs) times
    head_dim / 4 frequencies 1 / temperature ** (i / (head_dim / 4)); row-major patches,
    each frequency repeated for the pair it rotates."""
    bands_n = cfg.head_dim // 4
    exp = np.arange(bands_n, dtype=np.float32) / np.float32(bands_n)
    bands = (np.float32(1.0) / (np.float32(cfg.rope_temperature) ** exp)).astype(np.float32)
    grid, ref = cfg.grid, cfg.rope_ref_grid or cfg.grid
    axes = [np.arange(s, dtype=np.float32) / np.float32(s) * np.float32(r)
            if cfg.rope_ref_grid else np.arange(s, dtype=np.float32) for s, r in zip(grid, ref, strict=True)]
    coords = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (H, W, 2)
    pos = coords[..., None] * bands  # (H, W, 2, bands)
    flat = pos.reshape(cfg.num_patches, 2 * bands_n)
    sin = np.repeat(np.sin(flat), 2, axis=-1).astype(np.float32)
    cos = np.repeat(np.cos(flat), 2, axis=-1).astype(np.float32)
    return sin, cos


def rotation_matrix(head_dim: int) -> np.ndarray:
    """R with x @ R = (-x1, x0, -x3, x2, ...): the interleaved pair rotation rotary
    embedding applies, as one matrix product."""
    r = np.zeros((head_dim, head_dim), np.float32)
    for i in range(0, head_dim, 2):
        r[i + 1, i] = -1.0
        r[i, i + 1] = 1.0
    return r


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
        elif f.name == "rope_temperature":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 1e9:
                raise VitedgeError(f"architecture rope_temperature must be a number from 1 to "
                                   f"1e9, not {value!r}")
        elif f.name == "rope_ref_grid":
            if value is not None and not (isinstance(value, tuple) and len(value) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_IMAGE_SIDE
                    for v in value)):
                raise VitedgeError(f"architecture rope_ref_grid must be two whole numbers, not "
                                   f"{value!r}")
        elif f.name == "merge":
            if not (isinstance(value, tuple) and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value)):
                raise VitedgeError(f"architecture merge must be whole numbers, one per block, not "
                                   f"{value!r}")
        elif isinstance(f.default, str) and not isinstance(value, str):
            raise VitedgeError(f"architecture {f.name} must be a string, not {value!r}")



def merge_words(schedule: list[int] | tuple[int, ...], per_block: list[int], gflops: float,
                unmerged: float) -> str:
    """A merged model's schedule in words, as `inspect` and the build summary show it."""
    return (f"r {','.join(map(str, schedule))}: tokens per block "
            f"{' '.join(map(str, per_block))}; {gflops:.3f} GFLOPs against {unmerged:.3f} "
            "unmerged")
