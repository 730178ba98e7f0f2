"""The one interface every backend's runner implements, in the spirit of Polygraphy's
`BaseRunner`: a loaded artifact with its manifest and I/O description that maps a batch of
model inputs to outputs, times itself, profiles its layers, reads its attention for
`explain`, and releases everything on `close`. The pipeline, bench, explain, eval, serve
and the CLI use only this; what differs between backends stays in their folders."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest

ATTENTION_OUTPUT = re.compile(r"attn\.(\d+)$")
"""The outputs of an `--attention-outputs` export: each block's attention probabilities."""


@dataclass(frozen=True)
class TensorInfo:
    """One input or output: name, shape (a str for a dynamic dimension), element type."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def attention_outputs(names: list[str]) -> list[str]:
    """The `attn.N` names among `names`, in block order."""
    found = sorted((int(m.group(1)), name) for name in names if (m := ATTENTION_OUTPUT.match(name)))
    return [name for _, name in found]


class Runner(ABC):
    """A loaded artifact. Subclasses set `path`, `manifest`, `inputs`, `outputs` in their
    constructor and implement `infer_all` and `_release`."""

    backend: ClassVar[str]
    """The backend's name: onnxruntime, tensorrt, tensorrt-rtx."""
    concurrent: ClassVar[bool] = False
    """Whether several threads may call `infer` at once."""

    path: Path
    manifest: Manifest
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    warnings: list[str]
    """What the user should know about this artifact on this machine, one line each."""
    max_batch: int | None = None
    """The largest batch one execution takes (a TensorRT engine's optimization profile);
    None: any. `infer` splits a larger batch itself; a server batching requests stops here."""
    _closed: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_name(self) -> str:
        """The model's main output: `logits`, or `features` for a model without a head."""
        return self.manifest.output_name

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @abstractmethod
    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a batch of model inputs (any batch size)."""

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The main output for a batch of model inputs."""
        return self.infer_all(x)[self.output_name]

    def infer_timed(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """The main output and the device stages' times in ms (host_to_device,
        device_to_host where the backend copies to a device; empty on the CPU)."""
        return self.infer(x), {}

    def layer_times(self, x: np.ndarray, runs: int = 10) -> dict[str, float]:
        """Mean milliseconds per layer over `runs` executions of `x`, slowest first."""
        raise VitedgeError(f"the {self.backend} backend cannot profile layers")

    def attention(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(main output, each block's attention probabilities (B, heads, T, T) float32).
        Here: the `attn.N` outputs of an `--attention-outputs` export; a backend that can
        read more of its graph overrides this."""
        taps = attention_outputs(self.output_names)
        if not taps:
            raise VitedgeError(
                f"{self.name} has no attention outputs (a {self.backend} engine keeps only the "
                "tensors it outputs)",
                "export with `vitedge export ... --attention-outputs` and build from that, or "
                "explain the ONNX model")
        out = self.infer_all(x)
        return out[self.output_name], [out[t].astype(np.float32, copy=False) for t in taps]

    def describe(self) -> dict[str, Any]:
        """What `vitedge inspect` and `--json` outputs say about the loaded runner."""
        return {"backend": self.backend, "path": str(self.path),
                "inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs], "warnings": self.warnings}

    # --- lifetime -------------------------------------------------------------------------

    @abstractmethod
    def _release(self) -> None:
        """Free what the runner holds (sessions, device memory, streams)."""

    def close(self) -> None:
        """Release everything; a second call does nothing."""
        if not self._closed:
            self._closed = True
            self._release()

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise VitedgeError(f"{self.name} is closed", "load it again with load_runner")

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
