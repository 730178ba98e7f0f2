"""FP16 conversion for TensorRT's strongly typed networks (10.x with STRONGLY_TYPED, 11.x
always): the precision is in the graph. Weights and activations become float16; the graph's
inputs and outputs stay float32; LayerNormalization runs in float32 (its mean of squares is
where FP16 overflows), and so does any op whose calibrated output range comes near FP16's
limit of 65504."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.quantize.graph import drop_unused_initializers, float_activations, topological_order

FP16_MAX = 65504.0
OVERFLOW_MARGIN = 4.0
"""An op is kept in float32 when its calibrated |output| exceeds FP16_MAX / OVERFLOW_MARGIN:
the calibration images are a sample, and later images may go further."""
KEEP_FP32_OPS = ("LayerNormalization",)
ANY_TYPE_OPS = ("Shape",)


@dataclass
class Fp16Report:
    fp32_nodes: list[str] = field(default_factory=list)
    overflow_nodes: list[str] = field(default_factory=list)
    """Nodes kept in float32 because their calibrated range came near FP16's limit."""
    casts: int = 0
    checked_ranges: bool = False


def convert_fp16(model: onnx.ModelProto, ranges: dict[str, dict[str, float]] | None = None
                 ) -> tuple[onnx.ModelProto, Fp16Report]:
    """A float16 copy of the FP32 `model`; `ranges` (calibration table stats, with
    `absmax` per tensor) enables the overflow check."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    graph = m.graph
    report = Fp16Report(checked_ranges=ranges is not None)
    floats = set(float_activations(m))
    inits = {t.name: t for t in graph.initializer}
    float_inits = {n for n, t in inits.items() if t.data_type == TensorProto.FLOAT}
    limit = FP16_MAX / OVERFLOW_MARGIN

    dtype: dict[str, int] = {i.name: TensorProto.FLOAT for i in graph.input}
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def as_type(tensor: str, want: int) -> str:
        if tensor in float_inits:
            if want == TensorProto.FLOAT:
                return tensor
            if tensor not in half_inits:
                half = f"{tensor}.fp16"
                arr = numpy_helper.to_array(inits[tensor]).astype(np.float16)
                graph.initializer.append(numpy_helper.from_array(arr, half))
                half_inits[tensor] = half
            return half_inits[tensor]
        if dtype.get(tensor, want) == want:
            return tensor
        key = (tensor, want)
        if key not in casts:
            suffix = "fp16" if want == TensorProto.FLOAT16 else "fp32"
            casts[key] = f"{tensor}.{suffix}"
            new_nodes.append(helper.make_node("Cast", [tensor], [casts[key]],
                                              name=f"{tensor}.cast_{suffix}", to=want))
            report.casts += 1
        return casts[key]

    for node in graph.node:
        float_io = [t for t in (*node.input, *node.output) if t in floats or t in float_inits]
        if not float_io or node.op_type in ANY_TYPE_OPS:
            new_nodes.append(node)
            continue
        over = ranges is not None and any(
            ranges.get(o, {}).get("absmax", 0.0) > limit for o in node.output)
        keep = node.op_type in KEEP_FP32_OPS or over
        if over:
            report.overflow_nodes.append(node.name)
        if keep:
            report.fp32_nodes.append(node.name)
        want = TensorProto.FLOAT if keep else TensorProto.FLOAT16
        for i, tensor in enumerate(node.input):
            if tensor in floats or tensor in float_inits:
                node.input[i] = as_type(tensor, want)
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i in (TensorProto.FLOAT, TensorProto.FLOAT16):
                    attr.i = want  # a cast into the float graph casts into its precision
        for out in node.output:
            if out in floats:
                dtype[out] = want
        new_nodes.append(node)

    outputs = {o.name for o in graph.output}
    for out in outputs:
        if dtype.get(out) == TensorProto.FLOAT16:
            inner = f"{out}.fp16_out"
            for node in new_nodes:
                node.output[:] = [inner if o == out else o for o in node.output]
                node.input[:] = [inner if i == out else i for i in node.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out], name=f"{out}.cast_fp32",
                                              to=TensorProto.FLOAT))
            report.casts += 1

    del graph.node[:]
    graph.node.extend(topological_order(new_nodes, graph))
    drop_unused_initializers(graph)
    del graph.value_info[:]
    return m, report
