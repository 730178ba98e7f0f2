"""How closely one model's outputs follow another's on the same inputs: the one place
softmax, KL divergence, cosine similarity and top-1 agreement are computed. Export
verification, quantize's check, `vitedge eval`, the build's verification and the pipeline
all use it. numpy only."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the maximum (no overflow)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Agreement:
    """A candidate's outputs against a reference's, over `images` inputs."""

    images: int
    top1_agreement: float
    mean_kl: float
    """Mean over inputs of KL(reference softmax || candidate softmax), in nats."""
    cosine: float
    """Mean over inputs of the cosine similarity of the outputs."""
    cosine_min: float
    max_abs: float
    relative: float
    """max |reference - candidate| / max |reference|."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"top-1 agreement {self.top1_agreement:.2%}, mean KL {self.mean_kl:.2e}, "
                f"cosine {self.cosine:.5f} (min {self.cosine_min:.5f}) on {self.images}")


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Compare two (N, classes) outputs (or (N, D) features: KL then compares their softmax
    all the same, and top-1 their largest component)."""
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"outputs of shape {ref.shape} and {cand.shape} cannot be compared")
    p, q = softmax(ref), softmax(cand)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))), axis=-1)
    cos = np.sum(ref * cand, axis=-1) / np.maximum(
        np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1), 1e-30)
    top1 = float(np.mean(ref.argmax(-1) == cand.argmax(-1))) if ref.shape[-1] > 1 else 1.0
    diff = float(np.abs(ref - cand).max()) if ref.size else 0.0
    return Agreement(images=len(ref), top1_agreement=top1, mean_kl=float(np.mean(kl)),
                     cosine=float(np.mean(cos)), cosine_min=float(np.min(cos)), max_abs=diff,
                     relative=diff / max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12))
