"""The options of every stage, one dataclass each, and the only place their defaults are
written: the library uses them as they are, the CLI builds its flags from them (their
defaults and choices), and `--help` shows them. Kept free of heavy imports, so the CLI
starts without loading onnx or torch.

Every stage has one shape, `stage(input, output, options, report=None)`:
    export_onnx(checkpoint, out.onnx, ExportOptions)       vitedge.export
    calibrate(model.onnx, table.json, CalibrationOptions)   vitedge.quantize.calibrate
    quantize_model(model.onnx, out.onnx, QuantizeRequest)   vitedge.quantize.quantizer
    build(input, artifact, BuildOptions)                     vitedge.deploy
and reports through one `vitedge.report.Reporter` (step, progress, warning).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError

# --- choices ------------------------------------------------------------------------------

INPUT_KINDS = ("images", "patches", "frames", "pixels")
MIN_OPSET, MAX_OPSET = 17, 20
CALIBRATION_METHODS = ("entropy", "percentile", "minmax", "mse")
HISTOGRAM_BINS = 2048
SCHEMES = ("vit", "all")
QUANTIZE_PRECISIONS = ("int8", "fp16")
BUILD_PRECISIONS = ("fp32", "fp16", "int8")
BUILD_BACKENDS = ("auto", "tensorrt", "tensorrt-rtx", "onnxruntime")
EXPLAIN_METHODS = ("cls", "rollout")
HEAD_REDUCTIONS = ("mean", "max")


def default(cls: type, name: str) -> Any:
    """The default of one field of an options dataclass (what a CLI flag shows)."""
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)


def _choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise VitedgeError(f"unknown {what} '{value}'", f"use one of {', '.join(choices)}")


# --- export -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportOptions:
    arch: str | None = None
    """Architecture name (timm or torchvision) for checkpoints without a config file."""
    num_heads: int | None = None
    img_size: int | None = None
    """Input size; position embeddings are resampled to it."""
    labels: str | Path | None = None
    batch: int | None = None
    """None: a dynamic batch dimension."""
    opset: int = 17
    input_kind: str = "images"
    verify: bool = True
    attention_outputs: bool = False
    zero_shot: str | Path | None = None
    """A CLIP or SigLIP image tower becomes a classifier of these class names (a text file,
    one per line): their text embeddings are its head."""
    prompts: tuple[str, ...] = ("a photo of a {}.",)
    """Zero-shot prompts; several are averaged per class."""
    zero_shot_embeddings: str | Path | None = None
    """The classes' text embeddings (.npy, classes x embedding) instead of a text tower."""
    logit_scale: float | None = None
    """The zero-shot logit scale (default: the text tower's, or CLIP's 100)."""
    logit_bias: float | None = None
    """SigLIP's logit bias (default: the text tower's)."""

    def __post_init__(self) -> None:
        _choice(self.input_kind, INPUT_KINDS, "--input")
        if self.zero_shot is None and (self.zero_shot_embeddings is not None or
                                       self.logit_scale is not None or self.logit_bias is not None):
            raise VitedgeError("--zero-shot-embeddings, --logit-scale and --logit-bias go with "
                               "--zero-shot LABELS")
        if self.zero_shot is not None and self.labels is not None:
            raise VitedgeError("--zero-shot names the classes itself; drop --labels")
        if self.logit_scale is not None and not 0 < self.logit_scale < 1e6:
            raise VitedgeError("--logit-scale must be a positive number")
        if not self.prompts:
            raise VitedgeError("give at least one zero-shot --prompt")
        for prompt in self.prompts:
            if not isinstance(prompt, str) or prompt.count("{}") != 1:
                raise VitedgeError(f"the prompt '{prompt}' must hold '{{}}' once, where the "
                                   "class name goes", "e.g. --prompt 'a photo of a {}.'")
        if not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise VitedgeError(f"--opset {self.opset} is outside the supported "
                               f"{MIN_OPSET}..{MAX_OPSET} (TensorRT 10 parses up to 20)")
        if self.batch is not None and self.batch < 1:
            raise VitedgeError("--batch must be 'dynamic' or a positive number")

    def check(self) -> None:
        """Kept for callers of vitedge < 0.2: the checks now run on construction."""


# --- calibrate, quantize --------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationOptions:
    data: Any = None
    """Images to calibrate on: a folder, an image list, a video, an array file, or a chosen
    `vitedge.datasets.ImageSource`."""
    method: str = "percentile"
    percentile: float = 99.99
    num_images: int = 512
    batch: int = 8
    smooth_alpha: float = 0.5
    """Channel-equalisation strength (SmoothQuant); 0 turns it off."""
    seed: int = 0

    def __post_init__(self) -> None:
        _choice(self.method, CALIBRATION_METHODS, "calibration method")
        if not 0 < self.percentile <= 100:
            raise VitedgeError("--percentile must be in (0, 100]")
        if self.num_images < 1 or self.batch < 1:
            raise VitedgeError("--num-images and --batch must be positive")
        if not 0 <= self.smooth_alpha < 1:
            raise VitedgeError("--smooth must be in [0, 1) (0 turns equalisation off)")

    def key(self) -> dict[str, Any]:
        """What a calibration table's reuse depends on (besides model and data)."""
        return {"method": self.method, "percentile": self.percentile,
                "num_images": self.num_images, "smooth_alpha": self.smooth_alpha,
                "seed": self.seed, "bins": HISTOGRAM_BINS}


@dataclass(frozen=True)
class QuantizeOptions:
    """Where INT8 Q/DQ go (see vitedge.quantize.qdq)."""

    scheme: str = "vit"
    attention: bool = False
    exclude: tuple[str, ...] = ()
    """Layer-name patterns (fnmatch) left in float, e.g. `blocks.0.*` or `head`."""
    smooth: bool | None = None
    """Use the table's channel equalisation; None: yes for the `vit` scheme, no for the
    naive `all` baseline."""

    def __post_init__(self) -> None:
        _choice(self.scheme, SCHEMES, "scheme")

    @property
    def smoothing(self) -> bool:
        return self.scheme == "vit" if self.smooth is None else self.smooth


@dataclass(frozen=True)
class QuantizeRequest:
    """The quantize stage's options."""

    precision: str = "int8"
    calib: str | None = None
    data: str | None = None
    calibration: CalibrationOptions = CalibrationOptions()
    qdq: QuantizeOptions = QuantizeOptions()
    sensitivity: int = 0
    """Keep this many of the most sensitive layers in float (0: no analysis)."""
    min_fp32_agreement: float = 0.8
    """Least top-1 agreement with FP32 on the check images: below it quantization
    collapsed and nothing is written."""

    def __post_init__(self) -> None:
        _choice(self.precision, QUANTIZE_PRECISIONS, "precision")


# --- build ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyOptions:
    enabled: bool = True
    images: int = 128
    """Inputs of --data held out of calibration to verify on (at most a quarter of it)."""
    min_agreement: float = 0.99
    """Least top-1 agreement with the graph the artifact computes."""
    min_fp32_agreement: float = 0.8
    """Least top-1 agreement with the FP32 model (below: quantization collapsed)."""

    def __post_init__(self) -> None:
        if self.images < 1:
            raise VitedgeError("--verify-images must be at least 1")
        for name in ("min_agreement", "min_fp32_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise VitedgeError(f"--{name.replace('_', '-')} must be between 0 and 1")


@dataclass(frozen=True)
class BuildOptions:
    precision: str | None = None
    """None: the profile's default."""
    data: str | None = None
    """Images to calibrate on and to hold out for verification."""
    calib: str | None = None
    profile: str | None = None
    """A profile name or TOML path; None: the one doctor suggests for this machine."""
    backend: str = "auto"
    batch: str | None = None
    """MIN:OPT:MAX for the engine's optimization profile; None: the profile's."""
    timing_cache: str | None = None
    force: bool = False
    """Replace intermediates (MODEL.onnx, MODEL.PRECISION.onnx) that a build did not make."""
    calibration: CalibrationOptions = CalibrationOptions()
    qdq: QuantizeOptions = QuantizeOptions()
    verify: VerifyOptions = VerifyOptions()

    def __post_init__(self) -> None:
        _choice(self.backend, BUILD_BACKENDS, "backend")
        if self.precision is not None:
            _choice(self.precision, BUILD_PRECISIONS, "precision")


# --- run side -----------------------------------------------------------------------------

COLOR_ORDERS = ("bgr", "rgb")
DEVICES = ("cpu", "gpu")
MAX_THREADS = 1024


@dataclass(frozen=True)
class PipelineOptions:
    """`vitedge.open(path, **options)`: how the runtime pipeline runs an artifact."""

    device: str | None = None
    """"gpu": ONNX Runtime's CUDA / TensorRT providers where installed; None / "cpu": the
    CPU (an engine always runs on its GPU)."""
    color: str = "bgr"
    """Channel order of 3-channel array frames (OpenCV gives BGR)."""
    fast: bool = False
    """OpenCV resize instead of PIL's (not bit-exact with the reference libraries)."""
    topk: int = 5
    keep_logits: bool = False
    normalize_embeddings: bool = False
    """A headless model's `Prediction.embedding` L2-normalised (for cosine similarity)."""
    threads: int | None = None
    """ONNX Runtime intra-op threads; None: every core, or cores / streams."""
    batch: int = 1
    """Frames `stream()` runs together."""
    cuda_graph: bool = False
    """Replay a TensorRT engine's execution as a CUDA graph."""
    streams: int = 1
    """Frames in flight at once in `stream()` (ONNX Runtime)."""

    def __post_init__(self) -> None:
        if self.device is not None:
            _choice(self.device, DEVICES, "device")
        _choice(self.color, COLOR_ORDERS, "color order")
        for name in ("fast", "keep_logits", "normalize_embeddings", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise VitedgeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        for name, least in (("topk", 1), ("batch", 1), ("streams", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise VitedgeError(f"{name} must be a whole number of at least {least}, "
                                   f"not {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(
                self.threads, bool) or not 1 <= self.threads <= MAX_THREADS):
            raise VitedgeError(f"threads must be between 1 and {MAX_THREADS}, not {self.threads!r}")


def pipeline_options(options: PipelineOptions | None = None, **changes: Any) -> PipelineOptions:
    """`options` with keyword changes; an unknown keyword is a VitedgeError naming it."""
    known = {f.name for f in fields(PipelineOptions)}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise VitedgeError(f"unknown pipeline option '{unknown[0]}'",
                           f"options are {', '.join(sorted(known))}")
    from dataclasses import replace

    return replace(options or PipelineOptions(), **changes)

@dataclass(frozen=True)
class EvalOptions:
    data: str | Path = ""
    """A folder with one sub-folder of images per class, named after the labels."""
    reference: str | Path | None = None
    batch: int = 64
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.batch < 1 or (self.limit is not None and self.limit < 1):
            raise VitedgeError("--batch and --limit must be positive")


@dataclass(frozen=True)
class ExplainOptions:
    method: str = "cls"
    layer: int = -1
    """Block for `cls`: 0 is the first, -1 the last."""
    head: str | int = "mean"
    """`mean` or `max` over heads, or one head's index."""
    topk: int = 3
    fast: bool = False
    compare: str | Path | None = None
    """Another artifact drawn beside, with the maps' cosine similarity."""

    def __post_init__(self) -> None:
        _choice(self.method, EXPLAIN_METHODS, "method")
        parse_head(self.head)


def parse_head(text: str | int) -> str | int:
    """`mean`, `max`, or a head index."""
    if isinstance(text, int) or text in HEAD_REDUCTIONS:
        return text
    try:
        return int(text)
    except ValueError:
        raise VitedgeError(f"--head '{text}' is not mean, max or a head number") from None


@dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = (1,)
    warmup: int = 10
    iterations: int | None = 100
    duration: float | None = None
    """Seconds to run instead of a number of iterations."""
    source: str | None = None
    fast: bool = False
    layers: bool = False
    streams: tuple[int, ...] = (1,)
    """Each artifact is opened once per value: batches in flight at once."""

    def __post_init__(self) -> None:
        if any(b < 1 for b in self.batches):
            raise VitedgeError("--batch sizes must be positive")
        if any(s < 1 for s in self.streams):
            raise VitedgeError("--streams must be positive")


# --- serve --------------------------------------------------------------------------------

INSTANCE_KINDS = ("cpu", "gpu")
ONNX_BACKENDS = ("onnxruntime", "python")


@dataclass(frozen=True)
class ServeOptions:
    """`vitedge serve` / `export-triton`: how Triton serves each artifact."""

    host: str = "127.0.0.1"
    """Where the server listens: loopback unless told otherwise."""
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None
    """Largest batch dynamic batching forms; None: a TensorRT engine's profile max, else 8.
    More than an engine's profile allows is refused (Triton would not load it)."""
    max_delay_us: int = 1000
    """How long a request may wait for others to batch with (microseconds)."""
    instances: int = 1
    topk: int = 5
    instance_kind: str = "cpu"
    onnx_backend: str = "onnxruntime"
    """export-triton: serve an ONNX model with Triton's onnxruntime backend, or with the
    Python backend running vitedge (for servers without that backend)."""

    def __post_init__(self) -> None:
        for name in ("http_port", "grpc_port", "metrics_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise VitedgeError(f"--{name.replace('_', '-')} must be a port number (0: any free)")
        if not 1 <= (self.max_batch or 1) <= 4096 or not 1 <= self.instances <= 64:
            raise VitedgeError("--max-batch must be 1..4096 and --instances 1..64")
        if not 0 <= self.max_delay_us <= 10_000_000 or not 1 <= self.topk <= 1000:
            raise VitedgeError("--max-delay-us must be 0..10000000 and --topk 1..1000")
        _choice(self.instance_kind, INSTANCE_KINDS, "instance kind")
        _choice(self.onnx_backend, ONNX_BACKENDS, "ONNX backend")


# --- export-deepstream ----------------------------------------------------------------------

PROCESS_MODES = ("primary", "secondary")


@dataclass(frozen=True)
class DeepStreamOptions:
    """How nvinfer runs the classifier."""

    batch_size: int = 1
    process_mode: str = "primary"
    """primary: classify whole frames; secondary: the objects a detector found."""
    classifier_threshold: float = 0.5
    """Least probability for nvinfer to attach the label."""
    gie_id: int = 1
    """gie-unique-id of this classifier; a secondary one is given its detector's as
    operate_on_gie_id."""
    operate_on_gie_id: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or not 1 <= self.batch_size <= 1024:
            raise VitedgeError("--batch-size must be 1..1024")
        _choice(self.process_mode, PROCESS_MODES, "process mode")
        if not 0.0 <= self.classifier_threshold <= 1.0:
            raise VitedgeError("--threshold is a probability: 0..1")
        if self.gie_id < 1 or (self.operate_on_gie_id is not None and self.operate_on_gie_id < 1):
            raise VitedgeError("gie ids are positive numbers")
