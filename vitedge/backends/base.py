"""The one interface every backend's runner implements, in the spirit of Polygraphy's
`BaseRunner`: a loaded artifact with its manifest and I/O description that maps a batch of
model inputs to outputs, times itself, profiles its layers, reads its attention for
`explain`, and releases everything on `close`. The pipeline, bench, explain, eval, serve
and the CLI use only this; what differs between backends stays in their folders.

And the `Backend` contract: everything else vitedge asks of a backend (its build, whether it
can build or run here, its device-profile section, `doctor`, `inspect`, Triton), one object
per backend, registered once in `vitedge.backends`."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest
from vitedge.precisions import precision_words

if TYPE_CHECKING:
    from vitedge.profiles import BatchRange, Profile

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


def median_ms(run: Callable[[], object], seconds: float = 0.0, least: int = 5,
              warmup: int = 3) -> float:
    """Median milliseconds of one `run()`, after `warmup` untimed calls: timed at least
    `least` times, and for at least `seconds`."""
    import statistics
    import time

    for _ in range(warmup):
        run()
    laps: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(laps) < least:
        t = time.perf_counter()
        run()
        laps.append((time.perf_counter() - t) * 1e3)
    return round(statistics.median(laps), 3)


def _numpy_dtype(name: str) -> np.dtype[Any]:
    """An element type as the backends name it (ONNX Runtime's `float`, TensorRT's `HALF`,
    numpy's `float32`) as numpy's."""
    name = name.lower()
    return np.dtype({"float": "float32", "half": "float16", "double": "float64"}.get(name, name))


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
    float_parts: str | None = None
    """What the model's float arithmetic runs in on this machine (fp32, bf16, fp16), where
    the backend decides it rather than the graph (OpenVINO's precision hint); None: as the
    graph's types say."""
    max_batch: int | None = None
    """The largest batch one execution takes (a TensorRT engine's optimization profile);
    None: any. `infer` splits a larger batch itself; a server batching requests stops here."""
    _closed: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def precision_label(self) -> str:
        """The precision, and what its float parts run in where that is not the precision
        itself: `fp32`, `int8 (float parts bf16)`."""
        return precision_words(self.manifest.precision, self.float_parts)

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

    def zero_input(self) -> np.ndarray:
        """A batch-1 input of zeros (a dynamic dimension taken as 1), for timing."""
        spec = self.inputs[0]
        shape = [1 if not isinstance(d, int) or d < 1 else d for d in spec.shape]
        return np.zeros(shape, np.uint8 if spec.dtype == "uint8" else np.float32)

    @abstractmethod
    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output for a batch of model inputs (any batch size)."""

    def infer(self, x: np.ndarray) -> np.ndarray:
        """The main output for a batch of model inputs."""
        return self.infer_all(x)[self.output_name]

    def infer_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output, by name, for a graph of several inputs fed by name (a streaming
        graph's frame and state: `vitedge.runtime.tokens`), as given: no batch split."""
        raise VitedgeError(f"the {self.backend} backend cannot run a graph of several inputs "
                           f"({self.name})", "build it with --backend onnxruntime or openvino")

    def _feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`feeds` checked against the inputs by name, as contiguous arrays of their types."""
        wanted = {i.name: i.dtype for i in self.inputs}
        if set(feeds) != set(wanted):
            missing, extra = sorted(set(wanted) - set(feeds)), sorted(set(feeds) - set(wanted))
            raise VitedgeError(f"{self.name} takes the inputs {', '.join(wanted)}"
                               + (f"; missing {', '.join(missing)}" if missing else "")
                               + (f"; not its own: {', '.join(extra)}" if extra else ""))
        return {k: np.ascontiguousarray(v, _numpy_dtype(wanted[k])) for k, v in feeds.items()}

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
                "float_parts": self.float_parts,
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


# --- the build side and everything else vitedge asks of a backend --------------------------

def check_choice(setting: str, value: Any, allowed: tuple[str, ...]) -> None:
    """A profile setting's value (or each of a list's) among `allowed`, or one line naming
    them: `check_choice("openvino.precision_hint", "bf8", PRECISION_HINTS)`."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or any(v not in allowed for v in values):
        shown = ", ".join(map(str, values)) if values else "nothing"
        raise VitedgeError(f"{setting} is {shown}; it must be "
                           f"{'some' if isinstance(value, (list, tuple)) else 'one'} of "
                           f"{', '.join(allowed)}")


@dataclass(frozen=True)
class Check:
    """One line of `vitedge doctor`: a component, whether it is usable, what was found, and
    what to do where it is not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class BuildRequest:
    """What `vitedge build` hands a backend: the ONNX graph to build from (FP32, FP16 or Q/DQ
    INT8, with its manifest) and how (the device profile, the batch range, a timing cache)."""

    model: Path
    manifest: Manifest
    profile: Profile
    """The device profile; the backend reads its own table (`Profile.section`)."""
    batch: BatchRange
    """The batch range an engine's optimization profile covers."""
    timing_cache: Path | None = None
    report: Any = None
    """A `vitedge.report.Reporter` for steps, progress and warnings."""


@dataclass
class BuiltArtifact:
    """What a backend's build made at `path` (a temporary path until the build succeeds)."""

    path: Path
    graph: Any
    """The ONNX graph the artifact computes (an onnx.ModelProto, or its bytes): what the
    build's verification compares it with."""
    graph_name: str
    """That graph, in words (the build summary says what was compared)."""
    details: dict[str, Any] = field(default_factory=dict)
    """Entries for the build result's `details`, as the backend names them."""
    notes: list[str] = field(default_factory=list)
    portable_graph: Any = None
    """Where the artifact computes a re-encoded graph (ONNX Runtime's 7-bit INT8 weights):
    the portable Q/DQ graph a GPU backend is given, compared too (reported, not judged)."""
    cpu: dict[str, Any] | None = None
    """The CPU's INT8 kernel class where that decides what the artifact computes."""
    state: Any = None
    """The backend's own (its amended model, its engine description)."""


@dataclass(frozen=True)
class TritonModel:
    """How Triton's own backend for this artifact serves it (`vitedge export-triton`)."""

    platform: str
    """Triton's platform: tensorrt_plan, onnxruntime_onnx."""
    file: str
    """The model file's name in the version folder: model.plan, model.onnx."""
    payload: Path | bytes
    """The artifact itself, or the bytes to write instead."""
    manifest: Manifest
    inputs: list[TensorInfo]
    """With the batch dimension first (-1 where it is dynamic)."""
    outputs: list[TensorInfo]
    batch: str | None = None
    """An engine's optimization-profile batch range, "MIN:OPT:MAX"; None: any batch."""
    warmup: bool = True
    notes: list[str] = field(default_factory=list)


class Backend(ABC):
    """A backend as the rest of vitedge sees it: its name, the artifact it makes, whether it
    can build here, its build, its runner, its device-profile section, its `doctor` checks
    and `inspect` rows, and how Triton serves what it makes. One object per backend, in its
    own folder, listed once in `vitedge.backends.BACKENDS`; `vitedge build`, `inspect`,
    `bench`, `serve`, `profiles` and `doctor` take their choices from that registry."""

    name: ClassVar[str]
    """`--backend NAME`, and what an artifact records as its backend."""
    product: ClassVar[str]
    """The library, as people call it: ONNX Runtime, TensorRT, TensorRT for RTX."""
    suffix: ClassVar[str]
    """The artifact's file suffix: `.ort.onnx`, `.engine`."""
    build_step: ClassVar[str]
    """The build summary's name for the backend's step."""
    runner: ClassVar[str]
    """Its Runner class, "module:Class", imported on first use."""
    onnx_artifact: ClassVar[bool] = False
    """The artifact is an ONNX model carrying its manifest (else a file with a description
    beside it)."""
    settings: ClassVar[tuple[str, type] | None] = None
    """Its device-profile section: (TOML table name, the dataclass it is read into)."""
    default_profile: ClassVar[str] = "cpu"
    """The device profile a build for this backend uses when none is given."""
    runs_on_cpu: ClassVar[bool] = False
    """Its artifacts run on this machine's CPU: where several such backends can build here,
    `--backend auto` for the CPU builds each and keeps the fastest (measured)."""
    computes_from_fp32: ClassVar[tuple[str, ...]] = ("fp32",)
    """The precisions it computes from the FP32 graph as it is (no quantized graph between):
    fp32 everywhere; bf16 where the backend sets its arithmetic itself (OpenVINO's CPU)."""

    # --- here, on this machine --------------------------------------------------------

    def unavailable(self) -> str | None:
        """None when this backend can build here; else why not, in a few words."""
        return None

    def require(self) -> None:
        """Fail before any work, in one line saying what is missing, where it cannot build."""
        return None

    def device(self) -> str:
        """What the artifact would run on, in words, for the build summary."""
        return "CPU"

    def cannot_run_here(self) -> str | None:
        """None when an artifact of this backend can run on this machine; else why not."""
        return None

    def version(self) -> str | None:
        """The installed library's version, or None."""
        return None

    def machine_facts(self) -> dict[str, Any]:
        """What about this machine decides how this backend runs (for `bench`'s record)."""
        return {}

    def doctor(self) -> list[Check]:
        """What `vitedge doctor` says about this backend on this machine."""
        reason = self.unavailable()
        return [Check(self.name, reason is None, self.version() or reason or "installed")]

    # --- precisions (vitedge.backends.precisions) -----------------------------------------

    def precision_column(self, profile: Profile) -> str:
        """Which column of the precision table applies to a build with `profile`."""
        return "onnxruntime"

    def targets(self, profile: Profile) -> tuple[str, ...]:
        """The targets (compute capabilities, or "cpu") a build with `profile` runs on."""
        return ("cpu",)

    def nvfp4_activations(self, profile: Profile) -> str:
        """NVFP4's activation form this backend builds: "nvfp4" (TensorRT's dynamic block
        quantizer) or "fp8" (W4A8) where its TensorRT lacks the quantizer."""
        return "fp8"

    # --- artifacts -----------------------------------------------------------------------

    @abstractmethod
    def claims(self, path: Path) -> bool:
        """Whether the artifact at `path` is this backend's to run (from what the file is)."""

    def load(self, path: str | Path, threads: int | None = None, device: str | None = None,
             cuda_graph: bool = False) -> Runner:
        """The artifact at `path` behind the runner interface."""
        import importlib

        module, _, cls = self.runner.partition(":")
        runner: Runner = getattr(importlib.import_module(module), cls)(path)
        return runner

    def describe(self, path: Path) -> dict[str, Any]:
        """`vitedge inspect --json` of an artifact that is not an ONNX model."""
        raise VitedgeError(f"{path.name}: the {self.name} backend cannot describe its artifact")

    def artifact_size(self, path: Path) -> int:
        """Bytes of the artifact and what lies beside it as part of it."""
        return path.stat().st_size

    def inspect_rows(self, description: dict[str, Any]) -> list[tuple[str, str]]:
        """`vitedge inspect`'s rows for what the build recorded (`source` of an ONNX
        artifact's manifest, or `describe`'s answer)."""
        return []

    def parser_available(self) -> bool:
        """Whether this backend has its own ONNX parser installed here (`parser_problems`)."""
        return False

    def parser_problems(self, model: Any) -> list[str] | None:
        """What this backend's own ONNX parser rejects in `model` (a ModelProto or its
        bytes), where the backend has a parser and it is installed; None otherwise."""
        return None

    def triton_model(self, artifact: Path) -> TritonModel:
        """How Triton's own backend serves this artifact (export-triton)."""
        raise VitedgeError(f"{artifact.name} is a {self.name} artifact; Triton has no backend "
                           "that runs it", "export the ONNX model it was built from instead")

    # --- build ---------------------------------------------------------------------------

    def chosen(self, profile: Profile) -> str:
        """Why `--backend auto` picked this backend for `profile`, in words."""
        return f"profile {profile.name} builds for {self.product}"

    @abstractmethod
    def build(self, request: BuildRequest, path: Path) -> BuiltArtifact:
        """Build the artifact at `path` from `request.model`."""

    def load_built(self, built: BuiltArtifact) -> Runner:
        """The artifact a build just made, loaded as the build's verification runs it."""
        return self.load(built.path)

    def check_int8(self, reference: Any, quantized: Any, x: Any, in_float: Any) -> Any:
        """What this backend's integer kernels on this machine make of an INT8 Q/DQ graph
        (quantize's check), where that can differ from the graph computed in float; None
        where the backend has nothing to add."""
        return None

    def record(self, built: BuiltArtifact, verification: dict[str, Any]) -> None:
        """Write the build's verification (or why it was skipped) into the artifact."""
        return None

    def finish(self, built: BuiltArtifact, final: Path) -> None:
        """Put the verified artifact (and what lies beside it) in place at `final`: the
        artifact's own file last, in one rename."""
        from vitedge.fileio import publish

        publish(built.path, final)

    def discard(self, path: Path) -> None:
        """A failed build: remove what lies beside the temporary artifact."""
        return None

    def disagreement(self, verification: Any, built: BuiltArtifact) -> str:
        """The likely cause when the artifact does not compute the graph it came from."""
        return (f"{self.product} computes something else than the graph it was built from "
                "(a kernel's precision or a fusion)")

    # --- device profiles -------------------------------------------------------------------

    def profile_rows(self, profile: Profile) -> list[tuple[str, str]]:
        """`vitedge profiles NAME`'s rows for a profile that builds for this backend."""
        if self.settings is None:
            return []
        name, kind = self.settings
        section: Any = profile.section(name, kind)
        return [(name, ", ".join(f"{k} {v}" for k, v in asdict(section).items()))]
