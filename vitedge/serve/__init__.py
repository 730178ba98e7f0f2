"""Past one device: serving vitedge artifacts through NVIDIA Triton Inference Server, and
the files a fleet deploys.

- `serve(artifacts, options)` (`vitedge serve`): a real tritonserver, on loopback unless
  told otherwise, serving each artifact with dynamic batching, as tensors and as encoded
  image bytes (`server.py`; `repository.serving_repository`; the Python-backend model
  `model.py`, which runs vitedge's own runtime);
- `export_repository` (`vitedge export-triton`): a model repository for a production Triton
  (tensorrt_plan / onnxruntime_onnx, a preprocessing model and an ensemble);
- `deepstream_config` (`vitedge export-deepstream`): DeepStream's Gst-nvinfer configuration.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.fileio import scratch_folder
from vitedge.options import ServeOptions
from vitedge.serve.deepstream import DeepStreamExport, export_deepstream
from vitedge.serve.repository import ModelEntry, export_repository, serving_repository
from vitedge.serve.server import TritonServer, find_triton

__all__ = ["DeepStreamExport", "ModelEntry", "ServeOptions", "TritonServer",
           "export_deepstream", "export_repository", "exposure_notes", "find_triton", "serve",
           "serving_repository"]


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_notes(options: ServeOptions) -> list[str]:
    """What the user should know about where the server listens."""
    if options.host in LOOPBACK:
        return []
    return [f"listening on {options.host}, not only this machine"]


def serve(artifacts: list[str | Path], options: ServeOptions | None = None,
          on_ready: Callable[[TritonServer, list[ModelEntry]], None] | None = None,
          stop: threading.Event | None = None, log: Path | None = None) -> None:
    """Serve `artifacts` until Ctrl-C, SIGTERM or `stop` is set. `on_ready` is called once
    every model is loaded. When this returns the server and its Python-backend stubs are
    gone, their shared memory removed and the ports free. `log`: where tritonserver writes
    (default: a temporary file, removed with the rest)."""
    options = options or ServeOptions()
    if not artifacts:
        raise VitedgeError("nothing to serve", "give one or more vitedge artifacts")
    stop = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_a: stop.set())
    try:
        with scratch_folder("serve-") as tmp:
            repo = Path(tmp) / "models"
            entries = serving_repository([Path(a) for a in artifacts], repo, options)
            with TritonServer(repo, options.host, options.http_port, options.grpc_port,
                              options.metrics_port, log=log) as server:
                if on_ready:
                    on_ready(server, entries)
                while not stop.wait(0.2):
                    if not server.running:
                        raise VitedgeError(f"tritonserver stopped on its own: {server.last_error()}",
                                           "run with --log FILE to keep its whole log")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
