"""INT8 for a token-reuse pair (`vitedge.export.streaming`: a streaming graph and its full
pass), calibrated on real states.

A streaming step reads the state the previous frames left (reference tokens and cached
QKV / projection / MLP values), so the ranges of its Linear inputs come from the FP32 pair
run over a sequence of frames the way `vitedge.runtime.tokens.TokenReuse` runs it (a full
pass first and every `refresh`-th frame, the streaming graph with the state carried in
between), not from images one by one. Each layer's histogram takes the values of both
graphs (the same layer, found by position and checked by its weight), so the full pass and
the streaming graph quantize it with the same scale: a streaming step reuses tokens the full
pass computed. Ranges come from those histograms by `CalibrationOptions.method` as
`vitedge calibrate` makes them (`histogram.py`).

Q/DQ go where `qdq.py` puts them for the plain graph (the `vit` scheme: the inputs and
weights of the patch embedding, QKV, projection, fc1, fc2 and the head; with
`attention`, Q*K^T and probabilities*V). Layers are found structurally (a MatMul or Conv
whose weight is an initializer; the head's Gemm is written as MatMul + Add first), so the
gates (TopK, gathers, scatters, the change norms) and the state stay in float."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from vitedge.errors import VitedgeError
from vitedge.graph import with_outputs
from vitedge.manifest import Manifest
from vitedge.options import CalibrationOptions, QuantizeOptions
from vitedge.quantize.graph import linear_layers
from vitedge.quantize.histogram import TensorHistogram, amax_from_histogram
from vitedge.quantize.qdq import QuantizationPlan, insert_qdq, plan_quantization
from vitedge.runtime.tokens import STATE_INPUT, STATE_OUTPUT, with_zero_state

REFRESH = 30
"""Frames between full passes while calibrating and verifying: TokenReuse's default."""


@dataclass
class PairQuantization:
    """The INT8 full pass and streaming graph, and how they were made."""

    full: onnx.ModelProto
    stream: onnx.ModelProto
    layers: list[str]
    """The quantized layers, by the full pass's names, in graph order."""
    frames: int
    """Calibration frames (full passes and streaming steps together)."""
    full_passes: int
    info: dict[str, Any] = field(default_factory=dict)


def gemm_as_matmul(model: onnx.ModelProto) -> int:
    """Each Gemm with a constant weight (the head: alpha = beta = 1, A not transposed)
    rewritten in place as MatMul + Add, the form `linear_layers` finds; how many."""
    inits = {t.name: t for t in model.graph.initializer}
    done, nodes = 0, []
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in inits or node.input[0] in inits or \
                attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or \
                attrs.get("transA", 0):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        w = w.T if attrs.get("transB", 0) else w
        weight = f"{node.input[1]}.matmul"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), weight))
        product = f"{node.output[0]}.product"
        nodes.append(helper.make_node("MatMul", [node.input[0], weight],
                                      [product if len(node.input) > 2 else node.output[0]],
                                      name=f"{node.name or 'gemm'}/MatMul"))
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name or 'gemm'}/Add"))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    from vitedge.graph import drop_unused_initializers

    drop_unused_initializers(model.graph)
    return done


def _plan(model: onnx.ModelProto, options: QuantizeOptions) -> QuantizationPlan:
    if options.scheme != "vit":
        raise VitedgeError(f"a streaming graph quantizes with the vit scheme only, not "
                           f"{options.scheme} (it would quantize the gates' state arithmetic)",
                           "drop --scheme")
    return plan_quantization(model, options)


def _matched(full: onnx.ModelProto, stream: onnx.ModelProto, options: QuantizeOptions
             ) -> tuple[QuantizationPlan, QuantizationPlan]:
    """The two graphs' plans, position by position the same layers (each Linear's weight
    equal in both), or one line saying they are not one model's pair."""
    plans = _plan(full, options), _plan(stream, options)
    layers = [linear_layers(full), linear_layers(stream)]
    inits = [{t.name: t for t in g.graph.initializer} for g in (full, stream)]
    same = len(layers[0]) == len(layers[1]) and len(plans[0].activations) == \
        len(plans[1].activations) and all(
            a.node.op_type == b.node.op_type and np.array_equal(
                numpy_helper.to_array(inits[0][a.weight]), numpy_helper.to_array(inits[1][b.weight]))
            for a, b in zip(*layers, strict=False))
    if not same:
        raise VitedgeError("the streaming graph and its full pass do not hold the same layers",
                           "export the pair again with `vitedge export --token-reuse K`")
    return plans


def run_sequence(full: Any, stream: Any, frames: Iterator[np.ndarray] | np.ndarray,
                 refresh: int = REFRESH) -> Iterator[tuple[bool, dict[str, np.ndarray]]]:
    """(whether it was a full pass, every output by name) for each frame (C, H, W) of a
    sequence, run as TokenReuse runs one camera: `full` and `stream` are callables from
    {input name: array} to {output name: array} taking the frame as `images`."""
    state: dict[str, np.ndarray] | None = None
    since = 0
    for frame in frames:
        is_full = state is None or since + 1 >= refresh
        x = np.ascontiguousarray(frame[None], np.float32)
        out = (full if is_full else stream)({"images": x, **(state or {})})
        state = {STATE_INPUT + n.removeprefix(STATE_OUTPUT): v for n, v in out.items()
                 if n.startswith(STATE_OUTPUT)}
        since = 0 if is_full else since + 1
        yield is_full, out


def ort_step(session: Any) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """An ONNX Runtime session as `run_sequence` calls it (a missing state: zeros)."""
    inputs = session.get_inputs()
    names = [o.name for o in session.get_outputs()]

    def step(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, with_zero_state(inputs, feed)), strict=True))

    return step


def quantize_pair(full: onnx.ModelProto, stream: onnx.ModelProto, frames: np.ndarray,
                  calibration: CalibrationOptions, options: QuantizeOptions,
                  manifests: tuple[Manifest, Manifest] | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  refresh: int = REFRESH) -> PairQuantization:
    """INT8 Q/DQ copies of the FP32 `full` pass and `stream` graph, the ranges measured on
    `frames` (N, C, H, W, in order: one camera's sequence) run through the FP32 pair."""
    from vitedge.sessions import ort_session

    graphs = []
    for g in (full, stream):
        copy = onnx.ModelProto()
        copy.CopyFrom(g)
        gemm_as_matmul(copy)
        graphs.append(copy)
    plans = _matched(graphs[0], graphs[1], options)
    tensors = [list(p.activations) for p in plans]
    inputs = [{i.name for i in g.graph.input} for g in graphs]
    sessions = [ort_session(with_outputs(g, [t for t in ts if t not in ins]),
                            optimization="basic", arena=False)
                for g, ts, ins in zip(graphs, tensors, inputs, strict=True)]
    hists = [TensorHistogram() for _ in tensors[0]]
    steps = [_measuring(s, ts) for s, ts in zip(sessions, tensors, strict=True)]
    passes = seen = 0
    for is_full, out in run_sequence(steps[0], steps[1], frames, refresh):
        for h, name in zip(hists, tensors[0 if is_full else 1], strict=True):
            h.add(out[name])
        passes += is_full
        seen += 1
        if progress is not None:
            progress(seen, len(frames))
    if seen == 0:
        raise VitedgeError("no frame to calibrate the streaming pair on", "give --data FRAMES")
    amax = [amax_from_histogram(h, calibration.method, calibration.percentile) for h in hists]
    quantized = []
    for g, plan, ts in zip(graphs, plans, tensors, strict=True):
        insert_qdq(g, plan, dict(zip(ts, amax, strict=True)))
        quantized.append(g)
    if manifests is not None:
        info = {"scheme": options.scheme, "attention": options.attention,
                "method": calibration.method, "equalized": False,
                "calibrated_on": f"{seen} frames in sequence ({passes} full passes)",
                "float_layers": []}
        for g, m in zip(quantized, manifests, strict=True):
            from vitedge.manifest import set_onnx_manifest

            m = Manifest.from_json(m.to_json())
            m.precision = "int8"
            m.source = {**m.source, "quantization": info}
            set_onnx_manifest(g, m)
    return PairQuantization(quantized[0], quantized[1], list(plans[0].layers), seen, passes,
                            {"layers": len(plans[0].layers), "frames": seen,
                             "full_passes": passes})


def _measuring(session: Any, tensors: list[str]) -> Callable[[dict[str, np.ndarray]],
                                                             dict[str, np.ndarray]]:
    """`ort_step` that also hands back the inputs it was given (the patch embedding reads
    the image, a graph input)."""
    step = ort_step(session)

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = step(feed)
        for t in tensors:
            if t not in out and t in feed:
                out[t] = feed[t]
        return out

    return run


def describe(result: PairQuantization) -> str:
    return (f"INT8: {len(result.layers)} layers per graph, ranges from the FP32 pair over "
            f"{result.frames} frames in sequence ({result.full_passes} full passes), one scale "
            "per layer for both graphs")
