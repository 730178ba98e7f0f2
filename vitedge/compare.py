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
    decided: int = 0
    """Inputs whose reference top-1 leads its second by DECIDED_MARGIN in probability:
    where a different top-1 means a different answer, not a near tie."""
    decided_agreement: float = 1.0
    """Top-1 agreement over the decided inputs."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (f"top-1 agreement {self.top1_agreement:.2%}, mean KL {self.mean_kl:.2e}, "
                f"cosine {self.cosine:.5f} (min {self.cosine_min:.5f}) on {self.images}")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, without overflow for large |logits|."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def scores(logits: np.ndarray, kind: str = "softmax") -> np.ndarray:
    """Class scores from logits as a manifest's `score` says: softmax, or sigmoid."""
    return sigmoid(logits) if kind == "sigmoid" else softmax(logits)


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Compare two (N, classes) outputs (or (N, D) features: KL then compares their softmax
    all the same, and top-1 their largest component)."""
    ref = np.asarray(reference, np.float64)
    cand = np.asarray(candidate, np.float64)
    if ref.shape != cand.shape:
        raise ValueError(f"outputs of shape {ref.shape} and {cand.shape} cannot be compared")
    p, q = softmax(ref), softmax(cand)
    kl = np.maximum(np.sum(p * (np.log(np.maximum(p, 1e-30)) - np.log(np.maximum(q, 1e-30))),
                           axis=-1), 0.0)  # never below 0: float rounding of equal outputs
    cos = np.sum(ref * cand, axis=-1) / np.maximum(
        np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1), 1e-30)
    same = ref.argmax(-1) == cand.argmax(-1)
    top1 = float(np.mean(same)) if ref.shape[-1] > 1 else 1.0
    ranked = np.sort(p, axis=-1)
    decided = (ranked[:, -1] - ranked[:, -2] >= DECIDED_MARGIN) if ref.shape[-1] > 1 \
        else np.zeros(len(ref), bool)
    diff = float(np.abs(ref - cand).max()) if ref.size else 0.0
    return Agreement(images=len(ref), top1_agreement=top1, mean_kl=float(np.mean(kl)),
                     cosine=float(np.mean(cos)), cosine_min=float(np.min(cos)), max_abs=diff,
                     relative=diff / max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12),
                     decided=int(decided.sum()),
                     decided_agreement=float(np.mean(same[decided])) if decided.any() else 1.0)


DECIDED_MARGIN = 0.05
"""A reference top-1 this far ahead of its second (in softmax probability) is an answer; a
closer one is a near tie that any change of arithmetic may flip (random weights, 1000
classes, images far from the training data)."""
MIN_DECIDED = 32
"""Top-1 agreement is judged on at least this many decided inputs, else by cosine."""
SAME_FUNCTION_COSINE = 0.999
"""Worst-input cosine above which two outputs are one function computed two ways."""
REDUCED_FLOAT_COSINE = 0.99
"""The same, where the artifact's float parts run in BF16 or FP16 (8 or 11 bits of
mantissa): on outputs that nearly tie (random weights) its logits lose about 5e-3 of
cosine (measured: ViT-S/16 INT8 on OpenVINO with BF16 float parts, worst 0.995)."""
COLLAPSE_COSINE = 0.9
"""Mean cosine with FP32 below which quantization lost the model."""


@dataclass(frozen=True)
class Judgement:
    ok: bool
    measure: str
    """What was judged, in words, e.g. 'top-1 agreement 99.2% on 120 decided inputs'."""
    by_top1: bool = False
    """Judged by top-1 agreement (else by cosine)."""


def judge(a: Agreement, least_top1: float, least_cosine: float, classifier: bool,
          worst: bool = True) -> Judgement:
    """Whether a candidate agrees with its reference enough: a classifier by its top-1
    agreement on the inputs whose reference top-1 is decided, where there are MIN_DECIDED of
    them; otherwise (an embedding, or a reference that cannot decide) by cosine similarity,
    the worst input's (`worst`) or the mean."""
    if classifier and a.decided >= MIN_DECIDED:
        return Judgement(a.decided_agreement >= least_top1,
                         f"top-1 agreement {a.decided_agreement:.1%} on the {a.decided} of "
                         f"{a.images} inputs whose reference top-1 is decided (at least "
                         f"{least_top1:.1%} needed)", by_top1=True)
    cosine = a.cosine_min if worst else a.cosine
    why = "" if not classifier else (f" (the reference's top-1 is decided on only {a.decided} "
                                     f"of {a.images} inputs)")
    return Judgement(cosine >= least_cosine,
                     f"{'worst' if worst else 'mean'} cosine {cosine:.5f}{why} (at least "
                     f"{least_cosine} needed)")
