"""Stage 5, postprocess: the model's main output to answers. A classifier's logits become
class scores (softmax, or an independent sigmoid per class for a SigLIP zero-shot head, as
the manifest says), the top-k and the label; a headless model's output is its embedding.
The pipeline, the camera loop and the Triton model all answer through this module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vitedge.compare import scores


@dataclass
class Prediction:
    """A classifier's answer for one frame (class, label, score, top-k), or, from a model
    without a classification head (DINOv2, CLIP / SigLIP image towers), its `embedding`
    with class_id, label and score None and topk empty."""

    class_id: int | None
    label: str | None
    score: float | None
    topk: list[tuple[int, str | None, float]]
    timings: dict[str, float]
    """Milliseconds per stage for the call that made this prediction (shared by a batch)."""
    logits: np.ndarray | None = None
    embedding: np.ndarray | None = None
    """The image embedding of a headless model (L2-normalised with normalize_embeddings)."""
    source: str | None = None
    """Where the frame came from, set by `pipe.stream`: the image file (from a folder, a glob
    or a list of paths), else the source stream's URI (video, camera); None for a frame
    passed in as pixels."""
    reused: bool = False
    """Frame reuse (`vitedge.open(..., reuse=K)`): this frame was not inferred; the result is
    the last inferred frame's, `age` frames and `age_ms` milliseconds old."""
    age: int | None = None
    """Frames since the inferred frame this result is from (0: this one); None: reuse off."""
    age_ms: float = 0.0
    tokens_recomputed: float | None = None
    """Token reuse (a streaming graph): the share of tokens this frame recomputed, 1.0 on a
    full pass, 0.0 for a frame reused whole; None: not a streaming graph."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"class_id": self.class_id, "label": self.label, "score": self.score,
                             "topk": [{"class_id": i, "label": lab, "score": s}
                                      for i, lab, s in self.topk],
                             "timings_ms": self.timings}
        if self.logits is not None:
            d["logits"] = self.logits.tolist()
        if self.embedding is not None:
            d["embedding"] = self.embedding.tolist()
        if self.source is not None:
            d["source"] = self.source
        if self.age is not None:
            d.update(reused=self.reused, age=self.age, age_ms=round(self.age_ms, 2))
        if self.tokens_recomputed is not None:
            d["tokens_recomputed"] = round(self.tokens_recomputed, 4)
        return d

    def describe(self) -> str:
        """One short line: the label and score, or the embedding's size and norm."""
        if self.embedding is not None:
            return (f"embedding ({self.embedding.shape[0]} floats, norm "
                    f"{float(np.linalg.norm(self.embedding)):.3f})")
        label = self.label if self.label is not None else self.class_id
        return f"{label} {self.score:.2f}"


def top_classes(logits: np.ndarray, k: int, score: str = "softmax"
                ) -> tuple[np.ndarray, np.ndarray]:
    """(the top-k class ids (batch, k) int64, their scores (batch, k) float64), best first."""
    probs = scores(logits.astype(np.float64, copy=False), score)
    k = min(k, probs.shape[1])
    if k < probs.shape[1]:  # the k best unordered, then only they are sorted
        best = np.argpartition(-probs, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(probs, best, axis=1), axis=1, kind="stable")
        ids = np.take_along_axis(best, order, axis=1)
    else:
        ids = np.argsort(-probs, axis=1)
    return ids, np.take_along_axis(probs, ids, axis=1)


class Postprocessor:
    """The main output of a batch to one Prediction per frame."""

    def __init__(self, manifest: Any, topk: int = 5, keep_logits: bool = False,
                 normalize_embeddings: bool = False):
        self.manifest = manifest
        self.topk = topk
        self.keep_logits = keep_logits
        self.normalize_embeddings = normalize_embeddings

    def __call__(self, logits: np.ndarray, timings: dict[str, float]) -> list[Prediction]:
        logits = logits.astype(np.float32, copy=False)
        if not self.manifest.is_classifier:
            return [Prediction(None, None, None, [], timings, None, self.embedding(row))
                    for row in logits]
        ids, top = top_classes(logits, self.topk, self.manifest.score)
        labels = self.manifest.labels
        out = []
        for row in range(len(logits)):
            ranked = [(int(i), labels[i] if labels else None, float(s))
                      for i, s in zip(ids[row], top[row], strict=True)]
            out.append(Prediction(ranked[0][0], ranked[0][1], ranked[0][2], ranked, timings,
                                  logits[row].copy() if self.keep_logits else None))
        return out

    def embedding(self, row: np.ndarray) -> np.ndarray:
        if not self.normalize_embeddings:
            return row.copy()
        return row / max(float(np.linalg.norm(row)), 1e-12)
