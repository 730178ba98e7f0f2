"""Token reuse at run time: a streaming graph (`vitedge.export.streaming`, k tokens per
gate) and its full pass (the same graph at k = every token), run with ONNX Runtime, one
state per camera. A camera's first frame, a frame of another shape and every `refresh`-th
frame go through the full pass (which bounds the drift of the cached tokens); the others
recompute only k tokens per gate. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.manifest import manifest_from_file
from vitedge.sessions import ort_session


@dataclass
class _Camera:
    state: list[np.ndarray]
    shape: tuple[int, ...]
    since_full: int = 0


def _token_reuse(path: str | Path) -> tuple[Any, dict[str, Any]]:
    manifest = manifest_from_file(path)
    entry = manifest.source.get("token_reuse") if manifest is not None else None
    if not isinstance(entry, dict):
        raise VitedgeError(f"{path} is not a streaming graph (no token_reuse in its manifest)",
                           "make one with vitedge.export.streaming.export_streaming")
    return manifest, {**entry, "k": int(entry["k"]), "tokens": int(entry["tokens"])}


class TokenReuse:
    """`run(x, camera)`: the main output for one camera's prepared frame x (1, C, H, W) and
    the share of tokens recomputed for it (1.0 on a full pass)."""

    def __init__(self, streaming: str | Path, full: str | Path, refresh: int = 30,
                 threads: int | None = None):
        self.manifest, self.reuse = _token_reuse(streaming)
        _, full_reuse = _token_reuse(full)
        if full_reuse["k"] != full_reuse["tokens"] or full_reuse["tokens"] != self.reuse["tokens"]:
            raise VitedgeError(f"{full} is not the full pass of {streaming}",
                               "export the same checkpoint with k = None")
        if refresh < 1:
            raise VitedgeError("refresh must be 1 or more frames")
        self.refresh = refresh
        self.stream = ort_session(str(streaming), threads)
        self.full = ort_session(str(full), threads)
        self.inputs = [i.name for i in self.stream.get_inputs()]
        self.cameras: dict[Any, _Camera] = {}
        self.frames = self.full_passes = 0

    @classmethod
    def open(cls, streaming: str | Path, refresh: int = 30, threads: int | None = None
             ) -> TokenReuse:
        """The streaming graph at `streaming` with the full pass its manifest names beside
        it (itself where it recomputes every token)."""
        _, entry = _token_reuse(streaming)
        full = Path(streaming)
        if entry["k"] < entry["tokens"]:
            name = entry.get("full")
            full = full.with_name(str(name)) if name else full
            if not name or not full.is_file():
                raise VitedgeError(f"the full pass of {streaming} is missing "
                                   f"({full.name if name else 'not named in its manifest'})",
                                   "keep the .full file that export wrote beside it")
        return cls(streaming, full, refresh, threads)

    def run(self, x: np.ndarray, camera: Any = None) -> tuple[np.ndarray, float]:
        x = np.ascontiguousarray(x, np.float32)
        cam = self.cameras.get(camera)
        full = cam is None or cam.shape != x.shape or cam.since_full + 1 >= self.refresh
        session = self.full if full else self.stream
        if cam is None or cam.shape != x.shape:
            state = [np.zeros([d if isinstance(d, int) else 1 for d in i.shape], np.float32)
                     for i in self.full.get_inputs()[1:]]
        else:
            state = cam.state
        out = session.run(None, dict(zip(self.inputs, [x, *state], strict=True)))
        self.cameras[camera] = _Camera(out[1:], x.shape,
                                       0 if full else (cam.since_full + 1 if cam else 0))
        self.frames += 1
        self.full_passes += full
        return out[0], 1.0 if full else self.reuse["k"] / self.reuse["tokens"]

    def reset(self, camera: Any = None) -> None:
        """Forget a camera: its next frame is a full pass (a reconnect)."""
        self.cameras.pop(camera, None)
