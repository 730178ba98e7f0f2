"""DeepStream's Gst-nvinfer configuration for a vitedge classifier (`vitedge
export-deepstream`): what a Jetson camera product deploys in a DeepStream pipeline.

nvinfer scales each frame (or object) to the network's size, then feeds float planar NCHW
`y = net-scale-factor * (x - offsets[c])` for 0..255 pixels x: one scale for every channel.
A vitedge model normalises `(x / 255 - mean[c]) / std[c]`, which that formula expresses
exactly only when std is the same for every channel (Inception's 0.5, a gray model):
`net-scale-factor = 1 / (255 std)`, `offsets[c] = 255 mean[c]`. For ImageNet's per-channel
std no config can be exact: this module refuses and points to `vitedge export --input
pixels`, whose graph normalises float 0..255 pixels itself (net-scale-factor 1, no
offsets). nvinfer's default classifier parser reads probabilities, so the ONNX model given
to nvinfer is the artifact with a Softmax on its logits (`probs`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest
from vitedge.options import DeepStreamOptions

NETWORK_MODES = {"fp32": 0, "int8": 1, "fp16": 2}
"""nvinfer's network-mode for each precision (the precision is in the graph already)."""
COLOR_FORMATS = {1: 2, 3: 0}
"""in_chans -> model-color-format: 0 RGB, 1 BGR, 2 GRAY (vitedge models take RGB)."""
PROBS = "probs"
"""The output nvinfer's classifier parser reads: softmax of the logits."""
@dataclass
class DeepStreamExport:
    """What `export_deepstream` wrote."""

    config: Path
    model: Path
    labels: Path | None
    properties: dict[str, str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.config.parent), "config": str(self.config),
                "model": str(self.model),
                "labels": str(self.labels) if self.labels else None,
                "properties": self.properties, "notes": self.notes}


def scale_and_offsets(manifest: Manifest) -> tuple[float, list[float]]:
    """nvinfer's (net-scale-factor, offsets) that reproduce the model's normalisation
    exactly, or one VitedgeError saying why none can and what to export instead."""
    if manifest.input == "pixels":
        return 1.0, [0.0] * manifest.architecture.in_chans
    if manifest.input != "images":
        raise VitedgeError(
            f"nvinfer feeds float NCHW images; this model takes {manifest.input}",
            "export it with `vitedge export ... --input pixels` (or images)")
    prep = manifest.preprocess
    channels = manifest.architecture.in_chans
    mean = list(prep.mean) * (channels if len(prep.mean) == 1 else 1)
    std = list(prep.std) * (channels if len(prep.std) == 1 else 1)
    if any(not math.isclose(s, std[0], rel_tol=1e-6) for s in std):
        raise VitedgeError(
            f"nvinfer normalises with one scale for all channels; this model's std is "
            f"per channel ({', '.join(f'{s:g}' for s in std)}), which no nvinfer config "
            "expresses exactly",
            "export with `vitedge export ... --input pixels`: its graph normalises 0..255 "
            "pixels itself")
    return 1.0 / (255.0 * std[0]), [255.0 * m for m in mean]


def deepstream_properties(manifest: Manifest, model_file: str, labels_file: str | None,
                          options: DeepStreamOptions) -> dict[str, str]:
    """The `[property]` keys, in the order nvinfer's documentation lists them."""
    scale, offsets = scale_and_offsets(manifest)
    cfg = manifest.architecture
    if cfg.num_classes < 1:
        raise VitedgeError("this model has no classification head (it outputs features)",
                           "nvinfer's classifier needs one; export a classifier")
    props = {
        "gpu-id": "0",
        "net-scale-factor": repr(scale),
        "offsets": ";".join(repr(o) for o in offsets),
        "model-color-format": str(COLOR_FORMATS.get(cfg.in_chans, 0)),
        "onnx-file": model_file,
        "infer-dims": f"{cfg.in_chans};{cfg.img_size[0]};{cfg.img_size[1]}",
        "batch-size": str(options.batch_size),
        "network-mode": str(NETWORK_MODES[manifest.precision]),
        "network-type": "1",
        "process-mode": "1" if options.process_mode == "primary" else "2",
        "output-blob-names": PROBS,
        "classifier-threshold": repr(options.classifier_threshold),
        "gie-unique-id": str(options.gie_id),
        "maintain-aspect-ratio": "0",
    }
    if labels_file:
        props["labelfile-path"] = labels_file
    if options.process_mode == "secondary" and options.operate_on_gie_id is not None:
        props["operate-on-gie-id"] = str(options.operate_on_gie_id)
    return props


def with_probabilities(model: Any, manifest: Manifest) -> Any:
    """The model with a Softmax of its logits as the output `probs` (logits kept), and its
    manifest recorded anew for the changed graph."""
    from onnx import TensorProto, helper

    from vitedge.manifest import set_onnx_manifest

    logits = manifest.output_name
    model.graph.node.append(helper.make_node("Softmax", [logits], [PROBS], name="probs.softmax",
                                             axis=-1))
    dims = [d.dim_param or d.dim_value for d in next(
        o for o in model.graph.output if o.name == logits).type.tensor_type.shape.dim]
    model.graph.output.append(helper.make_tensor_value_info(PROBS, TensorProto.FLOAT, dims))
    set_onnx_manifest(model, manifest)
    return model


def export_deepstream(artifact: str | Path, out_dir: str | Path,
                      options: DeepStreamOptions | None = None) -> DeepStreamExport:
    """Write `OUT/config_infer_<name>.txt`, `OUT/<name>.onnx` (with `probs`) and
    `OUT/labels.txt` for nvinfer, from a vitedge ONNX model (export, FP16 or INT8 Q/DQ:
    nvinfer builds the TensorRT engine on the device from it)."""
    import configparser
    import io

    import onnx

    from vitedge.backends import is_onnx_artifact
    from vitedge.fileio import make_folder, write_text_atomic
    from vitedge.graph import load_onnx, save_onnx
    from vitedge.inputs import refuse_overwriting_inputs
    from vitedge.manifest import require_manifest

    options = options or DeepStreamOptions()
    src, out = Path(artifact), Path(out_dir)
    if not is_onnx_artifact(src):
        raise VitedgeError(
            f"{src.name} is an engine: nvinfer builds its own from the ONNX model on the "
            "device, with the Softmax its classifier parser reads",
            "give the .onnx it was built from")
    model = load_onnx(src)
    manifest = require_manifest(model, src)
    if manifest.source.get("backend"):
        raise VitedgeError(f"{src.name} was built for {manifest.source['backend']} (its fused "
                           "operators are not TensorRT's)",
                           "give the exported or quantized .onnx it was built from")
    name = src.name.removesuffix(".onnx").replace(".", "_") or "model"
    model_file, labels_file = f"{name}.onnx", "labels.txt" if manifest.labels else None
    props = deepstream_properties(manifest, model_file, labels_file, options)
    notes = []
    if manifest.preprocess.resize != manifest.preprocess.crop:
        notes.append("nvinfer scales the whole frame (or object) to "
                     f"{manifest.preprocess.crop[0]}x{manifest.preprocess.crop[1]}; the model's "
                     f"resize to {manifest.preprocess.resize[0]}x{manifest.preprocess.resize[1]} "
                     "and centre crop are not reproduced (crop upstream where it matters)")
    if any(";" in label for label in manifest.labels or []):
        notes.append("labels with ';' had it replaced by ',' (nvinfer separates labels with ';')")
    parser = configparser.ConfigParser()
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser["property"] = props
    text = io.StringIO()
    parser.write(text)
    header = (f"# DeepStream Gst-nvinfer config for {src.name}, written by vitedge "
              f"export-deepstream.\n# Normalisation y = net-scale-factor * (x - offsets[c]) "
              f"reproduces the model's own (mean {list(manifest.preprocess.mean)}, std "
              f"{list(manifest.preprocess.std)}).\n")
    config = out / f"config_infer_{name}.txt"
    for target in (config, out / model_file, out / "labels.txt"):
        refuse_overwriting_inputs(target, src)
    make_folder(out)
    save_onnx(with_probabilities(model, manifest), out / model_file,
              external=bool(manifest.integrity.get("external_sha256")) or None)
    onnx.checker.check_model(str(out / model_file))
    labels_path = None
    if labels_file:
        labels_path = out / labels_file
        write_text_atomic(labels_path, ";".join(lab.replace(";", ",") for lab in manifest.labels
                                                or []) + "\n")
    write_text_atomic(config, header + text.getvalue())
    return DeepStreamExport(config, out / model_file, labels_path, props, notes)
