"""Token merging's bookkeeping outside the graph, in numpy: which original tokens each
merged token holds, and attention among merged tokens as attention among the original ones
(what `explain` maps onto the patch grid). Base module: the backends and the runtime use it."""

from __future__ import annotations

import numpy as np

from vitedge.architecture import ViTConfig


def merge_members(merges: list[tuple[np.ndarray, np.ndarray, np.ndarray]], cfg: ViTConfig
                  ) -> list[np.ndarray]:
    """Which original tokens each token holds, before each block: (B, T_i, T_0) 0/1 per
    block, from each merging block's `order` (B, T - r: each output token's input
    position), `moved` (B, r: the merged tokens' input positions) and `into` (B, r: the
    output row each joins), the graph's `blocks.N.merge.order / moved / into`
    (`vitedge.export.onnx_graph._merge`)."""
    counts = cfg.tokens_per_block()
    batch = len(merges[0][0]) if merges else 1
    held = np.broadcast_to(np.eye(counts[0], dtype=np.float32), (batch, counts[0], counts[0]))
    members, found = [], iter(merges)
    rows = np.arange(batch)
    for r in cfg.merge:
        members.append(held)
        if not r:
            continue
        order, moved, into = next(found)
        out = held[rows[:, None], order]
        for j in range(moved.shape[1]):  # several tokens may join one
            out[rows, into[:, j]] += held[rows, moved[:, j]]
        held = out
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
