"""vitedge: Vision Transformers from a training checkpoint to a fast, verified edge model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vitedge.version import __version__

__all__ = ["__version__", "open"]

if TYPE_CHECKING:
    from vitedge.runtime.pipeline import Pipeline


def open(path: Any, options: Any = None, **changes: Any) -> Pipeline:  # noqa: A001 - like io.open
    """A runtime pipeline on a built model (`.engine` or `.onnx`): `pipe(frame)` returns a
    prediction, `pipe.stream(source)` one per frame of a video, camera or folder. How it
    runs: `options` (a `vitedge.options.PipelineOptions`) and/or these keywords, whose
    defaults are PipelineOptions' (`vitedge.runtime.pipeline.open_pipeline` says more):
    """
    from vitedge.runtime.pipeline import open_pipeline

    return open_pipeline(path, options, **changes)


def _signature_of_open() -> None:
    """`help(vitedge.open)` and IDEs show every pipeline option with its default and help,
    read from `PipelineOptions` (the one place they are written)."""
    import inspect
    from dataclasses import fields

    from vitedge.options import PipelineOptions

    kinds = inspect.Parameter
    params = [kinds("path", kinds.POSITIONAL_OR_KEYWORD, annotation="str | Path"),
              kinds("options", kinds.POSITIONAL_OR_KEYWORD, default=None,
                    annotation="PipelineOptions | None")]
    lines = []
    for f in fields(PipelineOptions):
        params.append(kinds(f.name, kinds.KEYWORD_ONLY, default=f.default, annotation=f.type))
        flag = f.metadata.get("flag")
        lines.append(f"    {f.name}: {flag.help if flag is not None and flag.help else _HELP[f.name]}")
    open.__signature__ = inspect.Signature(params, return_annotation="Pipeline")  # type: ignore[attr-defined]
    open.__doc__ = (open.__doc__ or "").rstrip() + "\n\n" + "\n".join(lines) + "\n"


_HELP = {"keep_logits": "Keep each prediction's raw logits (`Prediction.logits`).",
         "cuda_graph": "Replay a TensorRT engine's execution as a CUDA graph."}
"""Help for the options that have no command-line flag."""

_signature_of_open()
