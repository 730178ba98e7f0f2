"""Token merging's bookkeeping outside the graph, in numpy: which original tokens each
merged token holds, and attention among merged tokens as attention among the original ones
(what `explain` maps onto the patch grid). Base module: the backends and the runtime use it."""

from __future__ import annotations

import numpy as np

from vitedge.architecture import ViTConfig


def merge_members(merges: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: ViTConfig
                  ) -> list[np.ndarray]:
    """Which original tokens each token holds, before each block: (B, T_i, T_0) 0/1 per
    block, from each merging block's kept A positions, merged A positions and their B
    partners (the graph's `blocks.N.merge.unm / src / dst`), in the graph's order: prefix
    tokens (A's then B's), kept A tokens, then B (`vitedge.export.onnx_graph._merge`)."""
    counts, prefix = cfg.tokens_per_block(), cfg.num_prefix_tokens
    ka, kb = (prefix + 1) // 2, prefix // 2
    batch = len(merges[0][0]) if merges else 1
    held = np.broadcast_to(np.eye(counts[0], dtype=np.float32), (batch, counts[0], counts[0]))
    members, found = [], iter(merges)
    rows = np.arange(batch)[:, None]
    for r in cfg.merge:
        members.append(held)
        if not r:
            continue
        unm, src, dst = next(found)
        a, b = held[:, ::2], held[:, 1::2].copy()
        for j in range(src.shape[1]):  # several A tokens may join one B token
            b[rows[:, 0], dst[:, j]] += a[rows[:, 0], src[:, j]]
        kept = a[rows, unm]
        held = np.concatenate([kept[:, :ka], b[:, :kb], kept[:, ka:], b[:, kb:]], axis=1)
    return members


def on_original_tokens(probs: list[np.ndarray], members: list[np.ndarray]) -> list[np.ndarray]:
    """Each block's attention (B, heads, T_i, T_i) among merged tokens as attention among
    the original tokens (B, heads, T_0, T_0): a patch attends as the token holding it does,
    and the attention a token receives is shared equally by the patches it holds (rows
    still sum to one)."""
    out = []
    for p, held in zip(probs, members, strict=True):
        size = held.sum(axis=2)  # (B, T_i)
        spread = held / size[..., None]  # (B, T_i, T_0)
        out.append(np.einsum("bit,bhij,bjs->bhts", held, p.astype(np.float32), spread,
                             optimize=True).astype(np.float32))
    return out
