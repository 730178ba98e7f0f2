"""vitedge: Vision Transformers from a training checkpoint to a fast, verified edge model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitedge.version import __version__

__all__ = ["__version__", "open"]

if TYPE_CHECKING:
    from vitedge.runtime.pipeline import Pipeline


def open(path: Any, **options: Any) -> Pipeline:  # noqa: A001 - vitedge.open, like io.open
    """A runtime pipeline on a built model (`.engine` or `.onnx`): `pipe(frame)` returns a
    prediction. See `vitedge.runtime.pipeline.open_pipeline` for the options."""
    from vitedge.runtime.pipeline import open_pipeline

    return open_pipeline(path, **options)
