"""`vitedge quantize`: an FP32 export to an INT8 (explicit Q/DQ) or FP16 ONNX model that
TensorRT 10 and 11 build the same way, checked for TensorRT's parser and measured against
the FP32 model on calibration images before it is written."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from vitedge.compare import COLLAPSE_COSINE, Agreement, agreement, judge
from vitedge.datasets import image_source, model_inputs
from vitedge.emulation import cpu_graph
from vitedge.errors import ExportError, VitedgeError
from vitedge.export.tensorrt_ops import parser_summary, tensorrt_check
from vitedge.fileio import sha256_file
from vitedge.graph import data_files, load_onnx, save_onnx
from vitedge.inputs import refuse_overwriting_inputs
from vitedge.manifest import require_manifest, set_onnx_manifest
from vitedge.options import QuantizeRequest
from vitedge.precisions import FP8_FAMILY
from vitedge.quantize.calibrate import CalibrationTable, calibrate, default_table_path
from vitedge.quantize.fp16 import convert_fp16
from vitedge.quantize.mixed import format_counts, layer_formats, quantize_mixed
from vitedge.quantize.qdq import QuantizeOptions, plan_quantization, quantize_int8
from vitedge.report import Reporter, reporter
from vitedge.sessions import graph_output

if TYPE_CHECKING:
    from vitedge.target import Target

CHECK_IMAGES = 64
"""Calibration images on which the written model is compared with the FP32 model."""


@dataclass
class QuantizeResult:
    output: Path
    precision: str
    size_bytes: int
    table: str | None
    quantized_layers: list[str] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    fp32_nodes: list[str] = field(default_factory=list)
    overflow_nodes: list[str] = field(default_factory=list)
    check: Agreement | None = None
    """Against FP32, the quantized graph computed in float (TensorRT's reading)."""
    check_integer: Agreement | None = None
    """INT8: against FP32 on ONNX Runtime's integer kernels on this CPU, the graph as is."""
    check_integer_exact: Agreement | None = None
    """INT8: the same with vitedge's CPU-exact (7-bit) weights, as vitedge runs it."""
    check_images: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    parser_check: str = ""
    """Which TensorRT parser checks the graph passed, in one line."""
    check_data: str = ""
    """What `check` was measured on, or why nothing was compared with FP32."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """How: the scheme, attention, calibration method, what stayed in float."""
    formats: dict[str, str] = field(default_factory=dict)
    """FP8 / NVFP4 / auto: each Linear layer's format."""
    auto: dict[str, Any] = field(default_factory=dict)
    """--precision auto: the target, the formats it chose from, the budget and the result."""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    def summary_lines(self) -> list[str]:
        """What was quantized and what was kept in float, in words."""
        counts = ", ".join(f"{n} {f}" for f, n in sorted(self.quantization.get("formats",
                                                                                {}).items()))
        if self.auto:
            a = self.auto
            lines = [f"--precision auto for {a['target']}: {counts} (of {', '.join(a['formats'])}"
                     f", base {a['base']}); {a['budget']}: "
                     + ("kept" if a["within"] else "missed") + f" ({a['measured']})"]
            by_format: dict[str, list[str]] = {}
            for layer, fmt in self.formats.items():
                by_format.setdefault(fmt, []).append(layer)
            lines += [f"  {fmt} ({len(names)}): {', '.join(names)}"
                      for fmt, names in by_format.items()]
            return lines
        if self.precision in FP8_FAMILY:
            q = self.quantization
            acts = {"nvfp4": "dynamic NVFP4 activations (W4A4)",
                    "fp8": "FP8 activations (W4A8)"}.get(q.get("activations", ""), "")
            return [f"layers: {counts}" + (f"; {acts}" if acts else "")
                    + ("; FP8 attention" if q.get("attention") else "")
                    + (f"; kept FP16: {', '.join(self.float_layers)}" if self.float_layers else "")
                    + f"; {q['fp32_nodes']} nodes (LayerNorm) in FP32"]
        if self.precision == "int8":
            q = self.quantization
            kept = f"; kept in float: {', '.join(self.float_layers)}" if self.float_layers else ""
            return [f"quantized {len(self.quantized_layers)} layers ({q.get('scheme')} scheme"
                    + (", attention" if q.get("attention") else "") + ")" + kept]
        risk = f"; overflow risk: {', '.join(self.overflow_nodes)}" if self.overflow_nodes else ""
        return [f"{len(self.fp32_nodes)} nodes kept in float32 (LayerNorm{risk})"]

    def check_lines(self) -> list[str]:
        """How the written model compares with FP32, in words; [] when it was not checked."""
        if self.check is None:
            return []
        c = self.check
        lines = [f"vs FP32 on {self.check_data}; the graph in float (as TensorRT reads it): "
                 f"top-1 agreement {c.top1_agreement:.1%}, mean KL {c.mean_kl:.2e}, logit "
                 f"cosine {c.cosine:.5f}"]
        if self.check_integer_exact:
            e = self.check_integer_exact
            lines.append(f"  on ONNX Runtime's integer kernels (vitedge's CPU weights): top-1 "
                         f"agreement {e.top1_agreement:.1%}, mean KL {e.mean_kl:.2e}")
        return lines


def quantize_model(model_path: str | Path, output: str | Path, request: QuantizeRequest,
                   report: Reporter | None = None, made_by: str = "quantize",
                   target: Target | None = None) -> QuantizeResult:
    """The FP32 model at `model_path` quantized as `request` says, written to `output` once
    it passed its checks. Its manifest records what it was made from and by whom
    (`made_by`: a model `vitedge build` made is its own to make again). `target`: the
    build's (`vitedge.target`), whose targets decide --precision auto's formats and NVFP4's
    activations; without one, `request.profile`'s, read where those need it."""
    start = time.perf_counter()
    if target is None and request.profile and request.needs_target:
        from vitedge.target import load_profile, target_for

        target = target_for(load_profile(request.profile))
    rep = reporter(report)
    step = rep.step
    refuse_overwriting_inputs(output, model_path, request.calib)
    model = load_onnx(model_path)
    manifest = require_manifest(model, model_path)
    external = bool(manifest.integrity.get("external_sha256")) or None  # kept as it came
    if manifest.precision != "fp32":
        raise VitedgeError(f"{model_path} is already {manifest.precision}",
                           "quantize the FP32 export")
    if request.sensitivity and not request.data:
        raise VitedgeError("--sensitivity needs --data (images to measure the layers on)")
    result = QuantizeResult(Path(output), request.precision, 0, None)
    model_sha = sha256_file(model_path)

    table: CalibrationTable | None = None
    scaled = request.precision != "fp16"  # every precision but FP16 needs activation ranges
    if request.calib and request.data and scaled and not request.sensitivity and \
            request.precision != "auto":
        result.notes.append("--calib given: --data is used only to check the result")
    if request.calib:
        table = CalibrationTable.read(request.calib)
        table.check_model(model_sha, model_path)
        result.table = request.calib
    elif request.data:
        step("calibrating")
        calib = calibrate(model_path, default_table_path(model_path),
                          replace(request.calibration, data=request.data), rep)
        table, result.table = calib.table, str(calib.output)
        if calib.reused:
            result.notes.append(f"calibration table {calib.output} reused (same model, data, options)")
    elif scaled:
        raise VitedgeError(f"{request.precision.upper()} needs activation ranges",
                           "give --calib TABLE or --data SOURCE")

    if request.precision == "auto" and request.check_source is None and request.data:
        request = replace(request, check_source=image_source(  # measured and checked on these
            request.data, AUTO_IMAGES, request.calibration.seed + 2))
    check_inputs = _check_inputs(request, table, manifest, result)
    if request.precision == "int8":
        assert table is not None
        quantized, info = _int8(model, table, request, check_inputs, result, rep)
    elif request.precision in FP8_FAMILY:
        assert table is not None
        quantized, info = _fp8_nvfp4(model, table, request, target, check_inputs, result, rep)
    elif request.precision == "auto":
        assert table is not None and target is not None
        quantized, info = _auto(model, model_path, table, request, target, manifest, result, rep)
    else:
        step("converting to FP16")
        quantized, fp16 = convert_fp16(model, table.ranges(False) if table else None)
        result.fp32_nodes, result.overflow_nodes = fp16.fp32_nodes, fp16.overflow_nodes
        if table is None:
            result.notes.append("no calibration data: FP16 overflow was not checked "
                                "(give --data or --calib to check ranges against 65504)")
        info = {"fp32_nodes": len(fp16.fp32_nodes), "overflow_checked": fp16.checked_ranges}

    step("checking")
    result.quantization = info
    manifest.precision = info.pop("graph_precision", request.precision)
    manifest.source = {**manifest.source, "quantization": info,
                       "fp32_sha256": model_sha, "made_by": made_by,
                       "quantize": request.key(table.checksum() if table else None)}
    set_onnx_manifest(quantized, manifest)
    check_quantized(quantized)
    result.parser_check = parser_summary()
    if check_inputs is not None:
        _check_against_fp32(result, request, model, quantized, check_inputs,
                            manifest.is_classifier)
    step("writing")
    save_onnx(quantized, output, external=external)
    result.size_bytes = Path(output).stat().st_size + sum(
        f.stat().st_size for f in data_files(Path(output)))
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def _int8(model: onnx.ModelProto, table: CalibrationTable, request: QuantizeRequest,
          check_inputs: np.ndarray | None, result: QuantizeResult, rep: Reporter
          ) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Explicit INT8 Q/DQ in the FP32 graph (`qdq.py`)."""
    keep: tuple[str, ...] = ()
    if request.sensitivity:
        rep.step("measuring layer sensitivity")
        assert check_inputs is not None
        result.sensitivity = layer_sensitivity(model, table, request.qdq, check_inputs, rep)
        keep = tuple(name for name, _ in result.sensitivity[:request.sensitivity])
    rep.step("inserting Q/DQ")
    quantized, plan = quantize_int8(model, table, request.qdq, keep)
    all_layers = plan_quantization(model, QuantizeOptions(
        scheme=request.qdq.scheme, attention=request.qdq.attention)).layers
    result.quantized_layers = plan.layers
    result.float_layers = [n for n in all_layers if n not in plan.layers]
    return quantized, {"scheme": request.qdq.scheme, "attention": request.qdq.attention,
                       "method": table.options["method"],
                       "equalized": request.qdq.smoothing and bool(table.smoothing),
                       "float_layers": result.float_layers}


def fp4_activations(request: QuantizeRequest, target: Target | None) -> str:
    """NVFP4's activation form: as asked, else what the target's backend builds, else FP8
    (W4A8, which every TensorRT with NVFP4 builds)."""
    if request.qdq.fp4_activations != "auto":
        return request.qdq.fp4_activations
    return target.nvfp4_activations if target is not None else "fp8"


def _fp8_nvfp4(model: onnx.ModelProto, table: CalibrationTable, request: QuantizeRequest,
               target: Target | None, check_inputs: np.ndarray | None, result: QuantizeResult,
               rep: Reporter) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """FP8 / NVFP4 Q/DQ in an FP16 graph (`mixed.py`)."""
    acts = fp4_activations(request, target) if request.precision == "nvfp4" else "fp8"
    keep: tuple[str, ...] = ()
    if request.sensitivity:
        rep.step("measuring layer sensitivity")
        assert check_inputs is not None
        result.sensitivity = layer_sensitivity(model, table, request.qdq, check_inputs, rep,
                                               request.precision, acts)
        keep = tuple(name for name, _ in result.sensitivity[:request.sensitivity])
    rep.step("inserting Q/DQ")
    q = request.qdq
    formats = layer_formats(model, request.precision, q.ends, q.exclude, keep)
    quantized, plan = quantize_mixed(model, table, formats, acts, q.attention)
    result.formats = plan.formats
    result.quantized_layers = [n for n, f in plan.formats.items() if f != "fp16"]
    result.float_layers = [n for n, f in plan.formats.items() if f == "fp16"]
    result.fp32_nodes = plan.fp32_nodes
    result.notes.extend(plan.notes)
    info: dict[str, Any] = {"formats": format_counts(plan.formats), "attention": plan.attention != [],
                            "ends": q.ends, "float_layers": result.float_layers,
                            "fp32_nodes": len(plan.fp32_nodes)}
    if request.precision == "nvfp4":
        info["activations"] = acts
    return quantized, info


AUTO_IMAGES = 512
"""Images `--precision auto` checks its budget on (of --data): a budget of 0.5 points is one
image in 200, so a few hundred images are the least that can tell it."""


def _auto(model: onnx.ModelProto, model_path: str | Path, table: CalibrationTable,
          request: QuantizeRequest, target: Target, manifest: Any, result: QuantizeResult,
          rep: Reporter) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A format per layer for the target's targets (`auto.py`)."""
    from vitedge.quantize.auto import auto_formats, choose_formats

    profile, targets = target.profile, target.targets
    formats, base = auto_formats(target.column, targets)
    if not formats:
        raise VitedgeError(f"profile {profile.name}'s targets ({', '.join(targets) or 'none'}) "
                           "accelerate no quantized format vitedge makes",
                           "build --precision fp16 or fp32 for it")
    if request.check_source is None:
        raise VitedgeError("--precision auto needs --data (images to measure the layers on)")
    source = request.check_source
    x = np.stack(list(model_inputs(source, manifest)))
    acts = fp4_activations(request, target)
    q = request.qdq
    if base == "fp32":
        layers = list(plan_quantization(model, q).layers)

        def graph(assignment: dict[str, str]) -> onnx.ModelProto:
            keep = tuple(n for n, f in assignment.items() if f == "fp32")
            return quantize_int8(model, table, q, keep)[0]
    else:
        layers = [n for n, f in layer_formats(model, "quantized", True, q.exclude).items()
                  if f != "fp16"]

        def graph(assignment: dict[str, str]) -> onnx.ModelProto:
            return quantize_mixed(model, table, assignment, acts, q.attention)[0]

    choice = choose_formats(layers, formats, base, graph, _run_check, _run(model, x), x,
                            manifest.is_classifier, request.max_drop, rep)
    if base == "fp16":
        quantized, plan = quantize_mixed(model, table, choice.formats, acts, q.attention)
        choice.formats = plan.formats  # as written (an NVFP4 convolution is FP8)
    else:
        quantized = graph(choice.formats)
    result.formats = choice.formats
    result.quantized_layers = [n for n, f in choice.formats.items() if f != base]
    result.float_layers = [n for n, f in choice.formats.items() if f == base]
    result.auto = {"target": f"profile {profile.name}: {', '.join(targets)}",
                   "formats": list(formats), "base": base, "budget": choice.budget,
                   "within": choice.within, "images": len(x),
                   "measured": choice.check.describe(), "graphs_measured": choice.measured_graphs}
    if not choice.within:
        result.notes.append(f"--precision auto: even with every layer in {base} the model misses "
                            f"the budget ({choice.budget}); it is written as measured")
    info: dict[str, Any] = {"formats": format_counts(choice.formats), "per_layer": choice.formats,
                            "budget": choice.budget, "base": base,
                            "graph_precision": "mixed" if base == "fp16" else "int8"}
    if "nvfp4" in formats:
        info["activations"] = acts
    return quantized, info


def _run_check(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """A quantized graph computed as the CPU checks it: Q/DQ in float, NVFP4 emulated."""
    return _run(cpu_graph(model), x, "none")


def _check_against_fp32(result: QuantizeResult, request: QuantizeRequest, fp32: onnx.ModelProto,
                        quantized: onnx.ModelProto, x: np.ndarray, classifier: bool) -> None:
    """The quantized graph against FP32, computed in float (as TensorRT reads it) and, for
    INT8, on the embedded backend's integer kernels on this CPU (`Backend.check_int8`: the
    graph as it stands, and as vitedge's runtime runs it), with a note where they differ."""
    from vitedge.backends import embedded

    reference = _run(fp32, x)
    result.check = agreement(reference, _run_check(quantized, x))
    result.check_images = len(x)
    if request.precision == "int8":
        kernels = embedded().check_int8(reference, quantized, x, result.check)
        if kernels is not None:
            result.check_integer, result.check_integer_exact = kernels.as_is, kernels.as_run
            if kernels.note:
                result.notes.append(kernels.note)
    kept = judge(result.check, request.min_fp32_agreement, COLLAPSE_COSINE,
                 classifier, worst=False)
    if not kept.ok:
        raise VitedgeError(
            f"quantization collapsed the model: against FP32, {kept.measure}, on {len(x)} "
            "images; nothing was written",
            "check the calibration table (recalibrate with vitedge calibrate), try --method "
            "entropy, keep sensitive layers in float (--sensitivity N) or use fp16")


def check_quantized(model: onnx.ModelProto) -> None:
    """The ONNX checker, and TensorRT's parser rules; a failure here is vitedge's bug."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the quantized graph is not valid ONNX: {str(exc).splitlines()[0]}") from exc
    problems = tensorrt_check(model)
    if problems:
        raise ExportError(f"the quantized graph would not parse in TensorRT: {problems[0]}"
                          + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))


def _check_inputs(request: QuantizeRequest, table: CalibrationTable | None, manifest: Any,
                  result: QuantizeResult) -> np.ndarray | None:
    """Up to CHECK_IMAGES images to compare the result with FP32 on: of --data, else of the
    data the calibration table was made from (not held out, and said so); where neither is
    at hand, None, with `result.check_data` saying why nothing was compared."""
    seed = request.calibration.seed
    if request.check_source is not None:
        source = request.check_source
        what = ("of --data, those --precision auto measured on" if request.data else
                "held out of calibration")
    elif request.data:
        source, what = image_source(request.data, CHECK_IMAGES, seed), "of --data"
    elif table is not None and table.data.get("source") and Path(table.data["source"]).exists():
        source = image_source(table.data["source"], CHECK_IMAGES, seed + 1)
        what = "the calibration table was made from (not held out: --data checks on others)"
    else:
        where = table.data.get("source") if table is not None else None
        result.check_data = ("not compared with FP32: no --data" + (
            f", and the calibration table's data ({where}) is not here" if where else "")
            + "; give --data IMAGES to check")
        result.notes.append(result.check_data)
        return None
    x = np.stack(list(model_inputs(source, manifest)))
    result.check_data = f"{len(x)} images {what}: {source.path}"
    return x


def _run(model: onnx.ModelProto, x: np.ndarray, optimization: str = "all") -> np.ndarray:
    """The output of a model on ONNX Runtime; "none" computes Q/DQ in float."""
    return graph_output(model, x, optimization)


def layer_sensitivity(model: onnx.ModelProto, table: CalibrationTable, options: QuantizeOptions,
                      inputs: np.ndarray, report: Reporter | None = None,
                      precision: str = "int8", fp4_acts: str = "fp8"
                      ) -> list[tuple[str, float]]:
    """Each quantizable layer's effect alone: mean KL divergence of the softmax from the
    FP32 model's when only that layer is quantized (in `precision`). Most sensitive first."""
    reference = _run(model, inputs)
    if precision == "int8":
        layers = plan_quantization(model, options).layers
    else:
        layers = [n for n, f in layer_formats(model, precision, options.ends,
                                              options.exclude).items() if f != "fp16"]
    scores = []
    for i, layer in enumerate(layers):
        if precision == "int8":
            others = tuple(n for n in layers if n != layer)
            single, _ = quantize_int8(model, table, options, keep_float=others)
        else:
            single, _ = quantize_mixed(model, table, {layer: precision}, fp4_acts)
        scores.append((layer, agreement(reference, _run_check(single, inputs)).mean_kl))
        reporter(report).progress(i + 1, len(layers))
    return sorted(scores, key=lambda s: -s[1])
