"""A Vision Transformer in PyTorch covering what published checkpoints use: the classic
ViT / DeiT / DeiT III, DINOv2 (layer scale, registers), CLIP (pre-norm, quick-GELU, a
projection), SigLIP (no class token, attention pooling) and EVA-02 (SwiGLU, sub-LayerNorm,
rotary position embedding: the small named piece `RotaryEmbedding`).

Parameter names follow timm's layout (vitedge's native layout); the readers in
`vitedge.model.formats` convert Hugging Face, torchvision and timm's EVA checkpoints into it.
The model takes images (B, C, H, W) or pre-patchified input (B, N, C*P*P), where each
patch vector is the patch's pixels in (C, P, P) order, the order of the conv weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitedge.architecture import ViTConfig, rope_tables


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class RotaryEmbedding(nn.Module):
    """EVA-02's rotary position embedding: each patch token's query and key, pair by pair,
    rotated by angles set by its row and column (`vitedge.architecture.rope_tables`); the
    prefix tokens (class, registers) are left as they are."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        sin, cos = rope_tables(cfg)
        self.register_buffer("sin", torch.from_numpy(sin), persistent=False)
        self.register_buffer("cos", torch.from_numpy(cos), persistent=False)
        self.num_prefix = cfg.num_prefix_tokens

    @staticmethod
    def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
        """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
        return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)

    sin: torch.Tensor
    cos: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.num_prefix
        patches = x[:, :, k:]
        turned = patches * self.cos + self.rotate_pairs(patches) * self.sin
        return torch.cat([x[:, :, :k], turned], dim=2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection or separate Q, K and V,
    optionally rotary position embedding on Q and K and a LayerNorm before the output
    projection (EVA-02)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.scale = self.head_dim**-0.5
        self.fused = cfg.fused_qkv
        if self.fused:
            self.qkv = nn.Linear(d, 3 * d, bias=cfg.qkv_bias)
        else:
            self.q = nn.Linear(d, d, bias=cfg.qkv_bias)
            self.k = nn.Linear(d, d, bias=cfg.qkv_bias)
            self.v = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.norm: nn.Module = nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.attn_norm else nn.Identity()
        self.proj = nn.Linear(d, d)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, want_probs: bool = False, rope: RotaryEmbedding | None = None,
        log_size: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The attention's output, its probabilities (when asked) and its keys averaged over
        the heads (token merging's similarity metric). `log_size` (B, T): each token's log
        size, added to the logits of the keys (ToMe's proportional attention)."""
        b, t, d = x.shape
        if self.fused:
            q, k, v = self.qkv(x).split(d, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if rope is not None:
            q, k = rope(q), rope(k)
        bias = None if log_size is None else log_size[:, None, None, :]
        if want_probs:
            logits = (q @ k.transpose(-2, -1)) * self.scale
            probs = (logits if bias is None else logits + bias).softmax(dim=-1)
            out = probs @ v
        else:
            probs = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(self.norm(out.transpose(1, 2).reshape(b, t, d))), probs, k.mean(1)


class Mlp(nn.Module):
    """fc1 -> activation -> fc2, or SwiGLU: SiLU(fc1_g x) * fc1_x x -> fc2 (EVA-02); either
    with an optional LayerNorm before fc2 (sub-LN)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d, hidden = cfg.embed_dim, cfg.mlp_hidden
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.fc1_g = nn.Linear(d, hidden)
            self.fc1_x = nn.Linear(d, hidden)
            self.act: nn.Module = nn.SiLU()
        else:
            self.fc1 = nn.Linear(d, hidden)
            self.act = activation(cfg.act)
        self.norm: nn.Module = nn.LayerNorm(hidden, eps=cfg.norm_eps) if cfg.mlp_norm else nn.Identity()
        self.fc2 = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1_g(x)) * self.fc1_x(x) if self.swiglu else self.act(self.fc1(x))
        return self.fc2(self.norm(h))


class AttentionPool(nn.Module):
    """SigLIP's head (timm's AttentionPoolLatent, `global_pool='map'`): one learned query
    attends over the tokens, then a residual MLP; the pooled (B, D) features."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        d = cfg.embed_dim
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.latent = nn.Parameter(torch.zeros(1, 1, d))
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg.replace(mlp="mlp", mlp_norm=False))

    def forward(self, x: torch.Tensor, log_size: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, self.num_heads, self.head_dim)
        kv = self.kv(x).reshape(b, n, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = None if log_size is None else log_size[:, None, None, :]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), kv[0], kv[1], attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(b, 1, d))
        out = out + self.mlp(self.norm(out))
        return out[:, 0]


def bipartite_merge(
    x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int, prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ToMe's bipartite soft matching (Bolya et al. 2023) on tokens x (B, T, D) of sizes
    (B, T, 1): tokens alternately into sets A (even) and B (odd); each A token's most similar
    B token by the cosine of `metric` (the keys averaged over heads); the r best of these
    edges merged by size-weighted mean. The first `prefix` tokens (class, distillation,
    registers) never merge and stay first; then the kept A tokens in their original order,
    then B. Returns the tokens (B, T - r, D) and their sizes (B, T - r, 1)."""
    batch = x.shape[0]
    m = metric / metric.norm(dim=-1, keepdim=True)
    scores = m[:, ::2] @ m[:, 1::2].transpose(1, 2)
    ta = scores.shape[1]
    scores[:, : (prefix + 1) // 2] = -math.inf
    scores[:, :, : prefix // 2] = -math.inf
    best, partner = scores.max(dim=-1)
    src = best.topk(r, dim=-1).indices  # (B, r), A positions merged away
    kept = torch.ones(batch, ta, dtype=torch.bool, device=x.device)
    kept[torch.arange(batch)[:, None], src] = False
    unm = torch.nonzero(kept)[:, 1].reshape(batch, ta - r)  # ascending: original order
    dst = partner.gather(1, src)
    weighted = torch.cat([x * size, size], dim=-1)
    a, b = weighted[:, ::2], weighted[:, 1::2]
    c = weighted.shape[-1]
    b = b.scatter_add(1, dst[..., None].expand(-1, -1, c), a.gather(1, src[..., None].expand(-1, -1, c)))
    a = a.gather(1, unm[..., None].expand(-1, -1, c))
    ka, kb = (prefix + 1) // 2, prefix // 2
    out = torch.cat([a[:, :ka], b[:, :kb], a[:, ka:], b[:, kb:]], dim=1)
    return out[..., :-1] / out[..., -1:], out[..., -1:]


class Block(nn.Module):
    """Pre-norm encoder block: x + Attn(LN(x)), then x + MLP(LN(x)); with token merging
    (`merge` > 0), `merge` tokens merged between the two (`bipartite_merge`)."""

    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ls1: nn.Module = LayerScale(cfg.embed_dim) if cfg.layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.mlp = Mlp(cfg)
        self.ls2: nn.Module = LayerScale(cfg.embed_dim) if cfg.layer_scale else nn.Identity()

    def forward(
        self, x: torch.Tensor, want_probs: bool = False, rope: RotaryEmbedding | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        a, probs, _ = self.attn(self.norm1(x), want_probs, rope)
        x = x + self.ls1(a)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, probs

    def forward_merging(
        self, x: torch.Tensor, size: torch.Tensor | None, r: int, prefix: int,
        want_probs: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The block with ToMe: proportional attention on the tokens' sizes (None: all 1),
        then r tokens merged. Returns tokens, sizes and probabilities."""
        log_size = None if size is None else size[..., 0].log()
        a, probs, metric = self.attn(self.norm1(x), want_probs, None, log_size)
        x = x + self.ls1(a)
        if r:
            ones = torch.ones_like(x[..., :1]) if size is None else size
            x, size = bipartite_merge(x, ones, metric, r, prefix)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, size, probs


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p,
                              bias=cfg.patch_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # (B, N, C*P*P): the convolution as a matrix product
            w = self.proj.weight.reshape(self.proj.out_channels, -1)
            return F.linear(x, w, self.proj.bias)
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d)) if cfg.dist_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.reg_tokens, d)) if cfg.reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_embed_len, d))
        self.norm_pre: nn.Module = (
            nn.LayerNorm(d, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        )
        self.rope = RotaryEmbedding(cfg) if cfg.rope else None
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm: nn.Module = nn.Identity() if cfg.fc_norm else nn.LayerNorm(d, eps=cfg.norm_eps)
        self.attn_pool = AttentionPool(cfg) if cfg.global_pool == "map" else None
        self.fc_norm: nn.Module = (nn.LayerNorm(cfg.pooled_dim, eps=cfg.norm_eps) if cfg.fc_norm
                                   else nn.Identity())
        self.embed_proj = (nn.Linear(cfg.pooled_dim, cfg.embed_proj, bias=False)
                           if cfg.embed_proj else None)
        features = cfg.feature_dim
        self.head: nn.Module = nn.Linear(features, cfg.num_classes) if cfg.num_classes else nn.Identity()
        self.head_dist: nn.Module | None = (
            nn.Linear(features, cfg.num_classes) if cfg.dist_head and cfg.num_classes else None
        )
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Truncated-normal init as in timm, for training from scratch."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif "norm" in name:
                nn.init.ones_(p)
            elif name.endswith("gamma"):
                nn.init.constant_(p, 1e-5)
            else:
                nn.init.trunc_normal_(p, std=std)

    def _prefix(self, batch: int) -> list[torch.Tensor]:
        tokens = [self.cls_token, self.dist_token, self.reg_token]
        return [t.expand(batch, -1, -1) for t in tokens if t is not None]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patches (or image) to the token sequence, position embeddings added."""
        x = self.patch_embed(x)
        prefix = self._prefix(x.shape[0])
        if self.cfg.no_embed_class:
            x = torch.cat([*prefix, x + self.pos_embed], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        return self.norm_pre(x)

    def forward_features(
        self, x: torch.Tensor, want_probs: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x, all_probs, _ = self.forward_tokens(x, want_probs)
        return x, all_probs

    def forward_tokens(
        self, x: torch.Tensor, want_probs: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        """The normed final tokens, each block's attention probabilities (when asked) and the
        tokens' sizes (None without merging)."""
        x = self.embed(x)
        all_probs: list[torch.Tensor] = []
        size = None
        merge = self.cfg.merge or (0,) * len(self.blocks)
        for module, r in zip(self.blocks, merge, strict=True):
            block: Block = module  # type: ignore[assignment]
            if self.cfg.merge:
                x, size, probs = block.forward_merging(
                    x, size, r, self.cfg.num_prefix_tokens, want_probs)
            else:
                x, probs = block(x, want_probs, self.rope)
            if probs is not None:
                all_probs.append(probs)
        return self.norm(x), all_probs, size

    def pool(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """The sequence (B, T, D) to the features the head reads (B, pooled_dim). Merged
        tokens (sizes (B, T, 1)) count by their size: the mean weighs them, attention
        pooling adds their log size to its logits."""
        cfg, k = self.cfg, self.cfg.num_prefix_tokens
        if self.attn_pool is not None:
            return self.attn_pool(x[:, k:], None if size is None else size[:, k:, 0].log())
        if cfg.global_pool in ("avg", "token_avg"):
            mean = (x[:, k:].mean(dim=1) if size is None else
                    (x[:, k:] * size[:, k:]).sum(dim=1) / cfg.num_patches)
            return mean if cfg.global_pool == "avg" else torch.cat([x[:, 0], mean], dim=-1)
        return x[:, 0]

    def forward_head(self, x: torch.Tensor, size: torch.Tensor | None = None) -> torch.Tensor:
        """Pool, normalise, project; then the classifier, or the embedding when there is
        none."""
        features = self.fc_norm(self.pool(x, size))
        if self.embed_proj is not None:
            features = self.embed_proj(features)
        if self.cfg.head_l2norm:
            features = F.normalize(features, dim=-1)
        out = self.head(features)
        if self.head_dist is not None:
            out = (out + self.head_dist(x[:, 1])) / 2
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, _, size = self.forward_tokens(x)
        return self.forward_head(tokens, size)

    def attention_probs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's attention probabilities, (B, heads, T, T)."""
        return self.forward_features(x, want_probs=True)[1]


def resample_pos_embed(
    pos_embed: torch.Tensor,
    old_grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix: int,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize learned position embeddings to a new patch grid, bicubic, as the checkpoint's
    own library does at another image size (timm: antialiased; Hugging Face: not, but for
    DINOv2 with registers); prefix entries kept."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    d = grid.shape[-1]
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=antialias,
                         align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)
    return torch.cat([prefix.float(), grid], dim=1)


def square_grid(num_patches: int) -> tuple[int, int]:
    side = math.isqrt(num_patches)
    return (side, side) if side * side == num_patches else (0, 0)
