"""`vitedge predict`: image files in, one prediction (or a headless model's embedding)
each, through the pipeline's stream; unreadable images are left out and named."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.options import PipelineOptions
from vitedge.runtime.postprocess import Prediction


@dataclass
class PredictResult:
    artifact: str
    predictions: list[tuple[str, Prediction]]
    """(image, its prediction), in the order given."""
    classifier: bool
    outputs: dict[str, str]
    """What each model output is, in words (the manifest's)."""
    warnings: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(image, why) of the images that could not be read."""

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "warnings": self.warnings,
                "skipped": [{"image": name, "error": why} for name, why in self.skipped],
                "outputs": self.outputs,
                "predictions": [{"image": name, **p.to_dict()} for name, p in self.predictions]}


def predict_images(artifact: str | Path, images: list[Path],
                   options: PipelineOptions | None = None, embeddings: bool = False
                   ) -> PredictResult:
    """Each image's prediction. `embeddings`: the caller wants embeddings, which a
    classifier does not give (a VitedgeError says so)."""
    from vitedge.runtime.pipeline import open_pipeline

    with open_pipeline(artifact, options) as pipe:
        if embeddings and pipe.manifest.is_classifier:
            raise VitedgeError(f"{Path(artifact).name} is a classifier: it outputs class scores, "
                               "not embeddings", "export the checkpoint without its head "
                               "(vitedge export --no-head), or drop --embeddings")
        predictions = [(str(file), p) for file, p in pipe.stream(images)]
        result = PredictResult(str(artifact), predictions, pipe.manifest.is_classifier,
                               pipe.manifest.outputs(), list(pipe.warnings), list(pipe.skipped))
    if not predictions:
        raise VitedgeError(f"none of the {len(images)} images could be read", "check the files")
    return result
