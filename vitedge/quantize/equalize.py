"""Channel equalisation in the spirit of SmoothQuant: move per-channel activation scale
into the next Linear's weights before quantizing, without changing the function.

A few channels of a large ViT's LayerNorm outputs and attention values are tens of times
larger than the rest; one per-tensor int8 scale cannot serve both. For an activation X
feeding a Linear with weight W (in, out), channel j is divided by s_j where X is made (the
LayerNorm's gamma and beta, or V's weight columns and bias) and row j of W is multiplied
by s_j, with s_j = max|X_j|^alpha / max|W_j|^(1 - alpha).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from vitedge.options import CalibrationOptions, default
from vitedge.quantize.graph import PASS_THROUGH, consumers, initializer_names, producers

DEFAULT_ALPHA = default(CalibrationOptions, "smooth_alpha")


@dataclass
class SmoothPair:
    """`tensor`'s channels are divided by making `divide` (initializer, start, stop: a
    slice of its last axis) smaller, and undone by multiplying rows of `multiply`."""

    tensor: str
    divide: list[tuple[str, int, int]] = field(default_factory=list)
    multiply: list[str] = field(default_factory=list)


def smoothing_pairs(model: onnx.ModelProto) -> list[SmoothPair]:
    """LayerNorm -> Linear(s), and attention V -> output projection, where the graph
    allows a per-channel scale to be folded exactly."""
    inits = {t.name: t for t in model.graph.initializer}
    uses = consumers(model)
    pairs: list[SmoothPair] = []
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and len(node.input) == 3:
            weights = _linear_endpoints(node.output[0], uses, set(inits))
            if weights:
                d = int(np.prod(inits[node.input[1]].dims))
                pairs.append(SmoothPair(node.output[0], [(node.input[1], 0, d), (node.input[2], 0, d)],
                                        weights))
    made_by = producers(model)
    for node in model.graph.node:
        if node.op_type != "MatMul" or not node.name.endswith(".attn.proj/MatMul"):
            continue
        prefix = node.name.removesuffix(".proj/MatMul")
        merged, proj_w = node.input
        if proj_w not in inits or merged not in made_by:
            continue
        d = inits[proj_w].dims[0]
        if f"{prefix}.qkv.weight" not in inits:  # the graph builder always fuses QKV
            continue
        divide = [(f"{prefix}.qkv.weight", 2 * d, 3 * d)]
        if f"{prefix}.qkv.bias" in inits:
            divide.append((f"{prefix}.qkv.bias", 2 * d, 3 * d))
        pairs.append(SmoothPair(merged, divide, [proj_w]))
    return pairs


def _linear_endpoints(tensor: str, uses: dict, inits: set[str]) -> list[str]:
    """Weights of the Linears `tensor` reaches through channel-preserving ops; empty if
    it reaches anything else."""
    weights: list[str] = []
    stack = [tensor]
    while stack:
        for node, index in uses.get(stack.pop(), []):
            if node.op_type == "MatMul" and index == 0 and node.input[1] in inits:
                weights.append(node.input[1])
            elif node.op_type in PASS_THROUGH and index == 0 and _keeps_last_axis(node):
                stack.append(node.output[0])
            else:
                return []
    return weights


def _keeps_last_axis(node: onnx.NodeProto) -> bool:
    axes = [a.i for a in node.attribute if a.name == "axis"] + \
           [i for a in node.attribute if a.name == "axes" for i in a.ints]
    return all(a not in (-1, 2) for a in axes) and (node.op_type != "Slice" or len(node.input) > 3)


def smoothing_factors(model: onnx.ModelProto, pairs: list[SmoothPair],
                      channel_amax: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    inits = {t.name: t for t in model.graph.initializer}
    factors: dict[str, np.ndarray] = {}
    for pair in pairs:
        x_max = np.asarray(channel_amax[pair.tensor], np.float64)
        w_max = np.max([np.abs(numpy_helper.to_array(inits[w])).max(axis=1) for w in pair.multiply],
                       axis=0)
        s = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1 - alpha)
        factors[pair.tensor] = np.clip(s, 1e-4, 1e4).astype(np.float32)
    return factors


def apply_smoothing(model: onnx.ModelProto, pairs: list[SmoothPair],
                    factors: dict[str, np.ndarray]) -> None:
    """Rewrite the pairs' initializers in place; the model computes the same function."""
    inits = {t.name: t for t in model.graph.initializer}
    for pair in pairs:
        s = np.asarray(factors[pair.tensor], np.float32)
        for name, start, stop in pair.divide:
            arr = numpy_helper.to_array(inits[name]).copy()
            arr[..., start:stop] /= s
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
        for name in pair.multiply:
            arr = numpy_helper.to_array(inits[name]) * s[:, None]
            inits[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))


def changed_tensors(model: onnx.ModelProto, pairs: list[SmoothPair]) -> set[str]:
    """The activations whose values smoothing changes: downstream of a divided initializer,
    up to the Linear whose multiplied weight undoes it."""
    divided = {name for p in pairs for name, _, _ in p.divide}
    multiplied = {name for p in pairs for name in p.multiply}
    inits = initializer_names(model)
    changed: set[str] = set()
    for node in model.graph.node:  # graph order is topological
        acts_changed = any(i in changed for i in node.input)
        if any(i in divided for i in node.input) or acts_changed and not (node.op_type == "MatMul" and node.input[1] in multiplied
                                   and node.input[1] not in divided and node.input[1] in inits):
            changed.update(node.output)
    return changed


def with_outlier_channels(model: onnx.ModelProto, per_tensor: int = 4,
                          factors: tuple[float, float] = (20.0, 60.0), seed: int = 0
                          ) -> onnx.ModelProto:
    """A copy of `model` computing the same function whose LayerNorm outputs and attention
    values have a few channels 20-60x larger than the rest, as large pretrained ViTs do: the
    stress test for per-tensor activation scales (equalisation run backwards)."""
    rng = np.random.default_rng(seed)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    pairs = smoothing_pairs(copy)
    inits = {t.name: t for t in copy.graph.initializer}
    scales = {}
    for pair in pairs:
        name, start, stop = pair.divide[0]
        channels = stop - start if inits[name].dims else 0
        s = np.ones(channels, np.float32)
        pick = rng.choice(channels, size=min(per_tensor, channels), replace=False)
        s[pick] = 1.0 / rng.uniform(*factors, size=len(pick))
        scales[pair.tensor] = s
    apply_smoothing(copy, pairs, scales)
    from vitedge.manifest import manifest_from_onnx, set_onnx_manifest

    manifest = manifest_from_onnx(copy)
    if manifest is not None:  # a vitedge model stays one: its record matches its new graph
        manifest.source = {**manifest.source, "stress_copy": True}
        set_onnx_manifest(copy, manifest)
    return copy
