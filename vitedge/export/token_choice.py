"""`--token-reuse auto`: the tokens per gate chosen on a clip within an accuracy budget, as
`--merge auto` chooses a merging schedule. Each candidate K runs the clip through the
streaming module in PyTorch as `vitedge.runtime.tokens.TokenReuse` runs a camera (a full
pass first and every `refresh` frames, the state carried in between) and is judged frame by
frame against the plain model: top-1 agreement, or the embedding's cosine for a model
without a head. The smallest K within `--max-drop` wins (the fewest tokens recomputed); if
none is, every token (no saving, said in the note)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.report import Reporter

SHARES = (0.125, 0.25, 0.375, 0.5, 0.75)
"""Candidate K as shares of the model's tokens, smallest first."""
CHOICE_FRAMES = 120
"""Frames of the clip the candidates are judged on (its first, in order)."""


@dataclass
class TokenCandidate:
    k: int
    score: float
    """Top-1 agreement with the plain model in % over the clip (embeddings: mean cosine x 100)."""
    within: bool


@dataclass
class TokenChoice:
    k: int
    tokens: int
    max_drop: float
    frames: int
    measure: str
    candidates: list[TokenCandidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"k": self.k, "tokens": self.tokens, "max_drop": self.max_drop,
                "frames": self.frames, "measure": self.measure,
                "candidates": [asdict(c) for c in self.candidates]}

    def note(self) -> str:
        """The choice in one line."""
        tried = ", ".join(f"{c.k}: {c.score:.2f}" for c in self.candidates)
        if self.k == self.tokens:
            return (f"--token-reuse auto: no K within --max-drop {self.max_drop} on {self.frames} "
                    f"frames ({self.measure} %: {tried}); every token is recomputed (no saving)")
        return (f"--token-reuse auto: K {self.k} of {self.tokens}, the fewest within --max-drop "
                f"{self.max_drop} on {self.frames} frames ({self.measure} %: {tried})")


def clip_inputs(imported: Any, clip: str | Path, frames: int = CHOICE_FRAMES) -> np.ndarray:
    """The first `frames` frames of `clip` (a video, a folder or a list of images, taken in
    order), each prepared as the model takes it: (n, C, H, W)."""
    from vitedge.runtime.decode import decode_frame
    from vitedge.runtime.preprocess import Preprocessor
    from vitedge.runtime.sources import open_source

    prepare = Preprocessor(imported.manifest("images"))
    taken = [prepare(decode_frame(f)) for f in itertools.islice(open_source(clip), frames)]
    if len(taken) < 2:
        raise VitedgeError(f"--token-data {clip} gave {len(taken)} frame(s): choosing K needs "
                           "a sequence", "give a video or a folder of frames in order")
    return np.stack(taken).astype(np.float32)


def choose_tokens(imported: Any, clip: str | Path, max_drop: float, refresh: int = 30,
                  rep: Reporter | None = None) -> TokenChoice:
    """The tokens per gate for `imported` (`vitedge.model.importer.ImportedViT`) within
    `max_drop` on `clip`."""
    import torch

    from vitedge.model.eventful import StreamingViT

    model = imported.model.eval()
    tokens = imported.config.num_tokens
    x = torch.from_numpy(clip_inputs(imported, clip))
    with torch.no_grad():
        plain = model(x).numpy()
    embedding = not imported.config.num_classes
    full = StreamingViT(model, tokens)
    found = []
    for k in sorted({max(2, round(tokens * s)) for s in SHARES if round(tokens * s) < tokens}):
        if rep is not None:
            rep.step(f"token reuse auto: K {k} of {tokens} on {len(x)} frames")
        stream = StreamingViT(model, k)
        state = full.initial_state(1)
        outs = []
        with torch.no_grad():
            for i in range(len(x)):
                out = (full if i % refresh == 0 else stream)(x[i:i + 1], *state)
                state = list(out[1:])
                outs.append(out[0].numpy())
        got = np.concatenate(outs)
        if embedding:
            cos = np.sum(got * plain, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(plain, axis=1))
            score = float(cos.mean() * 100)
        else:
            score = float(np.mean(got.argmax(1) == plain.argmax(1)) * 100)
        found.append(TokenCandidate(k, round(score, 4), score >= 100 - max_drop))
    best = next((c.k for c in found if c.within), tokens)
    return TokenChoice(best, tokens, max_drop, len(x),
                       "mean cosine" if embedding else "top-1 agreement", found)
