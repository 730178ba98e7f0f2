"""FP32 ONNX -> an FP16 graph whose Linear layers carry FP8, NVFP4 or INT8 Q/DQ, a format per
layer: what `--precision fp8`, `nvfp4` and `auto` write for strongly typed TensorRT
(10.x with STRONGLY_TYPED, 11.x, TensorRT for RTX).

- FP8 (E4M3): QuantizeLinear / DequantizeLinear with float8e4m3fn zero points (opset 19),
  FP16 scales amax / 448; weights per output channel, activations per tensor with the
  calibrated |max| (E4M3's exponent covers the range: nothing to clip).
- NVFP4: weights E2M1 in blocks of 16 along the reduction axis, each block scaled by an E4M3
  scale, those by one per-tensor scale: FLOAT4E2M1 -> DequantizeLinear(block_size=16) whose
  scale is DequantizeLinear(E4M3 block scales, per-tensor scale) (opset 23). Activations:
  "nvfp4", TensorRT's dynamic block quantizer `trt::TRT_FP4DynamicQuantize` (block 16 along
  the last axis, E4M3 block scales, then the same two DequantizeLinear; TensorRT 11 and
  TensorRT for RTX build it), or "fp8" (W4A8, for TensorRT 10.8+). Convolutions (the patch
  embedding) and layers whose reduction axis is no multiple of 16 get FP8: TensorRT has no
  FP4 convolutions.
- INT8: symmetric, as `qdq.py`, with FP16 scales (for targets without FP8).

By default the ends (patch embedding and head) stay FP16 and every LayerNorm, the final one
included, stays FP32 (`fp16.py`): ModelOpt's ViT recipe (docs/sources.md#fp8-nvfp4-vit).
`attention=True` adds FP8 Q/DQ in the pattern TensorRT's fused-attention documentation
describes for quantized MHA: Q (scaled by 1/sqrt(d) before the first matrix product, as that
page requires) and K before Q*K^T, the Softmax output (fixed scale 1/448: it lies in [0, 1])
and V before probabilities*V.
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.emulation import FP4_BLOCK, FP4_MAX, FP4_QUANTIZER, FP8_MAX, TRT_DOMAIN
from vitedge.errors import VitedgeError
from vitedge.precisions import LAYER_FORMATS
from vitedge.quantize.fp16 import convert_fp16
from vitedge.quantize.graph import (
    activation_matmuls,
    drop_unused_initializers,
    linear_layers,
    topological_order,
)
from vitedge.quantize.histogram import INT8_MAX
from vitedge.quantize.table import CalibrationTable

FORMATS = LAYER_FORMATS
OPSET_FP8 = 19
OPSET_FP4 = 23


def _ml_dtypes() -> Any:
    try:
        import ml_dtypes
    except ImportError as exc:  # pragma: no cover - onnx >= 1.18 brings it
        raise VitedgeError("FP8 / NVFP4 need the ml_dtypes package",
                           "pip install 'ml_dtypes>=0.5'") from exc
    return ml_dtypes


def is_end(layer_name: str, op_type: str) -> bool:
    """The patch embedding (a convolution, or the patch projection) and the head."""
    return op_type == "Conv" or layer_name.startswith("patch_embed") or \
        layer_name == "head" or layer_name.startswith("head.")


def layer_formats(model: onnx.ModelProto, precision: str, ends: bool = False,
                  exclude: tuple[str, ...] = (), keep_float: tuple[str, ...] = ()
                  ) -> dict[str, str]:
    """Every Linear layer of the FP32 `model` -> its format for `precision`: fp16 for the
    ends (unless `ends`), for names matching `exclude` (fnmatch) and for `keep_float`."""
    formats = {}
    for layer in linear_layers(model):
        kept = layer.name in keep_float or any(fnmatch.fnmatchcase(layer.name, p) for p in exclude)
        end = is_end(layer.name, layer.node.op_type) and not ends
        formats[layer.name] = "fp16" if kept or end else precision
    return formats


@dataclass
class MixedPlan:
    formats: dict[str, str] = field(default_factory=dict)
    """Layer -> the format written (NVFP4 layers that could not be are FP8 here)."""
    activations: str = "fp8"
    """NVFP4's activation form: nvfp4 (dynamic) or fp8 (W4A8)."""
    attention: list[str] = field(default_factory=list)
    """Attention matrix products with FP8 inputs."""
    fp32_nodes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def format_counts(formats: dict[str, str]) -> dict[str, int]:
    """How many layers each format has (layer -> format in, format -> count out)."""
    return dict(Counter(formats.values()))


def quantize_mixed(model: onnx.ModelProto, table: CalibrationTable, formats: dict[str, str],
                   fp4_activations: str = "fp8", attention: bool = False
                   ) -> tuple[onnx.ModelProto, MixedPlan]:
    """A copy of the FP32 `model` in FP16 with each layer of `formats` quantized as it says
    (layers not named stay FP16), scales from the calibration `table`."""
    unknown = sorted(set(formats.values()) - set(FORMATS))
    if unknown:
        raise VitedgeError(f"unknown layer format {unknown[0]}", f"one of {', '.join(FORMATS)}")
    ranges = table.ranges(False)
    layers = {layer.name: layer for layer in linear_layers(model)}
    inits = {t.name: t for t in model.graph.initializer}
    half, report = convert_fp16(model, ranges)
    plan = MixedPlan(activations=fp4_activations, fp32_nodes=report.fp32_nodes)
    writer = _Writer(half)
    for name, fmt in formats.items():
        layer = layers[name]
        node = writer.nodes[layer.node.name]
        if fmt == "nvfp4" and (layer.node.op_type != "MatMul" or
                               inits[layer.weight].dims[0] % FP4_BLOCK):
            plan.notes.append(f"{name}: FP8 instead of NVFP4 ("
                              + ("a convolution: TensorRT has no FP4 convolutions)"
                                 if layer.node.op_type != "MatMul" else
                                 f"its reduction axis is no multiple of {FP4_BLOCK})"))
            fmt = "fp8"
        plan.formats[name] = fmt
        if fmt == "fp16":
            continue
        if layer.activation not in ranges:
            raise VitedgeError(f"the calibration table has no range for {layer.activation}",
                               "recalibrate this model")
        stats = ranges[layer.activation]
        weight = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        if fmt == "int8":
            node.input[0] = writer.int8_activation(node.input[0], stats["amax"], node.name)
            node.input[1] = writer.int8_weight(layer.weight, weight, layer.channel_axis, node.name)
        elif fmt == "fp8":
            node.input[0] = writer.fp8_activation(node.input[0], stats["absmax"], node.name)
            node.input[1] = writer.fp8_weight(layer.weight, weight, layer.channel_axis, node.name)
        else:
            node.input[0] = (writer.fp4_activation(node.input[0], stats["absmax"], node.name)
                             if fp4_activations == "nvfp4" else
                             writer.fp8_activation(node.input[0], stats["absmax"], node.name))
            node.input[1] = writer.fp4_weight(layer.weight, weight, node.name)
    if attention:
        plan.attention = writer.fp8_attention(
            ranges, [n.name for n in activation_matmuls(model)])
    writer.finish(OPSET_FP4 if writer.fp4 else OPSET_FP8)
    return half, plan


class _Writer:
    """Inserts Q/DQ into the FP16 graph: each new node goes before the node that reads it
    (`before`), one Q/DQ per (tensor, format) however many layers read it."""

    def __init__(self, model: onnx.ModelProto):
        self.model, self.graph = model, model.graph
        self.nodes = {n.name: n for n in self.graph.node}
        self.new: dict[str, list[onnx.NodeProto]] = {}
        self.shared: dict[tuple[str, str], str] = {}
        self.dropped: set[str] = set()
        self.fp4 = False

    def _add(self, before: str, *nodes: onnx.NodeProto) -> None:
        self.new.setdefault(before, []).extend(nodes)

    def _init(self, array: np.ndarray, name: str) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array, name))
        return name

    def _qdq(self, tensor: str, scale: np.ndarray, zero: np.ndarray, fmt: str,
             before: str) -> str:
        key = (tensor, fmt)
        if key not in self.shared:
            s = self._init(scale, f"{tensor}.{fmt}_scale")
            z = self._init(zero, f"{tensor}.{fmt}_zero_point")
            q = helper.make_node("QuantizeLinear", [tensor, s, z], [f"{tensor}.{fmt}"],
                                 name=f"{tensor}.{fmt}_quantize")
            dq = helper.make_node("DequantizeLinear", [q.output[0], s, z],
                                  [f"{tensor}.{fmt}_dequantized"],
                                  name=f"{tensor}.{fmt}_dequantize")
            self._add(before, q, dq)
            self.shared[key] = dq.output[0]
        return self.shared[key]

    def fp8_activation(self, tensor: str, amax: float, before: str) -> str:
        return self._qdq(tensor, fp16_scale(amax / FP8_MAX), fp8_zero(), "fp8", before)

    def int8_activation(self, tensor: str, amax: float, before: str) -> str:
        return self._qdq(tensor, fp16_scale(amax / INT8_MAX), np.zeros((), np.int8), "int8",
                         before)

    def _weight_dq(self, name: str, values: np.ndarray, scales: np.ndarray, zero: np.ndarray,
                   axis: int, before: str) -> str:
        w = self._init(values, name)
        s = self._init(scales, f"{name}.scale")
        z = self._init(zero, f"{name}.zero_point")
        dq = helper.make_node("DequantizeLinear", [w, s, z], [f"{name}.dequantized"],
                              name=f"{name}.dequantize", axis=axis)
        self._add(before, dq)
        return dq.output[0]

    def fp8_weight(self, weight: str, w: np.ndarray, axis: int, before: str) -> str:
        q, scales = fp8_weight(w, axis)
        return self._weight_dq(f"{weight}.fp8", q, scales,
                               np.zeros(len(scales), _ml_dtypes().float8_e4m3fn), axis, before)

    def int8_weight(self, weight: str, w: np.ndarray, axis: int, before: str) -> str:
        from vitedge.quantize.qdq import quantize_weight

        q, scales32 = quantize_weight(w, axis)
        scales = scales32.astype(np.float16)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.round(w / scales.astype(np.float32).reshape(shape)), -INT8_MAX,
                    INT8_MAX).astype(np.int8)  # against the FP16 scale the graph holds
        return self._weight_dq(f"{weight}.int8", q, scales, np.zeros(len(scales), np.int8),
                               axis, before)

    def fp4_weight(self, weight: str, w: np.ndarray, before: str) -> str:
        self.fp4 = True
        q, block_scales, tensor_scale = nvfp4_weight(w)
        name = f"{weight}.nvfp4"
        self._init(q, name)
        self._init(block_scales, f"{name}.block_scale")
        self._init(tensor_scale, f"{name}.scale")
        scales = helper.make_node("DequantizeLinear", [f"{name}.block_scale", f"{name}.scale"],
                                  [f"{name}.block_scale.dequantized"],
                                  name=f"{name}.block_scale.dequantize")
        dq = helper.make_node("DequantizeLinear", [name, scales.output[0]],
                              [f"{name}.dequantized"], name=f"{name}.dequantize",
                              axis=0, block_size=FP4_BLOCK)
        self._add(before, scales, dq)
        return dq.output[0]

    def fp4_activation(self, tensor: str, amax: float, before: str) -> str:
        key = (tensor, "nvfp4")
        if key in self.shared:
            return self.shared[key]
        self.fp4 = True
        name = f"{tensor}.nvfp4"
        s = self._init(fp16_scale(amax / (FP4_MAX * FP8_MAX)), f"{name}.scale")
        quantize = helper.make_node(FP4_QUANTIZER, [tensor, s], [name, f"{name}.block_scale"],
                                    name=f"{name}.quantize", domain=TRT_DOMAIN, axis=-1,
                                    block_size=FP4_BLOCK, scale_type=TensorProto.FLOAT8E4M3FN)
        scales = helper.make_node("DequantizeLinear", [f"{name}.block_scale", s],
                                  [f"{name}.block_scale.dequantized"],
                                  name=f"{name}.block_scale.dequantize")
        dq = helper.make_node("DequantizeLinear", [name, scales.output[0]],
                              [f"{name}.dequantized"], name=f"{name}.dequantize", axis=-1,
                              block_size=FP4_BLOCK)
        self._add(before, quantize, scales, dq)
        self.shared[key] = dq.output[0]
        return dq.output[0]

    def fp8_attention(self, ranges: dict[str, dict[str, float]], names: list[str]
                      ) -> list[str]:
        """FP8 Q/DQ on both inputs of both attention matrix products (see the module's
        docstring); the 1/sqrt(d) scaling moved onto Q first where it follows Q*K^T."""
        made_by = {o: n for n in self.graph.node for o in n.output}
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                readers.setdefault(i, []).append(n)
        inits = {t.name: t for t in self.graph.initializer}
        done = []
        for mm in (self.nodes[n] for n in names):
            first = made_by.get(mm.input[0])
            if first is not None and first.op_type == "Softmax":  # probabilities * V
                mm.input[0] = self._qdq(mm.input[0], fp16_scale(1.0 / FP8_MAX), fp8_zero(),
                                        "fp8", mm.name)
                mm.input[1] = self.fp8_activation(mm.input[1], _absmax(ranges, mm.input[1]),
                                                  mm.name)
                done.append(mm.name)
                continue
            q_tensor, scale = mm.input[0], 1.0
            after = readers.get(mm.output[0], [])
            if len(after) == 1 and after[0].op_type == "Mul" and after[0].input[1] in inits:
                mul = after[0]  # Q*K^T * s becomes (Q * s) * K^T
                scale = float(numpy_helper.to_array(inits[mul.input[1]]).astype(np.float32))
                for reader in readers.get(mul.output[0], []):
                    reader.input[:] = [mm.output[0] if i == mul.output[0] else i
                                       for i in reader.input]
                self.dropped.add(mul.name)
                scaled = helper.make_node("Mul", [q_tensor, mul.input[1]],
                                          [f"{q_tensor}.scaled"], name=f"{mul.name}.on_q")
                self._add(mm.name, scaled)
                mm.input[0] = scaled.output[0]
            q_amax = _absmax(ranges, q_tensor) * abs(scale)
            mm.input[0] = self.fp8_activation(mm.input[0], q_amax, mm.name)
            mm.input[1] = self.fp8_activation(mm.input[1], _absmax(ranges, mm.input[1]), mm.name)
            done.append(mm.name)
        return done

    def finish(self, opset: int) -> None:
        ordered: list[onnx.NodeProto] = []
        for node in self.graph.node:
            ordered.extend(self.new.get(node.name, []))
            if node.name not in self.dropped:
                ordered.append(node)
        del self.graph.node[:]
        self.graph.node.extend(topological_order(ordered, self.graph))
        drop_unused_initializers(self.graph)
        raise_opset(self.model, opset)
        if self.fp4 and not any(o.domain == TRT_DOMAIN for o in self.model.opset_import):
            self.model.opset_import.append(helper.make_opsetid(TRT_DOMAIN, 1))
        if self.model.ir_version < 11 and self.fp4:
            self.model.ir_version = 11  # FLOAT4E2M1 arrived with IR version 11


AXES_BECAME_AN_INPUT = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                        "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
"""Operators whose `axes` attribute became an input in opset 18 (ReduceSum's in 13)."""


def raise_opset(model: onnx.ModelProto, opset: int) -> None:
    """The default domain's opset raised to `opset` (FP8 Q/DQ needs 19, NVFP4 23), with the
    nodes whose signature changed on the way rewritten to the new one: a Reduce op's `axes`
    attribute becomes an int64 input (EVA-02's mean pooling), and a Split with neither split
    sizes nor `num_outputs` gets `num_outputs`."""
    entries = [e for e in model.opset_import if e.domain in ("", "ai.onnx")]
    old = min((e.version for e in entries), default=opset)
    if old >= opset:
        return
    graph = model.graph
    if old < 18 <= opset:
        for node in graph.node:
            if node.op_type in AXES_BECAME_AN_INPUT:
                axes = next((a for a in node.attribute if a.name == "axes"), None)
                if axes is None:
                    continue
                name = f"{node.name or node.output[0]}.axes"
                graph.initializer.append(numpy_helper.from_array(
                    np.asarray(list(axes.ints), np.int64), name))
                node.attribute.remove(axes)
                node.input.append(name)
            elif node.op_type == "Split" and len(node.input) < 2 and not any(
                    a.name == "num_outputs" for a in node.attribute):
                node.attribute.append(helper.make_attribute("num_outputs", len(node.output)))
    for entry in entries:
        entry.version = max(entry.version, opset)


def _absmax(ranges: dict[str, dict[str, float]], tensor: str) -> float:
    base = tensor.removesuffix(".fp16")
    if base not in ranges:
        raise VitedgeError(f"the calibration table has no range for {base}",
                           "recalibrate this model (vitedge calibrate)")
    return float(ranges[base]["absmax"])


def fp16_scale(value: float | np.ndarray) -> np.ndarray:
    """A scale as the FP16 the graph holds: never zero or subnormal-small."""
    return np.maximum(np.asarray(value, np.float32), 2.0 ** -24).astype(np.float16)


def fp8_zero() -> np.ndarray:
    return np.zeros((), _ml_dtypes().float8_e4m3fn)


def to_fp8(x: np.ndarray) -> np.ndarray:
    """E4M3 (round to nearest even, saturating at +-448, as QuantizeLinear's default)."""
    return np.clip(x, -FP8_MAX, FP8_MAX).astype(_ml_dtypes().float8_e4m3fn)


def to_fp4(x: np.ndarray) -> np.ndarray:
    """E2M1 (round to nearest even, saturating at +-6)."""
    return np.clip(x, -FP4_MAX, FP4_MAX).astype(_ml_dtypes().float4_e2m1fn)


def fp8_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """E4M3 weights per output channel along `axis`: (float8 weights, FP16 scales)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    scales = fp16_scale(np.abs(w).max(axis=reduce) / FP8_MAX)
    shape = [1] * w.ndim
    shape[axis] = -1
    return to_fp8(w / scales.astype(np.float32).reshape(shape)), scales


def nvfp4_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A [K, N] weight in NVFP4, blocks of 16 along K: (E2M1 weights [K, N], E4M3 block
    scales [K/16, N], the FP16 per-tensor scale)."""
    k, n = w.shape
    blocks = w.reshape(k // FP4_BLOCK, FP4_BLOCK, n)
    tensor_scale = fp16_scale(np.abs(w).max() / (FP4_MAX * FP8_MAX))
    block_amax = np.abs(blocks).max(axis=1)
    block_scales = to_fp8(block_amax / FP4_MAX / np.float32(tensor_scale))
    effective = (block_scales.astype(np.float32) * np.float32(tensor_scale)).astype(np.float16)
    eff = effective.astype(np.float32)[:, None, :]
    scaled = np.divide(blocks, eff, out=np.zeros_like(blocks), where=eff > 0)
    return to_fp4(scaled.reshape(k, n)), block_scales, tensor_scale
