"""Token reuse across frames (Eventful Transformers, Dutson et al., ICCV 2023), with a fixed
number of tokens per gate so that every shape is static and any backend can run it.

`StreamingViT` wraps a classic `VisionTransformer` (class token, learned position
embeddings, no registers or rotary embedding) as a function of the frame and the previous
state that returns the result and the new state. In each block three gates each pick the
`k` tokens whose input changed most since they were last computed (the L2 norm of the
change, top-k; the class token always): those go through the per-token work (LayerNorm +
QKV; the output projection; LayerNorm + MLP) and are written into that work's output
buffer, the others keep their cached values. Attention is recomputed over all the queries,
keys and values in the buffer (the small part at these token counts). With `k` equal to
the token count every token is recomputed, without gates, and the result is the plain
model's; a run
starts from `initial_state` through such a full pass (`full=True`), and so does a refresh
every N frames, which bounds the drift.

State per block, each (B, T, width): the gates' reference inputs (D each), the QKV buffer
(3D), the projection buffer (D) and the MLP buffer (D).
"""

from __future__ import annotations

import torch
from torch import nn

from vitedge.errors import VitedgeError
from vitedge.model.vit import Block, VisionTransformer

STATE_PER_BLOCK = ("ref_qkv", "qkv", "ref_proj", "proj", "ref_mlp", "mlp")
"""The state tensors of one block, in the graph's input and output order."""
CLASS_TOKEN_CHANGE = 3e38
"""The class token's change as the gates see it: above any other, so it is always picked."""


def check_streamable(model: VisionTransformer) -> None:
    """One line naming what the model has that the streaming module does not define."""
    cfg = model.cfg
    found = {"no class token": not cfg.class_token, "a distillation token": cfg.dist_token,
             "register tokens": bool(cfg.reg_tokens), "rotary position embedding": cfg.rope,
             f"{cfg.global_pool} pooling": cfg.global_pool not in ("token", ""),
             "separate Q, K, V projections": not cfg.fused_qkv,
             "a norm inside attention": bool(cfg.attn_norm)}
    has = [what for what, present in found.items() if present]
    if has:
        raise VitedgeError("token reuse supports the classic ViT (a class token read by the "
                           "head, learned position embeddings, fused QKV); this model has "
                           + ", ".join(has), "export it without --token-reuse")


def gate(x: torch.Tensor, ref: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (B, k, D) of the k tokens of `x` that moved most from `ref`, the class token
    always among them, and the new reference: `ref` with those tokens taken from `x`)."""
    moved = x - ref
    change = (moved * moved).sum(-1)
    change = torch.cat([change[:, :1].clamp(min=CLASS_TOKEN_CHANGE), change[:, 1:]], dim=1)
    top = torch.topk(change, k, dim=1).indices
    index = top.unsqueeze(-1).expand(x.shape[0], k, x.shape[-1])
    return index, ref.scatter(1, index, torch.gather(x, 1, index))


def widen(index: torch.Tensor, width: int) -> torch.Tensor:
    return index[..., :1].expand(index.shape[0], index.shape[1], width)


def full_block(block: Block, x: torch.Tensor, state: list[torch.Tensor]
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The full pass of a block: every token computed, no gate (what gates at k = every
    token compute, without their top-k, gathers and scatters: the plain block's cost), and
    the state it leaves: each gate's reference is its whole input, each buffer its work.
    The old state is not needed, but stays a graph input (the pair shares one interface):
    one element of each, times zero, is added to the input."""
    attn = block.attn
    b, t, d = x.shape
    x = x + 0 * sum(s[:, :1, :1] for s in state)
    qkv = attn.qkv(block.norm1(x))
    q, key, v = qkv.split(d, dim=-1)
    q, key, v = attn._heads(q), attn._heads(key), attn._heads(v)
    heads = ((q @ key.transpose(-2, -1)) * attn.scale).softmax(dim=-1) @ v
    a = heads.transpose(1, 2).reshape(b, t, d)
    proj = attn.proj(a)
    y = x + block.ls1(proj)
    mlp = block.ls2(block.mlp(block.norm2(y)))
    return y + mlp, [x, qkv, a, proj, y, mlp]


def streaming_block(block: Block, x: torch.Tensor, state: list[torch.Tensor], k: int
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    ref_qkv, qkv, ref_proj, proj, ref_mlp, mlp = state
    attn = block.attn
    b, t, d = x.shape
    if k == t:
        return full_block(block, x, state)
    index, ref_qkv = gate(x, ref_qkv, k)
    picked = torch.gather(x, 1, index)
    qkv = qkv.scatter(1, widen(index, 3 * d), attn.qkv(block.norm1(picked)))
    q, key, v = qkv.split(d, dim=-1)
    q, key, v = attn._heads(q), attn._heads(key), attn._heads(v)
    heads = ((q @ key.transpose(-2, -1)) * attn.scale).softmax(dim=-1) @ v
    a = heads.transpose(1, 2).reshape(b, t, d)
    index, ref_proj = gate(a, ref_proj, k)
    proj = proj.scatter(1, index, attn.proj(torch.gather(a, 1, index)))
    y = x + block.ls1(proj)
    index, ref_mlp = gate(y, ref_mlp, k)
    mlp = mlp.scatter(1, index, block.ls2(block.mlp(block.norm2(torch.gather(y, 1, index)))))
    return y + mlp, [ref_qkv, qkv, ref_proj, proj, ref_mlp, mlp]


class StreamingViT(nn.Module):
    """forward(x, *state) -> (logits, *new_state), `k` tokens per gate (the class token
    included); `k` = `tokens` is the full pass that starts or refreshes a stream."""

    def __init__(self, model: VisionTransformer, k: int):
        super().__init__()
        check_streamable(model)
        self.model = model
        self.tokens = model.cfg.num_tokens
        if not 1 <= k <= self.tokens:
            raise VitedgeError(f"tokens per gate must be 1 to {self.tokens} (the model's "
                               f"tokens), not {k}", f"--token-reuse 1 to {self.tokens}")
        self.k = k

    def initial_state(self, batch: int = 1) -> list[torch.Tensor]:
        """Zeros, for the full pass (k = every token) that must start a stream: it overwrites
        every reference and buffer, after which each buffer holds its work on its reference
        and a partial pass may follow."""
        d, t = self.model.cfg.embed_dim, self.tokens
        widths = {"qkv": 3 * d}
        return [torch.zeros(batch, t, widths.get(name, d))
                for _ in self.model.blocks for name in STATE_PER_BLOCK]

    def forward(self, x: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        h = m.embed(x)
        new_state: list[torch.Tensor] = []
        n = len(STATE_PER_BLOCK)
        for i, block in enumerate(m.blocks):
            assert isinstance(block, Block)
            h, s = streaming_block(block, h, list(state[i * n:(i + 1) * n]), self.k)
            new_state += s
        return (m.forward_head(m.norm(h)), *new_state)
