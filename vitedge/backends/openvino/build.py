"""The OpenVINO artifact: vitedge's own ONNX graph (FP32, FP16 or INT8 Q/DQ: its calibration,
equalisation and Q/DQ placement, not NNCF's) converted by OpenVINO's ONNX frontend and saved
as an IR, `MODEL.PRECISION.ov.xml` with its weights in `MODEL.PRECISION.ov.bin`. INT8 weights
get the 7-bit encoding every CPU's integer kernels compute exactly (oneDNN on AVX2 saturates
16-bit lanes as ONNX Runtime's MLAS does: `vitedge.backends.cpu_int8`). The manifest, what the
build was, and the sha256 of the weights file travel in the IR's runtime information."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from vitedge.backends.cpu_int8 import WEIGHT_BITS, seven_bit_weights
from vitedge.backends.openvino.settings import OpenVINOSettings
from vitedge.errors import MissingDependency, VitedgeError
from vitedge.fileio import sha256_file
from vitedge.graph import load_onnx, save_onnx
from vitedge.lifetime import scratch_folder
from vitedge.manifest import Manifest

if TYPE_CHECKING:
    from vitedge.profiles import Profile

MANIFEST_INFO = ["vitedge", "manifest"]
"""Where the manifest sits in the IR's runtime information."""
BUILD_INFO = ["vitedge", "build"]
"""And what the build was: OpenVINO version, precision hint policy, weights' sha256,
verification."""


def require_openvino() -> Any:
    try:
        import openvino
    except ImportError as exc:
        raise MissingDependency("the openvino backend needs OpenVINO, which is not installed",
                                "pip install 'vitedge[openvino]' (or openvino), or use "
                                "--backend onnxruntime") from exc
    return openvino


def weights_path(xml: Path) -> Path:
    """The IR's weights file: MODEL.ov.bin beside MODEL.ov.xml."""
    return xml.with_suffix(".bin")


@dataclass
class OpenVINOBuild:
    model: Any
    """The openvino.Model as written (its runtime information can still be amended)."""
    graph: onnx.ModelProto
    """The ONNX graph the IR computes (INT8: the Q/DQ graph with 7-bit weights): what
    verification compares it with."""
    manifest: Manifest
    info: dict[str, Any]


def build_openvino(onnx_path: Path, xml: Path, manifest: Manifest, profile: Profile
                   ) -> OpenVINOBuild:
    """Convert and write the IR at `xml` (and its .bin)."""
    ov = require_openvino()
    graph = load_onnx(onnx_path)
    int8 = manifest.precision == "int8"
    if int8:
        seven_bit_weights(graph)
    with scratch_folder("openvino-") as tmp:
        source = Path(tmp) / "model.onnx"
        save_onnx(graph, source)
        try:
            model = ov.convert_model(str(source))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own exception types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise VitedgeError(f"OpenVINO cannot convert {onnx_path.name}: {first}",
                               "build it with --backend onnxruntime") from None
    settings = profile.section("openvino", OpenVINOSettings)
    version = str(ov.__version__).split("-")[0]
    manifest.source = {**manifest.source, "backend": "openvino",
                       "openvino_version": version, "profile": profile.name,
                       "precision_hint": settings.precision_hint,
                       **({"int8_weight_bits": WEIGHT_BITS} if int8 else {})}
    info = {"openvino_version": version, "precision_hint": settings.precision_hint,
            "threads": settings.threads, "int8_weight_bits": WEIGHT_BITS if int8 else None,
            "quantized_layers": quantized_layers(graph) if int8 else 0}
    built = OpenVINOBuild(model, graph, manifest, info)
    write_ir(built, xml)
    return built


def quantized_layers(graph: onnx.ModelProto) -> int:
    """MatMul / Gemm / Conv nodes of a Q/DQ graph whose weight comes through a
    DequantizeLinear: the layers an INT8 kernel should run."""
    dequantized = {o for n in graph.graph.node if n.op_type == "DequantizeLinear"
                   for o in n.output}
    return sum(1 for n in graph.graph.node
               if n.op_type in ("MatMul", "Gemm", "Conv") and len(n.input) > 1
               and n.input[1] in dequantized)


def write_ir(built: OpenVINOBuild, xml: Path) -> None:
    """Save the IR with its manifest and build record; the weights file's sha256 goes into
    the record (saved once to know it, then again with it: the weights are the same bytes)."""
    ov = require_openvino()
    manifest = built.manifest
    manifest.integrity = {"manifest_sha256": manifest.digest()}
    built.model.set_rt_info(manifest.to_json(), MANIFEST_INFO)
    if "bin_sha256" not in built.info:
        ov.save_model(built.model, str(xml), compress_to_fp16=False)
        built.info["bin_sha256"] = sha256_file(weights_path(xml))
    built.model.set_rt_info(json.dumps(built.info, sort_keys=True), BUILD_INFO)
    ov.save_model(built.model, str(xml), compress_to_fp16=False)
    if sha256_file(weights_path(xml)) != built.info["bin_sha256"]:
        raise VitedgeError("OpenVINO wrote other weights the second time; please report it")


def read_ir(xml: Path, verify: bool = True) -> tuple[Any, Manifest, dict[str, Any]]:
    """(openvino.Model, manifest, build record) of a vitedge IR; with `verify`, its weights
    file checked against the record."""
    ov = require_openvino()
    if not weights_path(xml).is_file():
        raise VitedgeError(f"{xml.name} keeps its weights in {weights_path(xml).name}, which is "
                           "missing", "copy the .ov.bin beside the .ov.xml")
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VitedgeError(f"{xml} is not an OpenVINO IR OpenVINO can read: {first}") from None
    if not model.has_rt_info(MANIFEST_INFO) or not model.has_rt_info(BUILD_INFO):
        raise VitedgeError(f"{xml} has no vitedge manifest",
                           "build it with `vitedge build --backend openvino`")
    manifest = Manifest.from_json(model.get_rt_info(MANIFEST_INFO).astype(str))
    try:
        info = json.loads(model.get_rt_info(BUILD_INFO).astype(str))
    except ValueError:
        raise VitedgeError(f"{xml}: its vitedge build record is not JSON") from None
    if verify and sha256_file(weights_path(xml)) != info.get("bin_sha256"):
        from vitedge.manifest import IntegrityError

        raise IntegrityError(f"{xml}: its weights file {weights_path(xml).name} was changed or "
                             "replaced since vitedge wrote it", "build it again")
    return model, manifest, info
