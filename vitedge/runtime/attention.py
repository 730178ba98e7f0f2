"""Attention maps from attention probabilities, in numpy: the class token's attention over
the patch grid for one layer, and attention rollout across layers (Abnar & Zuidema, 2020),
plus the position-embedding similarity of the ViT paper. Probabilities are per block,
(B, heads, T, T) with the prefix tokens (class, distillation, registers) first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vitedge.architecture import ViTConfig
from vitedge.errors import VitedgeError
from vitedge.options import EXPLAIN_METHODS, parse_head  # noqa: F401 - parse_head re-exported

if TYPE_CHECKING:
    from vitedge.runtime.postprocess import Prediction

METHODS = EXPLAIN_METHODS


@dataclass
class Explanation:
    """What the model attended to in one frame: `grid` (H/P, W/P) over the patches,
    `pixels` the resized and cropped uint8 frame the model saw, and its prediction."""

    grid: np.ndarray
    pixels: np.ndarray
    prediction: Prediction
    method: str
    layer: int
    head: str | int


def reduce_heads(probs: np.ndarray, head: str | int) -> np.ndarray:
    """(B, heads, T, T) -> (B, T, T): the mean or max over heads, or one head."""
    if head == "mean":
        return probs.mean(axis=1)
    if head == "max":
        return probs.max(axis=1)
    heads = probs.shape[1]
    if not isinstance(head, int) or not -heads <= head < heads:
        raise VitedgeError(f"head {head} does not exist: this model has {heads} heads "
                           f"(0 to {heads - 1})")
    return probs[:, head]


def patch_grid(rows: np.ndarray, cfg: ViTConfig) -> np.ndarray:
    """(B, T) attention over all tokens -> (B, H/P, W/P) over the patch tokens."""
    gh, gw = cfg.grid
    return rows[:, cfg.num_prefix_tokens:].reshape(len(rows), gh, gw)


def cls_attention(probs: list[np.ndarray], cfg: ViTConfig, layer: int = -1,
                  head: str | int = "mean") -> np.ndarray:
    """The class token's row of one layer's attention, over the patch grid: (B, H/P, W/P)."""
    if not cfg.class_token:
        raise VitedgeError("`cls` does not apply: this model has no class token (it pools "
                           "the mean of its patch tokens)",
                           "use --method rollout, which follows the mean of the patch rows")
    if not -len(probs) <= layer < len(probs):
        raise VitedgeError(f"layer {layer} does not exist: this model has {len(probs)} blocks "
                           f"(0 to {len(probs) - 1}, or -1 for the last)")
    return patch_grid(reduce_heads(probs[layer], head)[:, 0], cfg)


def rollout_matrix(probs: list[np.ndarray], head: str | int = "mean") -> np.ndarray:
    """prod over layers (last first) of (A + I) with rows re-normalised: (B, T, T)."""
    result: np.ndarray | None = None
    for layer_probs in probs:
        a = reduce_heads(layer_probs.astype(np.float64), head)
        a = a + np.eye(a.shape[-1])
        a /= a.sum(axis=-1, keepdims=True)
        result = a if result is None else a @ result
    if result is None:
        raise VitedgeError("no attention layers to roll out")
    return result


def attention_rollout(probs: list[np.ndarray], cfg: ViTConfig, head: str | int = "mean"
                      ) -> np.ndarray:
    """Rollout over the patch grid, (B, H/P, W/P): the class token's row, or for a model
    that pools its patch tokens (mean, or SigLIP's attention pool), the mean of the patch
    rows."""
    rolled = rollout_matrix(probs, head)
    if cfg.global_pool in ("token", "token_avg"):
        rows = rolled[:, 0]
    else:
        rows = rolled[:, cfg.num_prefix_tokens:].mean(axis=1)
    return patch_grid(rows, cfg).astype(np.float32)


def attention_grid(probs: list[np.ndarray], cfg: ViTConfig, method: str = "cls",
                   layer: int = -1, head: str | int = "mean") -> np.ndarray:
    if any(p.shape[-1] != cfg.num_tokens for p in probs):
        raise VitedgeError("this model merges tokens (ToMe) and its runner does not say which "
                           "patches each merged token holds, so its attention has no place on "
                           "the patch grid", "explain the ONNX model (ONNX Runtime tracks them)")
    if method == "cls":
        return cls_attention(probs, cfg, layer, head)
    if method == "rollout":
        return attention_rollout(probs, cfg, head)
    raise VitedgeError(f"unknown method '{method}'", f"use one of {', '.join(METHODS)}")


def grid_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two attention grids."""
    x, y = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norms = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / max(norms, 1e-30)


def position_similarity(pos_embed: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Cosine similarity of each patch position's embedding with every other's, as
    (rows, cols, rows, cols): [i, j] is the map of position (i, j) against all."""
    gh, gw = grid
    pos = np.asarray(pos_embed, np.float64).reshape(-1, pos_embed.shape[-1])
    if len(pos) != gh * gw:
        raise VitedgeError(f"{len(pos)} position embeddings do not fill a {gh}x{gw} patch grid")
    unit = pos / np.maximum(np.linalg.norm(pos, axis=1, keepdims=True), 1e-30)
    return (unit @ unit.T).reshape(gh, gw, gh, gw).astype(np.float32)

