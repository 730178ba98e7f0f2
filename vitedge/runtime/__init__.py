"""The runtime a camera application embeds: torch-free, needs numpy, Pillow and
onnxruntime or TensorRT (OpenCV for video, cameras and windows).

    import vitedge
    from vitedge.runtime import open_output, open_source

    with vitedge.open("model.int8.ort.onnx") as pipe, open_output("out.mp4") as out:
        for frame, p in pipe.stream(open_source("rtsp://camera/stream")):   # capture, classify
            out.render(frame, p)                                             # render

What is here: `open_pipeline` (`vitedge.open`) and `Pipeline` (pipeline.py), which composes
the stages, each timed: decode.py -> preprocess.py (exact and fast; the exact resize by
resample.py's C library where it is built: `exact_resampler()`) -> patchify.py -> the
backend's runner (`vitedge.backends`) -> postprocess.py (scores, top-k, embeddings), with
scheduler.py saying when frames run (prefetch, frames in flight); `open_source` /
`FrameSource` (sources.py: files, folders, video, cameras, streams, GStreamer; outages
ridden out), `open_output` (outputs.py: video file, window, none), frame reuse on a fixed
camera (reuse.py: `vitedge.open(..., reuse=K)`, `tune_reuse`) and token reuse (tokens.py:
`TokenReuse` runs the streaming graph of `vitedge.export.export_streaming`; token_gate.py
puts it behind `vitedge.open`, one state per camera), attention maps
(attention.py), stage statistics (stats.py), the camera loop (run_loop.py), and the
library calls of `vitedge predict` and `vitedge embed` (predict.py, embed.py)."""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "open_pipeline": "vitedge.runtime.pipeline", "Pipeline": "vitedge.runtime.pipeline",
    "Prediction": "vitedge.runtime.postprocess", "available_cores": "vitedge.runtime.scheduler",
    "open_source": "vitedge.runtime.sources",
    "FrameSource": "vitedge.runtime.sources", "SourceOptions": "vitedge.runtime.sources",
    "open_output": "vitedge.runtime.outputs", "PipelineOptions": "vitedge.options",
    "FrameReuse": "vitedge.runtime.reuse", "tune_reuse": "vitedge.runtime.reuse",
    "TokenReuse": "vitedge.runtime.tokens", "exact_resampler": "vitedge.runtime.resample",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
