"""Embeddings of many images from a headless model (`vitedge embed`): a gallery for
retrieval, few-shot classification or anomaly detection, written as one (N, D) float32
.npy array and the list of the images it holds, row by row. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.options import PipelineOptions
from vitedge.report import Reporter, reporter


@dataclass
class EmbedResult:
    output: Path
    paths: Path
    count: int
    dim: int
    normalized: bool
    skipped: list[tuple[str, str]] = field(default_factory=list)
    """(image, why) of the images that could not be read."""
    artifact: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": self.artifact, "output": str(self.output), "paths": str(self.paths),
                "count": self.count,
                "dim": self.dim, "normalized": self.normalized,
                "skipped": [{"image": name, "error": why} for name, why in self.skipped]}


def paths_file(output: str | Path) -> Path:
    """`gallery.npy` -> `gallery.paths.txt`: which image each row of the array is."""
    out = Path(output)
    return out.with_name(out.name.removesuffix(".npy") + ".paths.txt")


def embed_images(artifact: str | Path, images: list[Path], output: str | Path,
                 options: PipelineOptions | None = None, report: Reporter | None = None
                 ) -> EmbedResult:
    """Embed `images` with the headless model `artifact`; write the array to `output`
    (.npy) and the image paths beside it (`paths_file`), both atomically."""
    import io

    from vitedge.fileio import write_bytes_atomic, write_text_atomic
    from vitedge.inputs import refuse_overwriting_inputs
    from vitedge.runtime.pipeline import open_pipeline

    rep = reporter(report)
    out = Path(output)
    if out.suffix != ".npy":
        raise VitedgeError(f"{out} does not end in .npy", "name the output like gallery.npy")
    refuse_overwriting_inputs(out, artifact, *images)
    refuse_overwriting_inputs(paths_file(out), artifact, *images)
    options = options or PipelineOptions()
    rows: list[np.ndarray] = []
    names: list[str] = []
    with open_pipeline(artifact, options) as pipe:
        if pipe.manifest.is_classifier:
            raise VitedgeError(f"{Path(artifact).name} is a classifier: it outputs class "
                               "scores, not embeddings",
                               "export the checkpoint without its head: vitedge export "
                               "CHECKPOINT --no-head (DINOv2, CLIP and SigLIP image towers are "
                               "headless already)")
        rep.step("embedding")
        for done, (frame, p) in enumerate(pipe.stream(images), 1):
            if p.embedding is not None:
                rows.append(p.embedding)
                names.append(str(frame))
            rep.progress(done, len(images))
        skipped = list(pipe.skipped)
    if not rows:
        raise VitedgeError(f"none of the {len(images)} images could be read", "check the files")
    array = np.stack(rows).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomic(out, buffer.getvalue())
    write_text_atomic(paths_file(out), "".join(f"{name}\n" for name in names))
    return EmbedResult(out, paths_file(out), array.shape[0], array.shape[1],
                       options.normalize_embeddings, skipped, str(artifact))
