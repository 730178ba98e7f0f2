"""The OpenVINO artifact: vitedge's own ONNX graph (FP32, FP16 or INT8 Q/DQ: its calibration,
equalisation and Q/DQ placement, not NNCF's) converted by OpenVINO's ONNX frontend and saved
as an IR, `MODEL.PRECISION.ov.xml` with its weights in `MODEL.PRECISION.ov.bin`. INT8 weights
get the 7-bit encoding every CPU's integer kernels compute exactly (oneDNN on AVX2 saturates
16-bit lanes as ONNX Runtime's MLAS does: `vitedge.backends.cpu_int8`). The manifest, what the
build was, and the sha256 of the weights file travel in the IR's runtime information."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def cpu_capabilities(core: Any) -> list[str]:
    """OpenVINO's OPTIMIZATION_CAPABILITIES of the CPU device (FP32, INT8, BF16, ...)."""
    try:
        return [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]
    except Exception:  # noqa: BLE001 - no CPU plugin: nothing to report
        return []


def compile_model(core: Any, model: Any, target: str, hint: str, threads: int | None,
                  name: str) -> Any:
    """`model` compiled for `target` (CPU: float parts in `hint`, f32 or bf16)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if target == "CPU":
        config["INFERENCE_PRECISION_HINT"] = hint
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        return core.compile_model(model, target, config)
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VitedgeError(f"OpenVINO cannot compile {name} for {target}: {first}") from None


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
    notes: list[str] = field(default_factory=list)


MEASURE_SECONDS = 0.5
"""Time an INT8 build runs each float-parts choice for (after a warm-up) to keep the faster."""


def choose_float_parts(ov: Any, model: Any, precision: str, policy: str, threads: int
                       ) -> tuple[str, dict[str, float], list[str]]:
    """(INFERENCE_PRECISION_HINT, what was measured, notes) for an artifact of `precision`.
    fp32 (and fp16, which the CPU computes in FP32) is f32 whatever the profile says; bf16 is
    bf16 and needs a CPU with BF16 arithmetic; an INT8 build's float parts follow the
    profile's `precision_hint`, where `auto` measures both on this CPU and keeps BF16 only if
    it is faster (the build's verification then judges what was kept)."""
    core = ov.Core()
    caps = cpu_capabilities(core)
    if precision == "bf16":
        if "BF16" not in caps:
            raise VitedgeError("this CPU has no BF16 arithmetic (AVX-512 BF16 or AMX): OpenVINO "
                               "would compute a bf16 model in FP32 here",
                               "--precision fp32 or int8, or build on a CPU with AVX-512 BF16 "
                               "or AMX (Zen 4+, Sapphire Rapids+, Core Ultra)")
        return "bf16", {}, []
    if precision != "int8":
        notes = ([f"the profile's precision_hint {policy} is for an INT8 build's float parts: "
                  f"{precision} computes in FP32 (--precision bf16 asks for BF16)"]
                 if policy == "bf16" else [])
        return "f32", {}, notes
    if policy != "auto" or "BF16" not in caps:
        return ("bf16" if policy == "bf16" and "BF16" in caps else "f32"), {}, []
    measured = {name: _median_ms(core, model, hint, threads)
                for name, hint in (("fp32", "f32"), ("bf16", "bf16"))}
    hint = "bf16" if measured["bf16"] < measured["fp32"] else "f32"
    return hint, measured, [f"OpenVINO's float parts in {'BF16' if hint == 'bf16' else 'FP32'}: "
                            f"measured faster here (a batch-1 inference: FP32 "
                            f"{measured['fp32']:.2f} ms, BF16 {measured['bf16']:.2f} ms)"]


def _median_ms(core: Any, model: Any, hint: str, threads: int) -> float:
    """Median milliseconds of a batch-1 inference of `model` on the CPU with `hint`."""
    import numpy as np

    from vitedge.backends.base import median_ms

    compiled = compile_model(core, model, "CPU", hint, threads or None, "the model")
    port = compiled.inputs[0]
    shape = [d.get_length() if d.is_static else 1 for d in port.get_partial_shape()]
    x = np.zeros(shape, np.dtype(port.get_element_type().to_dtype()))
    request = compiled.create_infer_request()
    return median_ms(lambda: request.infer({0: x}), MEASURE_SECONDS)


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
    hint, measured, notes = choose_float_parts(ov, model, manifest.precision,
                                               settings.precision_hint, settings.threads)
    manifest.source = {**manifest.source, "backend": "openvino",
                       "openvino_version": version, "profile": profile.name,
                       "precision_hint": hint,
                       **({"int8_weight_bits": WEIGHT_BITS} if int8 else {})}
    info = {"openvino_version": version, "precision_hint": settings.precision_hint,
            "float_parts": {"f32": "fp32"}.get(hint, hint), "float_parts_ms": measured,
            "threads": settings.threads, "int8_weight_bits": WEIGHT_BITS if int8 else None,
            "quantized_layers": quantized_layers(graph) if int8 else 0}
    built = OpenVINOBuild(model, graph, manifest, info, notes)
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
