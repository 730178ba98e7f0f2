"""The options of every stage, one dataclass each, and the only place their defaults, bounds
and help are written: the library uses them as they are, the CLI generates its flags from
each field's `Flag` (name, help, bounds, default: `vitedge.cli.flags`), and the same bounds
are checked when an options object is made, so a new option is one field. Kept free of
heavy imports, so the CLI starts without loading onnx or torch.

Every stage has one shape, `stage(input, output, options, report=None)`:
    export_onnx(checkpoint, out.onnx, ExportOptions)       vitedge.export
    calibrate(model.onnx, table.json, CalibrationOptions)   vitedge.quantize.calibrate
    quantize_model(model.onnx, out.onnx, QuantizeRequest)   vitedge.quantize.quantizer
    build(input, artifact, BuildOptions)                     vitedge.deploy
and reports through one `vitedge.report.Reporter` (step, progress, warning).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.machine import MAX_THREADS
from vitedge.manifest import INPUTS
from vitedge.precisions import AUTO, BUILD, FP8, FP8_FAMILY, NVFP4, QUANTIZE

# --- choices ------------------------------------------------------------------------------

MIN_OPSET, MAX_OPSET = 17, 20
CALIBRATION_METHODS = ("entropy", "percentile", "minmax", "mse")
HISTOGRAM_BINS = 2048
SCHEMES = ("vit", "all")
FP4_ACTIVATIONS = (AUTO, NVFP4, FP8)
"""NVFP4's activations: auto (the target's TensorRT decides), dynamic NVFP4 (W4A4), FP8 (W4A8)."""
EXPLAIN_METHODS = ("cls", "rollout")
HEAD_REDUCTIONS = ("mean", "max")
COLOR_ORDERS = ("bgr", "rgb")
DEVICES = ("cpu", "gpu")
INSTANCE_KINDS = ("cpu", "gpu")
TRITON_ONNX_BACKENDS = ("onnxruntime", "python")
"""How export-triton serves an ONNX model: with Triton's onnxruntime backend, or its Python
one (Triton's names, not vitedge's backends)."""
PROCESS_MODES = ("primary", "secondary")


def build_backends() -> tuple[str, ...]:
    """What `--backend` takes: `auto` and every registered backend."""
    from vitedge.backends import names

    return ("auto", *names())


# --- how a field appears on the command line ------------------------------------------------

@dataclass(frozen=True)
class Flag:
    """A field's command-line flag and the bounds its value keeps (checked both by the CLI's
    parser and when the options object is made)."""

    help: str = ""
    name: str = ""
    """The flag, e.g. `--num-images`; default: the field's name with dashes."""
    least: float | None = None
    most: float | None = None
    above: bool = False
    """`least` itself is excluded (a duration must be more than 0)."""
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    metavar: str | None = None
    path: str | None = None
    """file, folder or any: the value names a path."""
    negate: str = ""
    """A flag that turns a True-by-default field off, e.g. `--no-verify`."""
    multiple: bool = False
    """Repeatable; the field is a tuple of the values (empty: the field's default)."""
    parse: Callable[[str], Any] | None = None
    """Turns the flag's text into the field's value (raising ValueError with the usage
    error to print)."""
    shown: str | None = None
    """What `--help` shows as the default, where the value is not the field's default."""
    kind: type | None = None
    """The value's type where the default does not tell it (a None default)."""

    def choice_list(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


def option(default: Any = None, help: str = "", **flag: Any) -> Any:  # noqa: A002
    """A dataclass field with its command-line flag (`Flag`)."""
    return field(default=default, metadata={"flag": Flag(help=help, **flag)})


def flag_of(cls: type, name: str) -> Flag:
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("flag") or Flag()
    raise KeyError(name)


def flag_name(cls: type, name: str) -> str:
    """The field's command-line flag, e.g. `--num-images`."""
    return flag_of(cls, name).name or "--" + name.replace("_", "-")


def default(cls: type, name: str) -> Any:
    """The default of one field of an options dataclass (what a CLI flag shows)."""
    for f in fields(cls):
        if f.name == name:
            return f.default
    raise KeyError(name)


def check_fields(options: Any) -> None:
    """Every field with a `Flag` checked against its choices and bounds: one VitedgeError
    naming the field (and its flag) for the first value out of them."""
    for f in fields(options):
        spec = f.metadata.get("flag")
        if spec is None:
            continue
        value = getattr(options, f.name)
        what = f"{f.name} ({spec.name or '--' + f.name.replace('_', '-')})"
        choices = spec.choice_list()
        if choices is not None and value is not None and not spec.multiple:
            _choice(value, choices, f.name.replace("_", " "))
        if spec.least is None and spec.most is None or value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            whole = spec.kind is int or isinstance(default(type(options), f.name), int)
            if isinstance(v, bool) or not isinstance(v, int if whole else (int, float)):
                raise VitedgeError(f"{what} must be a {'whole ' if whole else ''}number, "
                                   f"not {v!r}")
            low_ok = spec.least is None or (v > spec.least if spec.above else v >= spec.least)
            if not low_ok or (spec.most is not None and v > spec.most):
                raise VitedgeError(f"{what} must be {_bounds(spec)}, not {v!r}")


def _bounds(spec: Flag) -> str:
    if spec.least is not None and spec.most is not None:
        return f"{spec.least:g}..{spec.most:g}"
    if spec.least is not None:
        return f"more than {spec.least:g}" if spec.above else f"at least {spec.least:g}"
    return f"at most {spec.most:g}"


def _choice(value: Any, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise VitedgeError(f"unknown {what} '{value}'", f"use one of {', '.join(choices)}")


MIN_FP32_AGREEMENT = 0.8
"""Least top-1 agreement with the FP32 model: below it quantization collapsed."""
MAX_WAIT_MS = 20.0
"""How long a camera batch holding a frame waits for more by default (DeepStream's samples
use 33-40 ms at 25-30 fps; 20 ms keeps a 15 fps camera's result within two frame intervals)."""


# --- export -------------------------------------------------------------------------------

def _word_or_count(text: str, word: str, problem: str) -> str | int:
    """`word` as given, or a positive count; else ValueError(`problem`)."""
    if text == word:
        return text
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ValueError(problem)


def parse_batch(text: str) -> int | None:
    """`--batch dynamic` or a fixed batch size."""
    batch = _word_or_count(text, "dynamic", "use 'dynamic' or a positive number")
    return None if batch == "dynamic" else int(batch)


def parse_merge(text: str) -> int | tuple[int, ...] | str:
    """`--merge 8` (r in every block), `--merge 8,8,4,...` (one per block) or `auto`."""
    if text == "auto":
        return text
    parts = text.split(",")
    if all(p.strip().isdigit() for p in parts):
        counts = tuple(int(p) for p in parts)
        return counts[0] if len(counts) == 1 else counts
    raise ValueError("use a token count (8), one count per block (8,8,4,...) or 'auto'")


def parse_token_reuse(text: str) -> int | str:
    """`--token-reuse 50` (tokens recomputed per gate) or `auto`."""
    return _word_or_count(text, "auto", "use a positive token count (50) or 'auto'")


@dataclass(frozen=True)
class ExportOptions:
    arch: str | None = option(help="Architecture name (timm or torchvision, e.g. "
                              "vit_small_patch16_224) for checkpoints without a config file.",
                              kind=str)
    num_heads: int | None = option(help="Attention heads, when neither a config nor --arch "
                                   "gives them.", least=1, kind=int)
    img_size: int | None = option(help="Input size; position embeddings are resampled "
                                  "(bicubic) to it.", least=1, kind=int)
    labels: str | Path | None = option(help="Class names: a text file, one per line, or JSON.",
                                       path="file")
    batch: int | None = option(help="The exported model's batch dimension: 'dynamic' or a fixed "
                               "size.", parse=parse_batch,
                               shown="dynamic")
    """None: a dynamic batch dimension."""
    opset: int = option(17, "ONNX opset (17-20).")
    input_kind: str = option(
        "images", "Model input: images (B,C,H,W) float, patch vectors (B,N,C*P*P) float, "
        "frames (B,H,W,C) uint8, resized and cropped, which the graph normalises and "
        "patchifies itself, or pixels (B,C,H,W) float 0..255, which the graph normalises "
        "(DeepStream's nvinfer feeds these).", name="--input", choices=INPUTS)
    verify: bool = option(True, "Skip the ONNX Runtime vs PyTorch check.", negate="--no-verify")
    attention_outputs: bool = option(False, "Add each block's attention probabilities as "
                                     "outputs attn.N.")
    external_data: bool = option(False, "Keep the weights in a data file beside the model "
                                 "(always, for a model over 2 GB).")
    head: bool = option(True, "Leave the classification head out: the model outputs its "
                        "features (the embedding `vitedge embed` collects).", negate="--no-head")
    """False: a classifier checkpoint exported without its head (it outputs its features)."""
    zero_shot: str | Path | None = option(
        help="CLIP / SigLIP: make the image tower a classifier of these class names (a text "
        "file, one per line), its head the text embeddings of the prompts, computed once here "
        "with the checkpoint's text tower (transformers).", path="file", metavar="LABELS")
    """A CLIP or SigLIP image tower becomes a classifier of these class names (a text file,
    one per line): their text embeddings are its head."""
    prompts: tuple[str, ...] = option(
        ("a photo of a {}.",), "Zero-shot prompt with {} for the class name; repeat to average "
        "several. [default: 'a photo of a {}.']", name="--prompt", multiple=True,
        metavar="TEMPLATE")
    """Zero-shot prompts; several are averaged per class."""
    zero_shot_embeddings: str | Path | None = option(
        help="The classes' text embeddings (classes x size) instead of a text tower (for an "
        "image tower alone, e.g. timm's).", path="file", metavar="TEXT.npy")
    """The classes' text embeddings (.npy, classes x embedding) instead of a text tower."""
    logit_scale: float | None = option(help="Zero-shot logit scale [default: the text tower's; "
                                       "CLIP's 100 with --zero-shot-embeddings].", kind=float)
    """The zero-shot logit scale (default: the text tower's, or CLIP's 100)."""
    logit_bias: float | None = option(help="SigLIP's logit bias [default: the text tower's].",
                                      kind=float)
    """SigLIP's logit bias (default: the text tower's)."""
    merge: int | tuple[int, ...] | str | None = option(
        help="Token merging (ToMe) in the graph: tokens merged per block (8), one count per "
        "block (8,8,4,...), or auto: the fastest schedule on this machine within --max-drop "
        "(timed at --batch, 1 for a dynamic batch).",
        parse=parse_merge, metavar="R")
    """Token merging: r per block (int), one r per block (tuple), or "auto" (`vitedge.
    export.merge_schedule`); None: none."""
    max_drop: float = option(0.5, "--merge auto / --token-reuse auto: the most the model may "
                             "lose against the unmerged (plain) one, in points: top-1 accuracy "
                             "(less two standard errors) where --merge-data's images sit in "
                             "folders named after the labels, else top-1 agreement (embeddings: "
                             "mean cosine, in hundredths).", least=0, most=100)
    merge_data: str | Path | None = option(
        help="--merge auto: held-out images to judge the schedules on (a folder, class "
        "folders named after the labels, an image list or an array).", path="any",
        metavar="IMAGES")
    merge_images: int = option(512, "--merge auto: how many of --merge-data's images judge the "
                               "schedules (more: a finer judgement, a slower choice).", least=16,
                               metavar="N")
    token_reuse: int | str | None = option(
        help="Token reuse across a camera's frames: a streaming graph that takes the frame and "
        "the previous state and recomputes only the K tokens per gate that changed most (its "
        "full pass, every token, is written beside it as OUT.full.onnx); auto: the fewest "
        "within --max-drop on the clip of --token-data.", parse=parse_token_reuse,
        metavar="K")
    """Eventful token reuse (`vitedge.export.streaming`): K tokens per gate, or "auto"
    (`vitedge.export.token_choice`); None: none."""
    token_data: str | Path | None = option(
        help="--token-reuse auto: the clip to choose K on (a video, or a folder of frames in "
        "order; its first 120 frames).", path="any", metavar="CLIP")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.zero_shot is None and (self.zero_shot_embeddings is not None or
                                       self.logit_scale is not None or self.logit_bias is not None):
            raise VitedgeError("--zero-shot-embeddings, --logit-scale and --logit-bias go with "
                               "--zero-shot LABELS")
        if self.zero_shot is not None and self.labels is not None:
            raise VitedgeError("--zero-shot names the classes itself; drop --labels")
        if not self.head and (self.zero_shot is not None or self.labels is not None):
            raise VitedgeError("--no-head leaves the classes out; drop --zero-shot and --labels")
        if isinstance(self.merge, str) and self.merge != "auto":
            raise VitedgeError("--merge takes a token count, one count per block, or auto")
        if self.merge_data is not None and self.merge != "auto":
            raise VitedgeError("--merge-data goes with --merge auto")
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
        if self.token_reuse is not None:
            self._check_token_reuse()
        if (self.token_reuse == "auto") != (self.token_data is not None):
            raise VitedgeError("--token-reuse auto and --token-data CLIP go together",
                               "give the clip to choose K on, or a K of your own")

    def _check_token_reuse(self) -> None:
        """--token-reuse makes a streaming graph of images, one state per camera."""
        others = {"--merge": self.merge is not None, "--attention-outputs": self.attention_outputs,
                  "--zero-shot": self.zero_shot is not None, "--no-head": not self.head,
                  "--external-data": self.external_data,
                  f"--input {self.input_kind}": self.input_kind != "images",
                  f"--batch {self.batch}": self.batch not in (None, 1)}
        given = [name for name, on in others.items() if on]
        if given:
            raise VitedgeError(f"--token-reuse does not combine with {', '.join(given)}",
                               "export the streaming graph (images, batch 1, one state per "
                               "camera) on its own")

    def key(self) -> dict[str, Any]:
        """What shapes the exported graph, as the manifest records it (`source.export`):
        an export is reused by `vitedge build` only when this matches."""
        return {f.name: (Path(v).name if isinstance(v, (str, Path)) and f.metadata.get(
                    "flag", Flag()).path else list(v) if isinstance(v, tuple) else v)
                for f in fields(self) if f.name != "verify" for v in (getattr(self, f.name),)
                if f.name not in ("token_reuse", "token_data") or v is not None}


def _same_field(cls: type, name: str) -> Any:
    """A field of another options dataclass, repeated with its flag and bounds."""
    f = next(f for f in fields(cls) if f.name == name)
    return field(default=f.default, metadata=f.metadata)


@dataclass(frozen=True)
class ImportOptions:
    """What reading a checkpoint takes (`vitedge.model.load_checkpoint`): the export's
    fields of the same names, with their bounds; `img_size` may also be (height, width)."""

    arch: str | None = _same_field(ExportOptions, "arch")
    num_heads: int | None = _same_field(ExportOptions, "num_heads")
    img_size: int | tuple[int, int] | None = _same_field(ExportOptions, "img_size")
    labels: str | Path | None = _same_field(ExportOptions, "labels")

    def __post_init__(self) -> None:
        check_fields(self)


# --- calibrate, quantize --------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationOptions:
    data: Any = None
    """Images to calibrate on: a folder, an image list, a video, an array file, or a chosen
    `vitedge.datasets.ImageSource`."""
    method: str = option("percentile", "How a tensor's histogram becomes its INT8 range.",
                         choices=CALIBRATION_METHODS)
    percentile: float = option(99.99, "For --method percentile: the share of |x| kept "
                               "unclipped.")
    num_images: int = option(512, "Images to calibrate on (a seeded sample when the source has "
                             "more).", least=1)
    batch: int = option(8, "Calibration images per ONNX Runtime run while ranges are measured "
                        "(memory, not results).", least=1)
    smooth_alpha: float = option(0.5, "Channel-equalisation strength alpha (SmoothQuant); 0 "
                                 "turns it off.", name="--smooth")
    """Channel-equalisation strength (SmoothQuant); 0 turns it off."""
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        if not 0 < self.percentile <= 100:
            raise VitedgeError("--percentile must be in (0, 100]")
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

    scheme: str = option("vit", "INT8 Q/DQ placement: vit, the Linear and patch-embedding "
                         "inputs and weights only; all, every op (naive baseline).",
                         choices=SCHEMES)
    attention: bool = option(False, "Also Q/DQ the attention matmuls' inputs (TensorRT's INT8 "
                             "fused attention).", name="--quantize-attention")
    exclude: tuple[str, ...] = option((), "Layer names to keep in float (fnmatch, e.g. "
                                      "'blocks.0.*', 'head'). Repeatable.", multiple=True,
                                      metavar="PATTERN")
    """Layer-name patterns (fnmatch) left in float, e.g. `blocks.0.*` or `head`."""
    smooth: bool | None = option(None, "Ignore the table's channel equalisation (the default "
                                 "for --scheme all).", negate="--no-smooth")
    """Use the table's channel equalisation; None: yes for the `vit` scheme, no for the
    naive `all` baseline."""
    ends: bool = option(False, "FP8 / NVFP4: quantize the patch embedding and the head too "
                        "(kept FP16 by default, ModelOpt's ViT recipe; INT8 always quantizes "
                        "them).", name="--quantize-ends")
    fp4_activations: str = option("auto", "NVFP4's activations: nvfp4 (dynamic, W4A4: TensorRT "
                                  "11, TensorRT for RTX), fp8 (W4A8: TensorRT 10.8+), auto: "
                                  "what the profile's TensorRT builds (fp8 without --profile).",
                                  choices=FP4_ACTIVATIONS)

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def smoothing(self) -> bool:
        return self.scheme == "vit" if self.smooth is None else self.smooth


@dataclass(frozen=True)
class QuantizeRequest:
    """The quantize stage's options."""

    precision: str = option("int8", "int8: explicit Q/DQ; fp16: float16 weights and "
                            "activations; fp8 / nvfp4: E4M3 / E2M1 Q/DQ in an FP16 graph (Ada, "
                            "Hopper, Blackwell); auto: a format per layer, the cheapest the "
                            "--profile's targets accelerate within --max-drop.",
                            choices=QUANTIZE)
    calib: str | None = option(help="A calibration table from `vitedge calibrate`.", path="file")
    data: str | None = option(help="Images to calibrate on (instead of --calib; the table goes "
                              "to MODEL.calib.json and is reused), to check the result against "
                              "FP32 on, and with --sensitivity to rank layers on.", path="any")
    calibration: CalibrationOptions = CalibrationOptions()
    qdq: QuantizeOptions = QuantizeOptions()
    sensitivity: int = option(0, "Rank layers by their effect on the output; keep the N most "
                              "sensitive in float.", least=0, metavar="N")
    """Keep this many of the most sensitive layers in float (0: no analysis)."""
    profile: str | None = option(help="--precision auto, --fp4-activations auto: the device "
                                 "profile whose targets decide (`vitedge profiles`).", kind=str)
    max_drop: float = option(0.5, "--precision auto: the accuracy budget, in points: top-1 "
                             "agreement with FP32 at least 100 - D %, or for a model without "
                             "classes a mean output cosine of at least 1 - D/100.", least=0,
                             most=100)
    min_fp32_agreement: float = MIN_FP32_AGREEMENT
    """Least top-1 agreement with FP32 on the check images: below it quantization
    collapsed and nothing is written."""
    check_source: Any = None
    """Images to compare the result with FP32 on (and --precision auto to measure on): a
    chosen `vitedge.datasets.ImageSource`, as `vitedge build` holds them out of calibration;
    None: of --data."""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.precision == "auto" and not self.profile:
            raise VitedgeError("--precision auto needs a target", "give --profile NAME "
                               "(vitedge profiles), or use vitedge build, which has one")

    @property
    def needs_target(self) -> bool:
        """Whether the device's targets decide: --precision auto's formats, or NVFP4's
        activations left to the target (--fp4-activations auto)."""
        return self.precision == AUTO or (self.precision == NVFP4 and
                                          self.qdq.fp4_activations == AUTO)

    def key(self, table_checksum: str | None) -> dict[str, Any]:
        """What a quantized model depends on besides its FP32 model (its manifest records it
        as `source.quantize`; `vitedge build` reuses a model whose record matches)."""
        q = self.qdq
        key = {"precision": self.precision, "scheme": q.scheme, "attention": q.attention,
               "exclude": list(q.exclude), "smooth": q.smoothing,
               "sensitivity": self.sensitivity, "calibration_sha256": table_checksum}
        if self.precision in (*FP8_FAMILY, AUTO):
            key.update(ends=q.ends, fp4_activations=q.fp4_activations, profile=self.profile)
        if self.precision == "auto":
            key.update(max_drop=self.max_drop, measured_on=getattr(
                self.check_source, "fingerprint", None) or self.data)
        return key


# --- build ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class VerifyOptions:
    enabled: bool = option(True, "Skip the check of the built artifact.", negate="--no-verify")
    images: int = option(128, "Images of --data held out of calibration to verify the artifact "
                         "on (at most a quarter of --data).", name="--verify-images", least=1)
    """Inputs of --data held out of calibration to verify on (at most a quarter of it)."""
    min_agreement: float = option(0.99, "Least top-1 agreement of the artifact with the graph it "
                                  "was built from (INT8: its Q/DQ graph in float); below it the "
                                  "build fails and writes nothing.", least=0, most=1)
    """Least top-1 agreement with the graph the artifact computes."""
    min_fp32_agreement: float = option(MIN_FP32_AGREEMENT, "Least top-1 agreement with the FP32 model; below "
                                       "it quantization collapsed and the build fails (with "
                                       "--merge, also with the unmerged FP32 model).",
                                       least=0, most=1)
    """Least top-1 agreement with the FP32 model (below: quantization collapsed), and of a
    merged graph's artifact with the unmerged FP32 model (below: merging collapsed it)."""

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class BuildOptions:
    precision: str | None = option(help="Default: the profile's (`vitedge profiles`). fp32 "
                                   "computes in FP32 on every backend; bf16: the FP32 model "
                                   "computed in BF16 (OpenVINO on CPUs with AVX-512 BF16 or "
                                   "AMX); fp8 and nvfp4 need a target that runs them (Ada, "
                                   "Hopper, Blackwell); auto: a format per layer, the cheapest "
                                   "the target accelerates within --max-drop.", choices=BUILD)
    """None: the profile's default."""
    data: str | None = option(help="Images to calibrate on (int8; a matching MODEL.calib.json is "
                              "reused) and to hold out for verifying the artifact.", path="any")
    """Images to calibrate on and to hold out for verification."""
    calib: str | None = option(help="A calibration table instead of --data.", path="file")
    profile: str | None = option(help="Device profile name or TOML file (`vitedge profiles`); "
                                 "default: the one `vitedge doctor` suggests for this machine.",
                                 kind=str)
    """A profile name or TOML path; None: the one doctor suggests for this machine."""
    backend: str = option("auto", "auto: the device profile's backend (TensorRT where it and a "
                          "GPU are present); on the CPU it builds with each installed CPU "
                          "backend (ONNX Runtime, OpenVINO), measures them here and keeps the "
                          "fastest; an -o suffix (.ort.onnx, .ov.xml) picks one instead.",
                          choices=build_backends)
    batch: str | None = option(help="A TensorRT engine's optimization-profile batch range "
                               "(default: the device profile's); not the calibration batch.",
                               metavar="MIN:OPT:MAX", kind=str)
    """MIN:OPT:MAX for the engine's optimization profile; None: the profile's."""
    timing_cache: str | None = option(help="TensorRT timing cache to load and save (faster "
                                      "rebuilds).", path="file")
    max_drop: float = option(0.5, "--precision auto: the accuracy budget, in points (top-1 "
                             "agreement with FP32 at least 100 - D %; cosine at least 1 - D/100 "
                             "without classes); token merging has its own, --merge-max-drop.",
                             least=0, most=100)
    merge: int | tuple[int, ...] | str | None = option(
        help="Token merging (ToMe) in the graph, for a checkpoint INPUT (exported merged, as "
        "MODEL.mergeR.onnx): tokens merged per block (8), one count per block (8,8,4,...), or "
        "auto: the schedule within --merge-max-drop that runs fastest with this build's backend "
        "here. An ONNX INPUT is merged at export or not at all: --merge must then agree with it.",
        parse=parse_merge, metavar="R")
    """Token merging at export (`ExportOptions.merge`); None: none."""
    merge_max_drop: float = option(
        0.5, "--merge auto: the most the model may lose against the unmerged FP32 one, in "
        "points: top-1 accuracy (less two standard errors) where the images sit in folders named "
        "after the labels, else top-1 agreement (embeddings: mean cosine, in hundredths); apart "
        "from --max-drop, which is "
        "--precision auto's budget against the FP32 model the build quantizes.", least=0,
        most=100)
    merge_data: str | None = option(help="--merge auto: images to judge the schedules on "
                                    "[default: --data].", path="any", metavar="IMAGES")
    merge_images: int = option(512, "--merge auto: how many of the images judge the schedules "
                               "(more: a finer judgement, a slower choice).", least=16,
                               metavar="N")
    force: bool = option(False, "Replace intermediate models beside the artifact (MODEL.onnx, "
                         "MODEL.PRECISION.onnx) even when this build did not make them, and an "
                         "artifact at -o built for another profile or backend.")
    """Replace intermediates (MODEL.onnx, MODEL.PRECISION.onnx) that a build did not make."""
    calibration: CalibrationOptions = CalibrationOptions()
    qdq: QuantizeOptions = QuantizeOptions()
    verify: VerifyOptions = VerifyOptions()

    def __post_init__(self) -> None:
        check_fields(self)
        if isinstance(self.merge, str) and self.merge != "auto":
            raise VitedgeError("--merge takes a token count, one count per block, or auto")
        if self.merge_data is not None and self.merge != "auto":
            raise VitedgeError("--merge-data goes with --merge auto")
        if self.merge == "auto" and self.merge_data is None and self.data is None:
            raise VitedgeError("--merge auto needs images to judge the schedules on",
                               "give --data IMAGES (or --merge-data IMAGES)")

    def export_options(self, merged: bool = True) -> ExportOptions:
        """The export a checkpoint INPUT gets (a dynamic batch), with this build's token
        merging (`merged`) or without it (the unmerged FP32 reference)."""
        if not merged or self.merge is None:
            return ExportOptions(batch=None)
        data = (self.merge_data or self.data) if self.merge == "auto" else None
        return ExportOptions(batch=None, merge=self.merge, max_drop=self.merge_max_drop,
                             merge_data=data, merge_images=self.merge_images)


# --- run side -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PipelineOptions:
    """`vitedge.open(path, **options)`: how the runtime pipeline runs an artifact."""

    device: str | None = option(help="For .onnx: ONNX Runtime on the CPU, or its CUDA/TensorRT "
                                "providers.", choices=DEVICES)
    """"gpu": ONNX Runtime's CUDA / TensorRT providers where installed; None / "cpu": the
    CPU (an engine always runs on its GPU)."""
    color: str = option("bgr", "Channel order of the source's frames (OpenCV gives BGR).",
                        choices=COLOR_ORDERS)
    """Channel order of 3-channel array frames (OpenCV gives BGR)."""
    fast: bool = option(False, "OpenCV preprocessing (faster on a weak CPU; not bit-exact with "
                        "the reference libraries, see `vitedge bench`).")
    """OpenCV resize instead of PIL's (not bit-exact with the reference libraries)."""
    topk: int = option(5, "Classes in the top-k of each prediction.", least=1)
    keep_logits: bool = False
    normalize_embeddings: bool = option(False, "L2-normalise the embeddings.",
                                        name="--normalize")
    """A headless model's `Prediction.embedding` L2-normalised (for cosine similarity)."""
    threads: int | None = option(help="ONNX Runtime intra-op threads [default: every core, or "
                                 "cores / streams].", least=1, most=MAX_THREADS, kind=int)
    """ONNX Runtime intra-op threads; None: every core, or cores / streams."""
    batch: int = option(1, "Images the model runs together, per inference.", least=1)
    """Frames `stream()` runs together."""
    cuda_graph: bool = False
    """Replay a TensorRT engine's execution as a CUDA graph."""
    streams: int = option(1, "Frames in flight at once, each on its share of the CPU cores "
                          "(ONNX Runtime). 1: every core on one frame, the lowest latency; the "
                          "number of cores: the most frames/s, each frame slower.", least=1)
    """Frames in flight at once in `stream()` (ONNX Runtime)."""
    reuse: float | None = option(help="Frame reuse: a frame whose every patch changed by at most "
                                 "this many times the stream's learnt noise floor since the last "
                                 "inferred frame gets that frame's result, marked reused "
                                 "(`vitedge tune-reuse` measures the largest safe value on a "
                                 "clip). Default: every frame inferred.", least=0, above=True,
                                 metavar="K", kind=float)
    """Frame reuse threshold in noise-floor units (`vitedge.runtime.reuse`); None: off."""
    max_age: str = option("30", "With --reuse: a full inference at least every N frames, or "
                          "every N seconds written Ns (e.g. 2s).", metavar="N|Ns",
                          parse=lambda text: _max_age_text(text))
    """With `reuse`: frames ("30") or seconds ("2s") after which a frame is always inferred."""
    token_refresh: int = option(30, "With a streaming graph (token reuse): a full pass, every "
                                "token recomputed, at least every N frames of a camera.",
                                least=1, metavar="N")
    """Token reuse (`vitedge.runtime.token_gate`): frames between a camera's full passes,
    which bound the drift of its cached tokens."""

    def __post_init__(self) -> None:
        parse_max_age(self.max_age)
        for name in ("fast", "keep_logits", "normalize_embeddings", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise VitedgeError(f"{name} must be True or False, not {getattr(self, name)!r}")
        check_fields(self)


def parse_max_age(text: str) -> tuple[int | None, float | None]:
    """`--max-age`: (frames, None) for "N", (None, seconds) for "Ns"; ValueError (a
    VitedgeError) otherwise."""
    t = str(text).strip().lower()
    try:
        if t.endswith("s"):
            seconds = float(t[:-1])
            if seconds > 0:
                return None, seconds
        elif int(t) >= 1:
            return int(t), None
    except ValueError:
        pass
    raise VitedgeError(f"--max-age '{text}' is neither a number of frames (30) nor of seconds "
                       "(2s)", "e.g. --max-age 30 or --max-age 2s")


def _max_age_text(text: str) -> str:
    """`--max-age` checked for the CLI's parser (a ValueError is its usage error)."""
    try:
        parse_max_age(text)
    except VitedgeError as exc:
        raise ValueError(exc.message) from None
    return text


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
class SourceOptions:
    """How a live source (camera, stream, GStreamer) rides out an outage."""

    reconnect_for: float | None = option(
        help="A live source that drops is reconnected until it is back; after this many "
        "seconds without a frame it counts as gone (exit 1). Default: keep trying.",
        least=0, metavar="SECONDS", kind=float)
    """Seconds without a frame after which a dropped live source counts as gone; None:
    keep trying for ever (each attempt counted and reported)."""
    max_failures: int = 30
    """Failed reads in a row after which the stream counts as dropped and is re-opened."""
    backoff: float = 0.5
    """First wait before re-opening; it doubles up to `backoff_max`."""
    backoff_max: float = 5.0

    def __post_init__(self) -> None:
        if self.reconnect_for is not None and self.reconnect_for < 0:
            raise VitedgeError("--reconnect-for must be 0 or more seconds")
        if self.max_failures < 1 or self.backoff < 0 or self.backoff_max < self.backoff:
            raise VitedgeError("a source needs max_failures >= 1 and 0 <= backoff <= backoff_max")


@dataclass(frozen=True)
class CameraOptions:
    """How `vitedge run` puts several cameras through one model, and where the results go."""

    batch: int | None = option(help="Frames per inference across the cameras [default: the "
                               "number of cameras, at most the model's largest batch].",
                               least=1, kind=int)
    max_wait_ms: float = option(MAX_WAIT_MS, "Longest a batch that holds a frame waits for more "
                                "(DeepStream's batched push timeout).", least=0)
    events: str | None = option(help="Every prediction as one JSON line (camera, frame, "
                                "captured, latency_ms, top or embedding) to this file; '-': "
                                "standard output.", metavar="FILE", kind=str)
    mqtt: str | None = option(help="Publish every prediction to an MQTT broker, on "
                              "TOPIC/CAMERA (needs paho-mqtt).", metavar="HOST[:PORT]/TOPIC",
                              kind=str)
    mqtt_qos: int = option(1, "MQTT quality of service: 0 at most once, 1 at least once.",
                           least=0, most=1)
    mqtt_drop_undelivered: bool = option(
        False, "Exit 0 even when events could not be delivered to the MQTT broker (counted and "
        "named in a warning); without it, undelivered events make the run exit 1.")
    events_min_score: float | None = option(
        help="Send only events whose top-1 score is at least this (--events and --mqtt).",
        least=0, most=1, metavar="SCORE", kind=float)
    events_on_change: bool = option(False, "Send an event only when a camera's top-1 label "
                                    "changes from the last event it sent (--events and --mqtt).")
    events_max_rate: float | None = option(
        help="At most this many events a second per camera, by capture time (--events and "
        "--mqtt).", least=0, above=True, metavar="PER_SECOND", kind=float)
    output_dir: str | None = option(help="Write each camera's annotated frames to "
                                    "DIR/CAMERA.mp4.", metavar="DIR", kind=str)
    status: bool = option(True, "No live status table (it is shown only on a terminal).",
                          negate="--no-status")
    metrics_port: int | None = option(help="Serve per-camera frames, drops, reuse and latency "
                                      "histograms in Prometheus' format on this port (0: any "
                                      "free one; needs prometheus_client).", least=0,
                                      most=65535, kind=int, metavar="PORT")
    metrics_host: str = option("127.0.0.1", "The address --metrics-port binds (0.0.0.0: every "
                               "interface).", metavar="ADDRESS")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class ReuseTuneOptions:
    """`vitedge tune-reuse`: how the frame-reuse threshold is chosen on a clip."""

    budget: float = option(0.01, "Share of the clip's frames whose delivered result may "
                           "differ from full inference (top-1; embedding cosine < 0.99).",
                           least=0, most=1)
    max_age: str = option("30", "A full inference at least every N frames, or Ns seconds, as "
                          "vitedge run --max-age.", metavar="N|Ns",
                          parse=lambda text: _max_age_text(text))
    fps: float = option(10.0, "The clip's frame rate (times a --max-age in seconds).", least=0,
                        above=True)
    max_frames: int | None = option(help="Read at most this many frames of the clip.", least=1,
                                    kind=int)

    def __post_init__(self) -> None:
        parse_max_age(self.max_age)
        check_fields(self)


@dataclass(frozen=True)
class EvalOptions:
    data: str | Path = option("", "A folder with one sub-folder of images per class, named after "
                              "the labels.", path="any")
    """A folder with one sub-folder of images per class, named after the labels."""
    reference: str | Path | None = option(help="Another model (e.g. the FP32 export) to compare "
                                          "with on the same images.", path="any")
    batch: int = option(64, "Images the model runs together, per inference, while evaluating "
                        "(speed and memory, not results).", least=1)
    limit: int | None = option(help="Evaluate a seeded sample of this many.", least=1, kind=int)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class CompareOptions:
    data: str | Path = option("", "A labelled folder (one sub-folder of images per class) every "
                              "artifact is evaluated on.", path="any")
    """The labelled folder every artifact is evaluated on."""
    limit: int | None = option(help="Evaluate a seeded sample of this many.", least=1, kind=int)
    iterations: int = option(30, "Timed single-image inferences per artifact (after 3 "
                             "untimed), for its median latency.", least=1)

    def __post_init__(self) -> None:
        check_fields(self)


def parse_head(text: str | int) -> str | int:
    """`mean`, `max`, or a head index."""
    if isinstance(text, int) or text in HEAD_REDUCTIONS:
        return text
    try:
        return int(text)
    except ValueError:
        raise VitedgeError(f"--head '{text}' is not mean, max or a head number") from None


@dataclass(frozen=True)
class ExplainOptions:
    method: str = option("cls", "cls: the class token's attention in one layer; rollout: "
                         "attention rollout across all layers (residual added, rows "
                         "re-normalised).", choices=EXPLAIN_METHODS)
    layer: int = option(-1, "Block for cls: 0 is the first, -1 the last.")
    """Block for `cls`: 0 is the first, -1 the last."""
    head: str | int = option("mean", "mean or max over the heads, or one head's number (0 is "
                             "the first).")
    """`mean` or `max` over heads, or one head's index."""
    topk: int = option(3, "Classes named in each figure's title (the top-k prediction).",
                       least=1)
    fast: bool = option(False, "OpenCV preprocessing (faster on a weak CPU; not bit-exact with "
                        "the reference libraries, see `vitedge bench`).")
    compare: str | Path | None = option(help="Draw OTHER_ARTIFACT's map beside it (e.g. the FP32 "
                                        "export beside INT8), with the maps' cosine similarity.",
                                        path="any", metavar="OTHER_ARTIFACT")
    """Another artifact drawn beside, with the maps' cosine similarity."""

    def __post_init__(self) -> None:
        check_fields(self)
        parse_head(self.head)


def parse_counts(text: str) -> tuple[int, ...]:
    """`1` or `1,2`: comma-separated positive counts."""
    try:
        counts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError("use numbers like 1 or 1,2") from None
    if any(n < 1 for n in counts):
        raise ValueError("must be positive")
    return counts


@dataclass(frozen=True)
class BenchOptions:
    batches: tuple[int, ...] = option((1,), "Batch sizes to time, comma-separated (1,8): each "
                                      "is timed as its own run.", name="--batch",
                                      parse=parse_counts, shown="1", least=1)
    warmup: int = option(10, "Untimed runs first, per artifact and batch (caches, lazy "
                         "initialisation).", least=0)
    iterations: int | None = option(100, "Timed runs per artifact and batch.", least=1)
    duration: float | None = option(help="Run for this many seconds instead of --iterations.",
                                    least=0, above=True, kind=float)
    """Seconds to run instead of a number of iterations."""
    source: str | None = option(help="Frames from a source (default: random 640x480 BGR "
                                "frames).", kind=str)
    fast: bool = option(False, "OpenCV preprocessing.")
    layers: bool = option(False, "Per-layer times (TensorRT profiler; ONNX Runtime profiling on "
                          "the CPU).")
    streams: tuple[int, ...] = option((1,), "Frames in flight at once, comma-separated (1,2): "
                                      "each artifact runs with each, interleaved; more streams "
                                      "give more frames/s on a CPU (ONNX Runtime).",
                                      parse=parse_counts, shown="1", least=1)
    """Each artifact is opened once per value: batches in flight at once."""

    def __post_init__(self) -> None:
        check_fields(self)


# --- serve --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeOptions:
    """`vitedge serve` / `export-triton`: how Triton serves each artifact."""

    host: str = option("127.0.0.1", "Address to listen on; loopback unless you mean to expose "
                       "it.")
    """Where the server listens: loopback unless told otherwise."""
    http_port: int = option(8000, "HTTP/REST port (0: any free one).", least=0, most=65535)
    grpc_port: int = option(8001, "gRPC port (0: any free one).", least=0, most=65535)
    metrics_port: int = option(8002, "Prometheus metrics port (0: any free one).", least=0,
                               most=65535)
    max_batch: int | None = option(help="Largest batch Triton's dynamic batcher forms "
                                   "[default: an engine's optimization profile max, else 8; more "
                                   "than an engine allows is refused].", least=1, most=4096,
                                   kind=int)
    """Largest batch dynamic batching forms; None: a TensorRT engine's profile max, else 8.
    More than an engine's profile allows is refused (Triton would not load it)."""
    max_delay_us: int = option(1000, "How long a request may wait for others to batch with "
                               "(microseconds).", least=0, most=10_000_000)
    """How long a request may wait for others to batch with (microseconds)."""
    instances: int = option(1, "Model instances (instance_group count).", least=1, most=64)
    topk: int = option(5, "Classes in the topk outputs.", least=1, most=1000)
    instance_kind: str = option("cpu", "Where ONNX and Python models run (a TensorRT plan always "
                                "runs on the GPU).", choices=INSTANCE_KINDS)
    admin_key_file: str | None = option(
        help="Where the key for Triton's admin APIs (model repository and configuration, "
        "shared memory, statistics, trace, logging) is kept; made, readable by you alone, when "
        "missing. Off loopback those APIs always need it (the header vitedge-admin-key) "
        "[default: ~/.config/vitedge/serve-admin.key].", path="file")
    api_key_file: str | None = option(
        help="Require a key for inference too (the header vitedge-api-key): the file that "
        "holds it, made when missing.", path="file")
    onnx_backend: str = option(TRITON_ONNX_BACKENDS[0], "Serve an ONNX model with Triton's "
                               "onnxruntime backend, or through vitedge in the Python backend "
                               "(a Triton without the ONNX Runtime backend).",
                               choices=TRITON_ONNX_BACKENDS)
    """export-triton: serve an ONNX model with Triton's onnxruntime backend, or with the
    Python backend running vitedge (for servers without that backend)."""

    def __post_init__(self) -> None:
        check_fields(self)


# --- export-deepstream ----------------------------------------------------------------------

@dataclass(frozen=True)
class DeepStreamOptions:
    """How nvinfer runs the classifier."""

    batch_size: int = option(1, "nvinfer's batch-size.", least=1, most=1024)
    process_mode: str = option("primary", "primary: classify whole frames; secondary: a "
                               "detector's objects.", name="--mode", choices=PROCESS_MODES)
    """primary: classify whole frames; secondary: the objects a detector found."""
    classifier_threshold: float = option(0.5, "classifier-threshold: least probability to "
                                         "attach a label.", name="--threshold", least=0, most=1)
    """Least probability for nvinfer to attach the label."""
    gie_id: int = option(1, "gie-unique-id of this classifier.", least=1)
    """gie-unique-id of this classifier; a secondary one is given its detector's as
    operate_on_gie_id."""
    operate_on_gie_id: int | None = option(help="Secondary mode: the detector's gie-unique-id.",
                                           least=1, kind=int)

    def __post_init__(self) -> None:
        check_fields(self)
