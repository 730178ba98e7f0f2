"""See what the ViT sees: the class token's attention over the patch grid, attention
rollout, and the position-embedding similarity figure, read from deployed artifacts.

    from vitedge.explain import ExplainOptions, explain_images
    results = explain_images("model.int8.onnx", ["cat.jpg"], ExplainOptions(), "out/",
                             compare="model.onnx")

The runtime API is `pipe.explain(frame)` (`vitedge.runtime.pipeline.Pipeline`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.fileio import atomic_path, make_folder
from vitedge.options import ExplainOptions
from vitedge.report import Reporter, reporter
from vitedge.runtime.attention import METHODS, grid_similarity, position_similarity

__all__ = ["METHODS", "ExplainOptions", "ExplainResult", "explain_images",
           "position_embeddings", "write_position_embedding_figure"]


@dataclass
class ExplainResult:
    image: str
    prediction: dict[str, Any]
    grid_shape: tuple[int, int]
    png: str
    npy: str
    compare: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "prediction": self.prediction,
                "grid_shape": list(self.grid_shape), "png": self.png, "npy": self.npy,
                **({"compare": self.compare} if self.compare else {})}


def _top(prediction: Any) -> str:
    if not prediction.topk:
        return prediction.describe()
    return ", ".join(f"{lab if lab is not None else i} {s:.0%}" for i, lab, s in prediction.topk)


def _prediction(prediction: Any) -> dict[str, Any]:
    """A prediction as JSON, without the timings of the explain call."""
    return {k: v for k, v in prediction.to_dict().items() if k != "timings_ms"}


def _describe(opts: ExplainOptions) -> str:
    where = f", layer {opts.layer}" if opts.method == "cls" else ""
    return f"{opts.method}{where}, heads {opts.head}"


def _unique(name: str, used: set[str]) -> str:
    """`name`, or `name-2`, `name-3`... when two images share a file name."""
    candidate, n = name, 1
    while candidate in used:
        n += 1
        candidate = f"{name}-{n}"
    used.add(candidate)
    return candidate


def _check_comparable(a: Any, b: Any, name_a: str, name_b: str) -> None:
    if (a.grid, a.num_prefix_tokens) != (b.grid, b.num_prefix_tokens):
        raise VitedgeError(
            f"{name_a} and {name_b} do not attend over the same tokens ({a.grid[0]}x{a.grid[1]} "
            f"patches + {a.num_prefix_tokens} against {b.grid[0]}x{b.grid[1]} + "
            f"{b.num_prefix_tokens})", "compare models of the same architecture and input size")


def _save_grid(grid: np.ndarray, out: Path) -> None:
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.save(f, grid.astype(np.float32))


class Explanations(list[ExplainResult]):
    """`explain_images`' results, and the images it could not read."""

    skipped: list[tuple[str, str]]
    """(image, why) of each image left out because it could not be read."""


def explain_images(artifact: str | Path, images: Iterable[str | Path], out_dir: str | Path,
                   opts: ExplainOptions | None = None, report: Reporter | None = None
                   ) -> Explanations:
    """For each image: `NAME.METHOD.png` (the image, the map over it, the top-k as the title)
    and `NAME.METHOD.npy` (the raw grid); with `opts.compare`, the other artifact's map
    beside it, their cosine similarity, and `NAME.METHOD.compare.npy`. An image that cannot
    be read is left out and named (a warning, and `skipped`), as predict and eval do."""
    opts = opts or ExplainOptions()
    compare = opts.compare
    images = list(images)
    rep = reporter(report)
    from vitedge.explain.figures import Panel, explanation_figure
    from vitedge.runtime.decode import decode_frame
    from vitedge.runtime.pipeline import open_pipeline

    out = Path(out_dir)
    results = Explanations()
    results.skipped = []
    with open_pipeline(artifact, fast=opts.fast, topk=opts.topk) as pipe:
        other = open_pipeline(compare, fast=opts.fast, topk=opts.topk) if compare else None
        try:
            if other is not None:
                _check_comparable(pipe.manifest.architecture, other.manifest.architecture,
                                  Path(artifact).name, Path(str(compare)).name)
            used: set[str] = set()
            for image in images:
                try:
                    decode_frame(image, pipe.color, pipe.fast)
                except VitedgeError as exc:
                    results.skipped.append((str(image), exc.message))
                    continue
                name = _unique(Path(image).stem, used)
                e = pipe.explanation(image, opts.method, opts.layer, opts.head)
                stem = f"{name}.{opts.method}"
                png, npy = out / f"{stem}.png", out / f"{stem}.npy"
                panels = [Panel(e.grid, f"{Path(artifact).name}\n{_describe(opts)}")]
                title = _top(e.prediction)
                result = ExplainResult(str(image), _prediction(e.prediction),
                                       (e.grid.shape[0], e.grid.shape[1]), str(png), str(npy))
                if other is not None:
                    assert compare is not None
                    o = other.explanation(image, opts.method, opts.layer, opts.head)
                    similarity = grid_similarity(e.grid, o.grid)
                    panels.append(Panel(o.grid, f"{Path(compare).name}\n{_describe(opts)}"))
                    title = (f"{Path(artifact).name}: {title}\n{Path(compare).name}: {_top(o.prediction)}"
                             f"   |   map cosine similarity {similarity:.4f}")
                    other_npy = out / f"{stem}.compare.npy"
                    make_folder(out)
                    _save_grid(o.grid, other_npy)
                    result.compare = {"artifact": str(compare), "similarity": similarity,
                                      "same_top1": o.prediction.class_id == e.prediction.class_id,
                                      "prediction": _prediction(o.prediction),
                                      "npy": str(other_npy)}
                make_folder(out)
                explanation_figure(e.pixels, panels, title, png)
                _save_grid(e.grid, npy)
                results.append(result)
                rep.progress(len(results) + len(results.skipped), len(images))
        finally:
            if other is not None:
                other.close()
    if images and not results:
        name, why = results.skipped[0]
        raise VitedgeError(f"none of the {len(images)} images could be read ({name}: {why})",
                           "check the files")
    return results


def position_embeddings(artifact: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """The patch positions' embeddings (N, D) of a vitedge ONNX model and its patch grid."""
    from onnx import numpy_helper

    from vitedge.backends import is_onnx_artifact
    from vitedge.graph import load_onnx
    from vitedge.manifest import manifest_from_onnx

    path = Path(artifact)
    if not is_onnx_artifact(path):
        raise VitedgeError(f"{path.name}: the position embeddings are read from an ONNX model "
                           "(an engine's weights are not readable)",
                           "pass the ONNX model the engine was built from")
    model = load_onnx(path)
    manifest = manifest_from_onnx(model)
    if manifest is None:
        raise VitedgeError(f"{path} has no vitedge manifest", "export it with `vitedge export`")
    found = [t for t in model.graph.initializer if t.name == "pos_embed"]
    if not found:
        raise VitedgeError(f"{path.name} has no `pos_embed` tensor",
                           "use a model exported by vitedge (optimizers may rename it)")
    pos = numpy_helper.to_array(found[0]).astype(np.float32)
    return pos.reshape(-1, pos.shape[-1]), manifest.architecture.grid


def write_position_embedding_figure(artifact: str | Path, out: str | Path) -> dict[str, Any]:
    from vitedge.explain.figures import position_embedding_figure

    pos, grid = position_embeddings(artifact)
    similarity = position_similarity(pos, grid)
    position_embedding_figure(similarity, Path(out),
                              f"position embedding similarity: {Path(artifact).name}")
    return {"figure": str(out), "grid": list(grid), "positions": len(pos), "dim": int(pos.shape[1])}
