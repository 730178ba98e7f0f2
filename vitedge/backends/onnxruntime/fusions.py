"""Graph rewrites for the ONNX Runtime CPU artifact that ONNX Runtime's own optimizer does
not make for a vitedge graph. Each gives the same numbers as the graph it replaces (the
attention fusion to float rounding, the two folds exactly) and each is skipped where its
pattern is not met exactly, so an unusual graph is left as it was, never changed wrongly.

- `fuse_attention`: reshape/transpose/Q*K^T/scale/softmax/*V/merge of each block becomes
  one `com.microsoft.MultiHeadAttention`, which runs the heads without the transposes;
  token merging's proportional attention (log sizes added to the logits) becomes its
  attention bias.
  Skipped where the attention probabilities are a graph output (`explain` reads them) or
  quantized (Q/DQ inside the pattern), and for float16.
- `fold_bias_adds`: the bias Add after an integer MatMul goes into its bias input.
- `fold_constant_dequantize`: a DequantizeLinear of a constant weight that ONNX Runtime did
  not fuse into an integer kernel (patch-embedding Conv, head) is computed once, here,
  instead of on every call.
- `fuse_quantized_attention`: after ONNX Runtime's optimizations, an INT8 block's QKV
  integer MatMul, its Split and its MultiHeadAttention become one `com.microsoft.QAttention`,
  which writes each head's q, k and v straight from the integer GEMM (ViT-S INT8 on 2
  cores: 3-5 % faster, interleaved in one process). `split_quantized_attention` undoes
  it for `explain`, which reads q and k."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.graph import consumers, drop_unused_initializers, producers

MS_DOMAIN = "com.microsoft"


def _const(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None or node.op_type != "Transpose":
        return None
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


class _Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.inits = {t.name: t for t in model.graph.initializer}
        self.made_by = producers(model)
        self.used_by = consumers(model)
        self.outputs = {o.name for o in model.graph.output}

    def only_use(self, tensor: str) -> onnx.NodeProto | None:
        uses = self.used_by.get(tensor, [])
        if tensor in self.outputs or len(uses) != 1:
            return None
        return uses[0][0]

    def heads_of(self, tensor: str, perm: list[int]) -> tuple[str, list[onnx.NodeProto], int] | None:
        """`tensor` = Transpose(perm)(Reshape(x, [0, 0, heads, dim])) used once: (x, nodes, heads)."""
        transpose = self.made_by.get(tensor)
        if _perm(transpose) != perm or self.only_use(tensor) is None:
            return None
        assert transpose is not None
        reshape = self.made_by.get(transpose.input[0])
        if reshape is None or reshape.op_type != "Reshape" or self.only_use(reshape.output[0]) is None:
            return None
        shape = _const(self.inits, reshape.input[1])
        if shape is None or shape.tolist()[:2] != [0, 0] or len(shape) != 4:
            return None
        return reshape.input[0], [reshape, transpose], int(shape[2])


_Match = tuple[list[onnx.NodeProto], onnx.NodeProto, onnx.NodeProto]
"""The nodes a rewrite removes, the one whose place the new node takes, the new node."""


def _replace_matches(model: onnx.ModelProto, op_type: str,
                     match: Callable[[_Graph, onnx.NodeProto], _Match | None]) -> int:
    """Each node of `op_type` that `match` matches, rewritten in place; returns how many."""
    g = _Graph(model)
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for node in [n for n in model.graph.node if n.op_type == op_type]:
        found = match(g, node)
        if found is not None:
            nodes, anchor, new = found
            removed.update(id(n) for n in nodes)
            replaced[id(anchor)] = new
    _rewrite_nodes(model, removed, replaced)
    return len(replaced)


def fuse_attention(model: onnx.ModelProto) -> int:
    """Replace each matched attention core by MultiHeadAttention, in place; returns how many."""
    _expand_attention_bias(model)
    count = _replace_matches(model, "Softmax", _match_attention)
    if count and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return count


def _expand_attention_bias(model: onnx.ModelProto) -> None:
    """Token merging's log sizes, added to a block's logits as (B, 1, 1, T) (a Reshape to
    [0, 1, 1, T]), expanded to the (B, 1, T, T) MultiHeadAttention takes as attention bias;
    in place."""
    g = _Graph(model)
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        nodes.append(node)
        shape = _const(g.inits, node.input[1]) if node.op_type == "Reshape" else None
        if shape is None or shape.tolist()[:3] != [0, 1, 1] or len(shape) != 4 or shape[3] <= 0:
            continue
        add = g.only_use(node.output[0])
        softmax = g.only_use(add.output[0]) if add is not None and add.op_type == "Add" else None
        if add is None or softmax is None or softmax.op_type != "Softmax":
            continue
        rows, bias = f"{node.output[0]}.rows", f"{node.output[0]}.bias"
        model.graph.initializer.append(
            numpy_helper.from_array(np.array([1, 1, shape[3], 1], np.int64), rows))
        nodes.append(helper.make_node("Expand", [node.output[0], rows], [bias], name=bias))
        add.input[list(add.input).index(node.output[0])] = bias
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _attention_bias(g: _Graph, add: onnx.NodeProto | None) -> tuple[onnx.NodeProto, str] | None:
    """Add(scaled scores, bias) where the bias is token merging's proportional attention
    as vitedge exports it, Expand(..., [1, 1, queries, 1]) to (B, 1, queries, keys): the
    shape MultiHeadAttention takes as its attention bias. (Mul node, bias) or None."""
    if add is None or add.op_type != "Add":
        return None
    for scores_in, bias in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
        expand = g.made_by.get(bias)
        rows = _const(g.inits, expand.input[1]) if expand is not None and expand.op_type == "Expand" else None
        scaled = g.made_by.get(scores_in)
        if (rows is not None and rows.ndim == 1 and len(rows) == 4 and rows[0] == rows[1] == rows[3] == 1
                and scaled is not None and scaled.op_type == "Mul"
                and g.only_use(scaled.output[0]) is add):
            return scaled, bias
    return None


def _match_attention(g: _Graph, softmax: onnx.NodeProto) -> _Match | None:
    scaled = g.made_by.get(softmax.input[0])
    bias_add, bias = None, None
    proportional = _attention_bias(g, scaled)
    if proportional is not None:  # token merging: log sizes added to the logits
        if g.only_use(softmax.input[0]) is None:
            return None
        bias_add, (scaled, bias) = scaled, proportional
    if scaled is None or scaled.op_type != "Mul" or g.only_use(scaled.output[0]) is None:
        return None
    scale = g.inits.get(scaled.input[1])
    if scale is None or scale.data_type != TensorProto.FLOAT:
        return None
    scale_value = numpy_helper.to_array(scale).reshape(-1)
    if scale_value.size != 1:
        return None
    scores = g.made_by.get(scaled.input[0])
    context = g.only_use(softmax.output[0])
    if (scores is None or scores.op_type != "MatMul" or g.only_use(scores.output[0]) is None
            or context is None or context.op_type != "MatMul" or context.input[0] != softmax.output[0]):
        return None
    q = g.heads_of(scores.input[0], [0, 2, 1, 3])
    k = g.heads_of(scores.input[1], [0, 2, 3, 1])
    v = g.heads_of(context.input[1], [0, 2, 1, 3])
    if q is None or k is None or v is None or not q[2] == k[2] == v[2]:
        return None
    merge = g.only_use(context.output[0])
    if _perm(merge) != [0, 2, 1, 3]:
        return None
    assert merge is not None
    flatten = g.only_use(merge.output[0])
    if flatten is None or flatten.op_type != "Reshape":
        return None
    flat_shape = _const(g.inits, flatten.input[1])
    if flat_shape is None or flat_shape.tolist()[:2] != [0, 0] or len(flat_shape) != 3:
        return None
    nodes = [*q[1], *k[1], *v[1], scores, scaled, softmax, context, merge, flatten]
    inputs = [q[0], k[0], v[0]]
    if bias_add is not None and bias is not None:
        nodes.append(bias_add)
        inputs += ["", "", bias]  # MultiHeadAttention's input 5: attention_bias
    mha = helper.make_node(
        "MultiHeadAttention", inputs, [flatten.output[0]],
        name=softmax.name.removesuffix(".softmax") + ".mha", domain=MS_DOMAIN,
        num_heads=q[2], scale=float(scale_value[0]))
    return nodes, flatten, mha


def fold_bias_adds(model: onnx.ModelProto) -> int:
    """MatMulIntegerToFloat followed by Add(constant vector) -> its bias input; returns how many."""
    g = _Graph(model)
    removed: set[int] = set()
    for node in model.graph.node:
        if node.op_type != "MatMulIntegerToFloat" or node.domain != MS_DOMAIN or len(node.input) > 6:
            continue
        add = g.only_use(node.output[0])
        if add is None or add.op_type != "Add":
            continue
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if bias not in g.inits or len(g.inits[bias].dims) != 1:
            continue
        node.input.extend([""] * (6 - len(node.input)) + [bias])
        node.output[0] = add.output[0]
        removed.add(id(add))
    _rewrite_nodes(model, removed)
    return len(removed)


def fold_constant_dequantize(model: onnx.ModelProto) -> int:
    """DequantizeLinear of initializers -> a float initializer; returns how many."""
    g = _Graph(model)
    removed: set[int] = set()
    for node in model.graph.node:
        if (node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx")
                or not all(i in g.inits for i in node.input if i)
                or node.output[0] in g.outputs
                or any(a.name == "block_size" and a.i for a in node.attribute)):
            continue
        values = numpy_helper.to_array(g.inits[node.input[0]]).astype(np.float32)
        scale = numpy_helper.to_array(g.inits[node.input[1]]).astype(np.float32)
        zero = (numpy_helper.to_array(g.inits[node.input[2]]).astype(np.float32)
                if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * values.ndim
        if scale.ndim == 1 and values.ndim:
            shape[axis % values.ndim] = -1
        folded = (values - zero.reshape(shape)) * scale.reshape(shape)
        model.graph.initializer.append(numpy_helper.from_array(folded.astype(np.float32), node.output[0]))
        removed.add(id(node))
    _rewrite_nodes(model, removed)
    drop_unused_initializers(model.graph)
    return len(removed)


def fuse_quantized_attention(model: onnx.ModelProto) -> int:
    """MatMulIntegerToFloat(uint8 x, constant W, bias) -> Split into 3 -> MultiHeadAttention(q,
    k, v) -> QAttention, in place; returns how many."""
    count = _replace_matches(model, "MultiHeadAttention", _match_quantized_attention)
    drop_unused_initializers(model.graph)
    return count


def _match_quantized_attention(g: _Graph, mha: onnx.NodeProto) -> _Match | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in mha.attribute}
    if len(mha.input) != 3 or set(attrs) - {"num_heads", "scale", "unidirectional"} or attrs.get("unidirectional"):
        return None
    attrs.pop("unidirectional", None)
    split = g.made_by.get(mha.input[0])
    if (split is None or split.op_type != "Split" or list(split.output) != list(mha.input)
            or any(g.only_use(t) is not mha for t in split.output)
            or next((a.i for a in split.attribute if a.name == "axis"), 0) not in (-1, 2)):
        return None
    gemm = g.made_by.get(split.input[0])
    if (gemm is None or gemm.op_type != "MatMulIntegerToFloat" or len(gemm.input) != 7
            or g.only_use(gemm.output[0]) is not split):
        return None
    x, weight, x_scale, w_scale, x_zero, w_zero, bias = gemm.input
    w = _const(g.inits, weight)
    zero = g.inits.get(x_zero)
    if (w is None or w.ndim != 2 or w.shape[1] % 3 or zero is None
            or zero.data_type != TensorProto.UINT8 or bias not in g.inits):
        return None
    sizes = _const(g.inits, split.input[1]) if len(split.input) > 1 else None
    if sizes is not None and sizes.tolist() != [w.shape[1] // 3] * 3:
        return None
    node = helper.make_node(
        "QAttention", [x, weight, bias, x_scale, w_scale, "", x_zero, w_zero], [mha.output[0]],
        name=mha.name + ".quantized", domain=MS_DOMAIN, **attrs)
    return [gemm, split, mha], mha, node


def split_quantized_attention(model: onnx.ModelProto) -> int:
    """Each QAttention back into MatMulIntegerToFloat, Split and MultiHeadAttention, in
    place, so that q and k are tensors again; returns how many."""
    inits = {t.name: t for t in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    count = 0
    for node in model.graph.node:
        if node.op_type != "QAttention" or node.domain != MS_DOMAIN:
            nodes.append(node)
            continue
        x, weight, bias, x_scale, w_scale, _mask, x_zero, w_zero = (list(node.input) + [""] * 9)[:8]
        qkv = [f"{node.name}.{part}" for part in ("qkv", "q", "k", "v")]
        sizes = f"{node.name}.splits"
        width = inits[weight].dims[1] // 3
        model.graph.initializer.append(numpy_helper.from_array(np.array([width] * 3, np.int64), sizes))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes += [
            helper.make_node("MatMulIntegerToFloat", [x, weight, x_scale, w_scale, x_zero, w_zero, bias],
                             [qkv[0]], domain=MS_DOMAIN),
            helper.make_node("Split", [qkv[0], sizes], qkv[1:], axis=-1),
            helper.make_node("MultiHeadAttention", qkv[1:], list(node.output[:1]), domain=MS_DOMAIN,
                             **{k: v for k, v in attrs.items() if k in ("num_heads", "scale")})]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def _rewrite_nodes(model: onnx.ModelProto, removed: set[int],
                   replaced: dict[int, onnx.NodeProto] | None = None) -> None:
    """Drop the nodes whose id() is in `removed`, or put `replaced[id]` in their place."""
    replaced = replaced or {}
    kept = [replaced.get(id(n), n) for n in model.graph.node
            if id(n) not in removed or id(n) in replaced]
    del model.graph.node[:]
    model.graph.node.extend(kept)
