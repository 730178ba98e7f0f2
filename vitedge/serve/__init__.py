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
from vitedge.lifetime import scratch_folder
from vitedge.options import ServeOptions
from vitedge.serve.deepstream import DeepStreamExport, export_deepstream
from vitedge.serve.repository import ModelEntry, export_repository, serving_repository
from vitedge.serve.server import (
    ADMIN_HEADER,
    API_HEADER,
    Access,
    TritonServer,
    find_triton,
    read_or_make_key,
)

__all__ = ["ADMIN_HEADER", "API_HEADER", "Access", "DeepStreamExport", "ModelEntry", "ServeOptions", "TritonServer",
           "export_deepstream", "export_repository", "exposure_notes", "find_triton", "serve",
           "serving_repository"]


LOOPBACK = ("127.0.0.1", "localhost", "::1")
ADMIN_KEY_FILE = "~/.config/vitedge/serve-admin.key"


def access_for(options: ServeOptions) -> tuple[Access, list[str]]:
    """(who may use what, what the user should know about it). On loopback every API is
    this machine's user's; off it, Triton's admin APIs need the admin key (made and kept in a
    file readable by the user alone). `api_key_file` requires a key for inference too."""
    admin_file = options.admin_key_file or (None if options.host in LOOPBACK else ADMIN_KEY_FILE)
    admin = read_or_make_key(admin_file) if admin_file else None
    api = read_or_make_key(options.api_key_file) if options.api_key_file else None
    notes = []
    if options.host not in LOOPBACK:
        notes.append(f"listening on {options.host}, not only this machine")
    if admin_file:
        notes.append(f"the admin APIs (model repository and configuration, shared memory, "
                     f"statistics, trace, logging) need the header {ADMIN_HEADER}: the key is "
                     f"in {Path(admin_file).expanduser()}")
    if api:
        notes.append(f"inference needs the header {API_HEADER}: the key is in "
                     f"{Path(options.api_key_file or '').expanduser()}")
    return Access(admin, api), notes


def exposure_notes(options: ServeOptions) -> list[str]:
    """What the user should know about where the server listens and who may use what."""
    return access_for(options)[1]


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
            access, _ = access_for(options)
            with TritonServer(repo, options.host, options.http_port, options.grpc_port,
                              options.metrics_port, log=log, access=access) as server:
                if on_ready:
                    on_ready(server, entries)
                while not stop.wait(0.2):
                    if not server.running:
                        raise VitedgeError(f"tritonserver stopped on its own: {server.last_error()}",
                                           "run with --log FILE to keep its whole log")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
