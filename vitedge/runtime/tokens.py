"""Token reuse at run time: a streaming graph (`vitedge.export.streaming`, k tokens per
gate) and its full pass (the same graph at k = every token), exported or built (`vitedge
build`: an ONNX Runtime model, an OpenVINO IR, an engine), run by the backend that runs
each file (`vitedge.backends.load_runner`), one state per camera. A camera's first frame, a
frame of another shape and every `refresh`-th frame go through the full pass (which bounds
the drift of the cached tokens); the others recompute only k tokens per gate. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends import Runner, load_runner
from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest

TOKEN_REUSE_KEY = "token_reuse"
"""The manifest's `source` entry that makes a graph a streaming graph: tokens per gate (`k`),
the token count (`tokens`) and, where k is fewer, the full pass's file name (`full`)."""
STATE_INPUT = "state."
STATE_OUTPUT = "new_state."
"""A state tensor's input name and the name of its next value among the outputs
(`vitedge.export.streaming`: `state.3.qkv` -> `new_state.3.qkv`)."""


@dataclass
class _Camera:
    state: dict[str, np.ndarray]
    shape: tuple[int, ...]
    since_full: int = 0


def token_reuse_entry(manifest: Manifest | None, path: str | Path) -> dict[str, Any]:
    """The manifest's `source.token_reuse` (k, tokens and, with fewer tokens, the file name
    of the full pass beside it), or one line saying the file is no streaming graph."""
    entry = manifest.source.get(TOKEN_REUSE_KEY) if manifest is not None else None
    if not isinstance(entry, dict):
        raise VitedgeError(f"{path} is not a streaming graph (no token_reuse in its manifest)",
                           "export one with `vitedge export CHECKPOINT --token-reuse K`")
    return {**entry, "k": int(entry["k"]), "tokens": int(entry["tokens"])}


def with_zero_state(inputs: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`feed` for a graph of these `inputs` (ONNX Runtime's or a runner's: name and shape),
    each input it lacks given as zeros (a dynamic dimension taken as 1): the state a
    camera's first full pass reads."""
    return {i.name: feed[i.name] if i.name in feed else np.zeros(
        [d if isinstance(d, int) else 1 for d in i.shape], np.float32) for i in inputs}


def full_pass_beside(streaming: str | Path, entry: dict[str, Any]) -> Path:
    """The full pass a streaming graph's manifest names beside it (itself where it
    recomputes every token)."""
    full = Path(streaming)
    if entry["k"] < entry["tokens"]:
        name = entry.get("full")
        full = full.with_name(str(name)) if name else full
        if not name or not full.is_file():
            raise VitedgeError(f"the full pass of {streaming} is missing "
                               f"({full.name if name else 'not named in its manifest'})",
                               "keep the .full file that export or build wrote beside it")
    return full


def _state_names(runner: Runner) -> list[str]:
    names = [i.name for i in runner.inputs[1:]]
    outputs = set(runner.output_names)
    if not names or any(not n.startswith(STATE_INPUT) or
                        STATE_OUTPUT + n.removeprefix(STATE_INPUT) not in outputs for n in names):
        raise VitedgeError(f"{runner.name} does not take and return a state as a streaming "
                           "graph does", "export it again with `vitedge export --token-reuse K`")
    return names


class TokenReuse:
    """`run(x, camera)`: the main output for one camera's prepared frame x (1, C, H, W) and
    the share of tokens recomputed for it (1.0 on a full pass). `close()` (or `with`)
    releases both runners."""

    def __init__(self, streaming: str | Path, full: str | Path, refresh: int = 30,
                 threads: int | None = None, device: str | None = None):
        if refresh < 1:
            raise VitedgeError("refresh must be 1 or more frames")
        self._start(load_runner(streaming, threads, device), streaming, full, refresh,
                    threads, device)

    @classmethod
    def open(cls, streaming: str | Path, refresh: int = 30, threads: int | None = None,
             device: str | None = None) -> TokenReuse:
        """The streaming graph or artifact at `streaming` with the full pass its manifest
        names beside it (itself where it recomputes every token). `threads` and `device`:
        as `vitedge.backends.load_runner` takes them."""
        if refresh < 1:
            raise VitedgeError("refresh must be 1 or more frames")
        runner = load_runner(streaming, threads, device)
        try:
            full = full_pass_beside(streaming, token_reuse_entry(runner.manifest, streaming))
        except BaseException:
            runner.close()
            raise
        made = cls.__new__(cls)
        made._start(runner, streaming, full, refresh, threads, device)
        return made

    @classmethod
    def adopt(cls, stream: Runner, refresh: int = 30, threads: int | None = None,
              device: str | None = None) -> TokenReuse:
        """Token reuse over a streaming artifact already loaded (a pipeline's own runner,
        which its owner keeps and closes): only the full pass beside it is loaded."""
        if refresh < 1:
            raise VitedgeError("refresh must be 1 or more frames")
        full = full_pass_beside(stream.path, token_reuse_entry(stream.manifest, stream.path))
        made = cls.__new__(cls)
        made._borrowed = True
        made._start(stream, stream.path, full, refresh, threads, device)
        return made

    _borrowed = False
    """Whether the streaming runner belongs to someone else (`adopt`): close leaves it open."""

    def _start(self, stream: Runner, streaming: str | Path, full: str | Path, refresh: int,
               threads: int | None, device: str | None) -> None:
        """Adopt the loaded streaming runner (closed again on failure) and load the full pass."""
        self.refresh = refresh
        self.stream = stream
        try:
            self.manifest = self.stream.manifest
            self.reuse = token_reuse_entry(self.manifest, streaming)
            self.full = load_runner(full, threads, device)
        except BaseException:
            if not self._borrowed:
                self.stream.close()
            raise
        try:
            full_reuse = token_reuse_entry(self.full.manifest, full)
            if full_reuse["k"] != full_reuse["tokens"] or \
                    full_reuse["tokens"] != self.reuse["tokens"]:
                raise VitedgeError(f"{full} is not the full pass of {streaming}",
                                   "export the same checkpoint with k = every token")
            self.states = _state_names(self.stream)
            if _state_names(self.full) != self.states:
                raise VitedgeError(f"{full} is not the full pass of {streaming} (another state)")
        except BaseException:
            self.close()
            raise
        self.input_name = self.stream.input_name
        self.output_name = self.manifest.output_name
        self.cameras: dict[Any, _Camera] = {}
        self.frames = self.full_passes = 0

    def run(self, x: np.ndarray, camera: Any = None) -> tuple[np.ndarray, float]:
        x = np.ascontiguousarray(x, np.float32)
        cam = self.cameras.get(camera)
        full = cam is None or cam.shape != x.shape or cam.since_full + 1 >= self.refresh
        runner = self.full if full else self.stream
        if cam is None or cam.shape != x.shape:
            state = with_zero_state(self.full.inputs[1:], {})
        else:
            state = cam.state
        out = runner.infer_named({self.input_name: x, **state})
        self.cameras[camera] = _Camera(
            {n: out[STATE_OUTPUT + n.removeprefix(STATE_INPUT)] for n in self.states}, x.shape,
            0 if full else (cam.since_full + 1 if cam else 0))
        self.frames += 1
        self.full_passes += full
        return out[self.output_name], 1.0 if full else self.reuse["k"] / self.reuse["tokens"]

    def reset(self, camera: Any = None) -> None:
        """Forget a camera: its next frame is a full pass (a reconnect)."""
        self.cameras.pop(camera, None)

    def close(self) -> None:
        for runner in (None if self._borrowed else getattr(self, "stream", None),
                       getattr(self, "full", None)):
            if runner is not None:
                runner.close()

    def __enter__(self) -> TokenReuse:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
