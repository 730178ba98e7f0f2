"""Triton model repositories for vitedge artifacts: `REPO/<model>/config.pbtxt` and
`REPO/<model>/1/<model file>`.

Two kinds:
- `serving_repository`: what `vitedge serve` runs: per artifact a Python-backend model taking
  the artifact's own input tensor, and `<name>_image` taking encoded JPEG / PNG bytes, both
  running vitedge's runtime (any backend: ONNX Runtime, TensorRT, TensorRT for RTX).
- `export_repository`: what a production Triton serves, with the interface `vitedge serve`
  gives (`<name>`, `<name>_image`; `_ensemble`): a TensorRT engine as `tensorrt_plan` (its
  `max_batch_size` the engine profile's max batch, which Triton requires: a larger one
  fails to load, server #880 / #5013) or an ONNX model as `onnxruntime_onnx`, written as
  `<name>_model`; a Python-backend `<name>_preprocess` (image bytes in, the model's input
  out, with vitedge's exact preprocessing) and `<name>_postprocess` (logits in, label,
  score and top-k out), and the ensembles `<name>` and `<name>_image` chaining them; labels
  in `labels.txt` (`label_filename`), warm-up requests, a README.

Every config.pbtxt is checked against Triton's own `ModelConfig` schema where tritonclient
is installed (`validate_config`). With `max_batch_size > 0`, `dims` leave out the batch."""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.backends.base import TensorInfo, TritonModel
from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest
from vitedge.options import ServeOptions

MODEL_PY = Path(__file__).with_name("model.py")
DEFAULT_MAX_BATCH = 8
"""The dynamic batcher's largest batch when neither --max-batch nor an engine says."""
TRITON_TYPES = {"float32": "TYPE_FP32", "FLOAT": "TYPE_FP32", "float16": "TYPE_FP16",
                "HALF": "TYPE_FP16", "uint8": "TYPE_UINT8", "UINT8": "TYPE_UINT8",
                "int8": "TYPE_INT8", "INT8": "TYPE_INT8", "int32": "TYPE_INT32",
                "INT32": "TYPE_INT32", "int64": "TYPE_INT64", "INT64": "TYPE_INT64"}


@dataclass
class TensorSpec:
    name: str
    dtype: str
    """Triton's data type, e.g. TYPE_FP32."""
    dims: list[int]
    """Without the batch dimension."""
    label_filename: str = ""

    def pbtxt(self) -> str:
        label = f' label_filename: "{self.label_filename}"' if self.label_filename else ""
        return (f'{{ name: "{self.name}" data_type: {self.dtype} '
                f'dims: [ {", ".join(map(str, self.dims))} ]{label} }}')


@dataclass
class ModelEntry:
    """One model of a repository (what `repository` wrote, for the CLI's table)."""

    name: str
    kind: str
    """python, tensorrt_plan, onnxruntime_onnx or ensemble."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    config: Path
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "max_batch_size": self.max_batch_size,
                "inputs": [vars(t) for t in self.inputs], "outputs": [vars(t) for t in self.outputs],
                "config": str(self.config), "notes": self.notes}


def model_name(artifact: Path) -> str:
    """A Triton model name from an artifact's file name: `fmnist.int8.ort.onnx` ->
    `fmnist_int8`."""
    stem = artifact.name
    for suffix in (".ort.onnx", ".onnx", ".engine", ".plan", ".trt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9_]+", "_", stem).strip("_") or "model"
    return name if name[0].isalpha() else f"m_{name}"


def input_spec(manifest: Manifest, name: str = "input") -> TensorSpec:
    """The tensor a vitedge model takes, without the batch dimension."""
    cfg = manifest.architecture
    if manifest.input == "frames":
        return TensorSpec(name, "TYPE_UINT8", [*cfg.img_size, cfg.in_chans])
    if manifest.input == "patches":
        return TensorSpec(name, "TYPE_FP32", [cfg.num_patches, cfg.patch_dim])
    return TensorSpec(name, "TYPE_FP32", [cfg.in_chans, *cfg.img_size])


def prediction_outputs(manifest: Manifest, topk: int) -> list[TensorSpec]:
    """What the vitedge Python-backend model answers: a classifier's logits, label, score
    and top-k; a headless model's embedding."""
    if not manifest.is_classifier:
        return [TensorSpec("embedding", "TYPE_FP32", [manifest.architecture.feature_dim])]
    classes = manifest.architecture.num_classes
    k = min(topk, classes) if classes else topk
    return [TensorSpec("logits", "TYPE_FP32", [classes], "labels.txt" if manifest.labels else ""),
            TensorSpec("label", "TYPE_STRING", [1]), TensorSpec("score", "TYPE_FP32", [1]),
            TensorSpec("topk_ids", "TYPE_INT32", [k]), TensorSpec("topk_scores", "TYPE_FP32", [k])]


def config_pbtxt(name: str, platform: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 max_batch: int, options: ServeOptions, parameters: dict[str, str] | None = None,
                 warmup: bool = False, batching: bool = True, extra: str = "") -> str:
    """A config.pbtxt, field by field as Triton's ModelConfig has them."""
    kind = "backend" if platform == "python" else "platform"
    lines = [f'name: "{name}"', f'{kind}: "{platform}"', f"max_batch_size: {max_batch}",
             "input [\n  " + ",\n  ".join(t.pbtxt() for t in inputs) + "\n]",
             "output [\n  " + ",\n  ".join(t.pbtxt() for t in outputs) + "\n]"]
    if batching and max_batch > 1 and platform != "ensemble":
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_delay_us} }}")
    if platform != "ensemble":
        kind_name = "KIND_GPU" if platform == "tensorrt_plan" or options.instance_kind == "gpu" \
            else "KIND_CPU"
        lines.append(f"instance_group [ {{ count: {options.instances} kind: {kind_name} }} ]")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    if warmup:
        lines.append("model_warmup [ {\n  name: \"zeros\" batch_size: 1\n  inputs { key: "
                     f'"{inputs[0].name}" value: {{ data_type: {inputs[0].dtype} dims: '
                     f'[ {", ".join(map(str, inputs[0].dims))} ] zero_data: true }} }}\n}} ]')
    if extra:
        lines.append(extra)
    return "\n".join(lines) + "\n"


def validate_config(text: str, where: str = "config.pbtxt") -> Any:
    """Parse `text` with Triton's own ModelConfig schema (tritonclient's model_config_pb2),
    which rejects unknown and mistyped fields; None where tritonclient is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise VitedgeError(f"{where} is not a valid Triton model configuration: {exc}",
                           "please report this") from exc


def _write_model(repo: Path, name: str, config: str,
                 files: Mapping[str, Path | str | bytes]) -> Path:
    """REPO/NAME/config.pbtxt (checked against Triton's schema) and the model's files: a
    Path is copied, str and bytes written."""
    validate_config(config, f"{name}/config.pbtxt")
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    from vitedge.fileio import write_bytes_atomic, write_text_atomic

    write_text_atomic(folder / "config.pbtxt", config)
    for rel, content in files.items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copy2(content, target)
            from vitedge.graph import data_files

            for data in data_files(content) if content.suffix == ".onnx" else []:
                shutil.copy2(data, target.parent / data.name)  # its weights, beside it
        elif isinstance(content, bytes):
            write_bytes_atomic(target, content)
        else:
            write_text_atomic(target, content)
    return folder / "config.pbtxt"


def _labels(manifest: Manifest) -> dict[str, str]:
    return {"labels.txt": "\n".join(manifest.labels) + "\n"} if manifest.labels else {}


def _unique_names(artifacts: list[Path]) -> list[str]:
    names: list[str] = []
    for artifact in artifacts:
        name = model_name(artifact)
        while name in names:
            name += "_2"
        names.append(name)
    return names


def serving_repository(artifacts: list[Path], repo: Path, options: ServeOptions
                       ) -> list[ModelEntry]:
    """For `vitedge serve`: per artifact, `<name>` (its input tensor) and `<name>_image`
    (encoded image bytes), Python-backend models running vitedge's runtime."""
    from vitedge.backends import load_runner

    entries: list[ModelEntry] = []
    for artifact, name in zip(artifacts, _unique_names(artifacts), strict=True):
        with load_runner(artifact) as runner:  # checks it, and gives its manifest and batch
            manifest, largest, input_name = runner.manifest, runner.max_batch, runner.input_name
        max_batch = options.max_batch or DEFAULT_MAX_BATCH
        max_batch = min(max_batch, largest) if largest else max_batch
        outputs = prediction_outputs(manifest, options.topk)
        for model, inputs, mode in ((name, [input_spec(manifest, input_name)], "tensor"),
                                    (f"{name}_image", [TensorSpec("image", "TYPE_STRING", [1])],
                                     "image")):
            params = {"artifact": str(artifact.resolve()), "mode": mode, "topk": str(options.topk),
                      "input": input_name}
            text = config_pbtxt(model, "python", inputs, outputs, max_batch, options, params)
            config = _write_model(repo, model, text, {"1/model.py": MODEL_PY, **_labels(manifest)})
            entries.append(ModelEntry(model, "python", inputs, outputs, max_batch, config))
    return entries


def export_repository(artifacts: list[Path], repo: Path, options: ServeOptions
                      ) -> list[ModelEntry]:
    """For a production Triton: each artifact as Triton's own backend for it serves it
    (`Backend.triton_model`: an engine as tensorrt_plan, an ONNX model as onnxruntime_onnx),
    or with onnx_backend="python" an ONNX model through vitedge in the Python backend; plus
    `<name>_preprocess` and the ensemble `<name>_image` for image bytes. The repository
    appears whole or not at all; `repo` must be new or empty."""
    from vitedge.backends import backend_of, get
    from vitedge.fileio import atomic_folder, write_text_atomic

    if not artifacts:
        raise VitedgeError("nothing to export", "give one or more vitedge artifacts")
    entries: list[ModelEntry] = []
    with atomic_folder(repo) as tmp:
        for artifact, name in zip(artifacts, _unique_names(artifacts), strict=True):
            backend = get(backend_of(artifact))
            if backend.onnx_artifact and options.onnx_backend == "python":
                entry, manifest = _python_model(artifact, tmp, name, options)
            else:  # behind the ensemble `<name>` where Triton batches it (`_ensemble`)
                triton = backend.triton_model(artifact)
                batches = triton.batch is not None or triton.inputs[0].shape[0] == -1
                entry, manifest = _triton_model(triton, tmp, f"{name}_model" if batches
                                                else name, options)
            entries += [entry, *_ensemble(tmp, name, entry, manifest, options)]
        write_text_atomic(tmp / "README.md", _readme(entries, artifacts))
    for entry in entries:
        entry.config = repo / entry.config.relative_to(tmp)
    return entries


def _triton_model(model: TritonModel, repo: Path, name: str, options: ServeOptions
                  ) -> tuple[ModelEntry, Manifest]:
    """A model served by Triton's own backend for it, with dims without the batch where
    Triton batches (a model with a static batch is served as it is, max_batch_size 0)."""
    manifest = model.manifest
    first = model.inputs[0]
    static = first.shape[0] != -1
    if model.batch is not None:
        low, _, high = (int(b) for b in model.batch.split(":"))
        max_batch = options.max_batch or high
        if max_batch > high:
            raise VitedgeError(f"--max-batch {max_batch} is more than the engine's optimization "
                               f"profile allows ({model.batch}); Triton would refuse to load it",
                               f"use --max-batch {high} or rebuild with --batch "
                               f"1:{min(8, max_batch)}:{max_batch}")
        if low > 1:
            raise VitedgeError(f"the engine's optimization profile starts at batch {low} "
                               f"({model.batch}); Triton sends batches from 1",
                               f"rebuild with --batch 1:{low}:{high}")
        static = False
    else:
        max_batch = 0 if static else options.max_batch or DEFAULT_MAX_BATCH

    def spec(t: TensorInfo, labels: bool = False) -> TensorSpec:
        dims = [int(d) for d in t.shape]
        return TensorSpec(t.name, TRITON_TYPES.get(t.dtype, "TYPE_FP32"),
                          dims if static else dims[1:],
                          "labels.txt" if labels and manifest.labels else "")

    inputs = [spec(first)]
    outputs = [spec(o, labels=True) for o in model.outputs]
    text = config_pbtxt(name, model.platform, inputs, outputs, max_batch, options,
                        warmup=model.warmup and not static)
    config = _write_model(repo, name, text, {f"1/{model.file}": model.payload,
                                             **_labels(manifest)})
    return (ModelEntry(name, model.platform, inputs, outputs, max_batch, config,
                       [f"{name}: {note}" for note in model.notes]), manifest)


def _python_model(artifact: Path, repo: Path, name: str, options: ServeOptions
                  ) -> tuple[ModelEntry, Manifest]:
    """An ONNX model served through vitedge in Triton's Python backend (for a Triton
    without the ONNX Runtime backend)."""
    from vitedge.graph import load_onnx
    from vitedge.manifest import require_manifest

    model = load_onnx(artifact)
    manifest = require_manifest(model, artifact)
    static = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value > 0
    max_batch = 0 if static else options.max_batch or DEFAULT_MAX_BATCH
    inputs = [input_spec(manifest, model.graph.input[0].name)]
    outputs = prediction_outputs(manifest, options.topk)
    params = {"artifact": "1/model.onnx", "mode": "tensor", "topk": str(options.topk),
              "input": inputs[0].name}
    text = config_pbtxt(name, "python", inputs, outputs, max_batch, options, params)
    config = _write_model(repo, name, text, {"1/model.onnx": artifact, "1/model.py": MODEL_PY,
                                             **_labels(manifest)})
    return ModelEntry(name, "python", inputs, outputs, max_batch, config), manifest


def _ensemble(repo: Path, name: str, model: ModelEntry, manifest: Manifest,
              options: ServeOptions) -> list[ModelEntry]:
    """What makes the repository answer as `vitedge serve` does, model for model:
    `<name>_preprocess` (image bytes -> the model's input, vitedge's preprocessing from a
    copy of the manifest) and the ensemble `<name>_image` (image bytes in); and where Triton's
    own backend runs the model (written as `<name>_model`, its only output the logits or
    features), `<name>_postprocess` (logits -> label, score, top-k, as vitedge.open answers)
    and the ensemble `<name>` taking the model's own input. Both ensembles answer what
    serve's models answer: `logits`, `label`, `score`, `topk_ids`, `topk_scores`, or a
    headless model's `embedding`."""
    if model.max_batch_size == 0:
        return []  # a static-batch model cannot sit behind a batching ensemble
    image = TensorSpec("image", "TYPE_STRING", [1])
    tensor = TensorSpec("input", model.inputs[0].dtype, model.inputs[0].dims)
    pre = f"{name}_preprocess"
    params = {"manifest": "manifest.json", "mode": "preprocess"}
    text = config_pbtxt(pre, "python", [image], [tensor], model.max_batch_size, options, params)
    pre_config = _write_model(repo, pre, text, {"1/model.py": MODEL_PY,
                                                "manifest.json": manifest.to_json()})
    entries = [ModelEntry(pre, "python", [image], [tensor], model.max_batch_size, pre_config)]
    answers = prediction_outputs(manifest, options.topk)
    own = model.name != name  # Triton's own backend runs it: its raw outputs
    raw = model.outputs[0]
    if own and manifest.is_classifier:
        outputs = [TensorSpec("logits", "TYPE_FP32", raw.dims, raw.label_filename)]
        renamed = {raw.name: "logits"}
    elif own:
        outputs = [TensorSpec("embedding", "TYPE_FP32", raw.dims)]
        renamed = {raw.name: "embedding"}
    else:
        outputs, renamed = list(model.outputs), {t.name: t.name for t in model.outputs}
    after: list[str] = []
    if own and manifest.is_classifier:
        post = f"{name}_postprocess"
        logits = TensorSpec(raw.name, "TYPE_FP32", raw.dims)
        extra = [t for t in answers if t.name != "logits"]
        params = {"manifest": "manifest.json", "mode": "postprocess",
                  "topk": str(options.topk), "logits": logits.name}
        text = config_pbtxt(post, "python", [logits], extra, model.max_batch_size, options,
                            params)
        post_config = _write_model(repo, post, text, {"1/model.py": MODEL_PY,
                                                      "manifest.json": manifest.to_json(),
                                                      **_labels(manifest)})
        entries.append(ModelEntry(post, "python", [logits], extra, model.max_batch_size,
                                  post_config))
        after.append(_step(post, {logits.name: "logits"}, {t.name: t.name for t in extra}))
        outputs += extra

    def ensemble(ens: str, inputs: list[TensorSpec], steps: list[str]) -> ModelEntry:
        text = config_pbtxt(ens, "ensemble", inputs, outputs, model.max_batch_size, options,
                            extra="ensemble_scheduling { step [\n  " + ",\n  ".join(steps)
                            + "\n] }")
        return ModelEntry(ens, "ensemble", inputs, outputs, model.max_batch_size,
                          _write_model(repo, ens, text, _labels(manifest)))

    first = model.inputs[0].name
    entries.append(ensemble(f"{name}_image", [image], [
        _step(pre, {"image": "image"}, {"input": "preprocessed"}),
        _step(model.name, {first: "preprocessed"}, renamed), *after]))
    if own:
        entries.append(ensemble(name, [model.inputs[0]],
                                [_step(model.name, {first: first}, renamed), *after]))
    return entries


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    """One step of an ensemble: the model's tensors (keys) from and to the ensemble's."""
    maps = [f'input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    maps += [f'output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return f'{{ model_name: "{model}" model_version: -1 {" ".join(maps)} }}'


def _readme(entries: list[ModelEntry], artifacts: list[Path]) -> str:
    rows = "\n".join(f"| `{e.name}` | {e.kind} | {e.max_batch_size} | "
                     f"{', '.join(t.name for t in e.inputs)} | {', '.join(t.name for t in e.outputs)} |"
                     for e in entries)
    notes = "\n".join(f"- {n}" for e in entries for n in e.notes)
    return f"""# Triton model repository (made by `vitedge export-triton`)

From: {', '.join(a.name for a in artifacts)}.

| model | kind | max batch | inputs | outputs |
|---|---|---|---|---|
{rows}

Serve with `tritonserver --model-repository .` (NGC container `nvcr.io/nvidia/tritonserver`,
or JetPack's Triton on a Jetson).

- A `tensorrt_plan` model runs only on the GPU generation and the TensorRT version that
  built it: the Triton release must bundle that TensorRT (Triton's release notes list it:
  e.g. Triton 24.08 / 2.49 has TensorRT 10.3, JetPack 6's). Its `max_batch_size` is the
  engine profile's largest batch; Triton refuses a larger one.
- `onnxruntime_onnx` needs Triton's ONNX Runtime backend (in the NGC containers).
- `NAME` (the model's own input, e.g. `images`) and `NAME_image` (encoded image bytes,
  `image`) take and answer what `vitedge serve`'s models of the same names do; `NAME_model`
  is the model alone (its logits or features).
- The `_preprocess` and `_postprocess` models and the `_image` ensembles use the Python
  backend and need `pip install vitedge` (numpy, Pillow) in the server's Python; they decode
  JPEG / PNG bytes and preprocess exactly as `vitedge.open` does (from `manifest.json`), and
  answer `label`, `score`, `topk_ids` and `topk_scores` beside the `logits` as it does.
{notes}
"""
