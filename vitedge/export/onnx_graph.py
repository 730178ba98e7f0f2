"""Build the ONNX graph of a ViT directly from its configuration and weights.

Writing the graph ourselves (rather than tracing PyTorch) gives a graph whose nodes are
named after the model's modules (`blocks.3.attn.qkv`), that uses only operators
TensorRT's ONNX parser supports, keeps LayerNormalization as one op, and builds in
seconds. PyTorch stays the reference: every export is verified against it.

Linear weights are stored transposed, (in, out), as the right operand of a MatMul.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vitedge.architecture import ViTConfig, rope_tables
from vitedge.manifest import INPUTS
from vitedge.options import MAX_OPSET, MIN_OPSET


class GraphBuilder:
    """Collects nodes and initializers; names every output after the node that makes it."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, value: Any, dtype: Any = np.float32) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, values, np.int64)

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        if name in self._names:
            raise ValueError(f"duplicate node name {name}")
        self._names.add(name)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def onnx_from_vit(
    cfg: ViTConfig,
    weights: Mapping[str, Any],
    input_kind: str = "images",
    batch: int | None = None,
    opset: int = 17,
    attention_outputs: bool = False,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
) -> onnx.ModelProto:
    """The ViT as an ONNX model: `images` (B, C, H, W) or `patches` (B, N, C*P*P) in,
    `logits` (B, classes) out (`features` (B, D) for a model without a head).

    `frames` input: uint8 (B, H, W, C) pixels, already resized and cropped; the graph
    scales, normalises with `normalize` (mean, std) and patchifies them itself, so a
    quarter of the bytes cross to the device and the arithmetic runs there. `pixels`
    input: the same pixels as float 0..255 (B, C, H, W), normalised in the graph (what
    DeepStream's nvinfer feeds).

    `batch=None` makes the batch dimension dynamic. `attention_outputs` adds each block's
    attention probabilities as outputs `attn.{i}` (B, heads, T, T).
    """
    if input_kind not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be {MIN_OPSET}..{MAX_OPSET}")
    w = {k: _numpy(v) for k, v in weights.items()}
    g = GraphBuilder()
    d, k = cfg.embed_dim, cfg.num_prefix_tokens
    batch_dim: int | str = batch if batch is not None else "batch"

    if input_kind == "frames":
        if normalize is None:
            raise ValueError("frames input needs the preprocessing's mean and std")
        mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in normalize)
        x_in = helper.make_tensor_value_info(
            "frames", TensorProto.UINT8, [batch_dim, *cfg.img_size, cfg.in_chans])
        pixels = g.node("Cast", ["frames"], "frames.float", to=TensorProto.FLOAT)
        nchw = g.node("Transpose", [pixels], "frames.nchw", perm=[0, 3, 1, 2])
        scaled = g.node("Mul", [nchw, g.const("frames.scale", 1.0 / (255.0 * std))], "frames.scaled")
        image_input = g.node("Add", [scaled, g.const("frames.shift", -mean / std)], "images")
    elif input_kind == "pixels":
        # float 0..255 NCHW (what DeepStream's nvinfer feeds with net-scale-factor 1 and no
        # offsets): the per-channel normalisation nvinfer cannot express runs in the graph
        if normalize is None:
            raise ValueError("pixels input needs the preprocessing's mean and std")
        mean, std = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in normalize)
        x_in = helper.make_tensor_value_info(
            "pixels", TensorProto.FLOAT, [batch_dim, cfg.in_chans, *cfg.img_size])
        scaled = g.node("Mul", ["pixels", g.const("pixels.scale", 1.0 / (255.0 * std))],
                        "pixels.scaled")
        image_input = g.node("Add", [scaled, g.const("pixels.shift", -mean / std)], "images")
    else:
        image_input = "images"
    if input_kind in ("images", "frames", "pixels"):
        if input_kind == "images":
            x_in = helper.make_tensor_value_info(
                "images", TensorProto.FLOAT, [batch_dim, cfg.in_chans, *cfg.img_size])
        conv_inputs = [image_input, g.const("patch_embed.proj.weight", w["patch_embed.proj.weight"])]
        if cfg.patch_bias:
            conv_inputs.append(g.const("patch_embed.proj.bias", w["patch_embed.proj.bias"]))
        conv = g.node("Conv", conv_inputs, "patch_embed.proj", kernel_shape=[cfg.patch_size] * 2,
                      strides=[cfg.patch_size] * 2)
        flat = g.node("Reshape", [conv, g.ints("patch_embed.shape", [0, d, -1])], "patch_embed.flatten")
        x = g.node("Transpose", [flat], "patch_embed.tokens", perm=[0, 2, 1])
    else:
        x_in = helper.make_tensor_value_info(
            "patches", TensorProto.FLOAT, [batch_dim, cfg.num_patches, cfg.patch_dim])
        weight = w["patch_embed.proj.weight"].reshape(d, -1).T
        x = _linear(g, "patch_embed.proj", "patches", weight, w.get("patch_embed.proj.bias"),
                    transposed=True)

    # Position embeddings: added to the patch tokens; the prefix tokens (class,
    # distillation, registers) get theirs folded in, then are broadcast over the batch.
    pos = w["pos_embed"]
    prefix = [w[n].reshape(-1, d) for n in ("cls_token", "dist_token", "reg_token") if n in w]
    if cfg.no_embed_class:
        patch_pos = pos
    else:
        patch_pos = pos[:, k:]
        prefix = [np.concatenate(prefix) + pos[0, :k]] if prefix else []
    x = g.node("Add", [x, g.const("pos_embed", patch_pos)], "pos_embed.add")
    if k:
        tokens = g.const("prefix_tokens", np.concatenate(prefix).reshape(1, k, d))
        shape = g.node("Shape", [x], "prefix_tokens.input_shape")
        bdim = g.node("Slice", [shape, g.ints("prefix_tokens.start", [0]),
                                g.ints("prefix_tokens.end", [1]), g.ints("prefix_tokens.axis", [0])],
                      "prefix_tokens.batch")
        target = g.node("Concat", [bdim, g.ints("prefix_tokens.ones", [1, 1])],
                        "prefix_tokens.shape", axis=0)
        expanded = g.node("Expand", [tokens, target], "prefix_tokens.expand")
        x = g.node("Concat", [expanded, x], "tokens", axis=1)
    if cfg.pre_norm:
        x = _layer_norm(g, "norm_pre", x, w, cfg.norm_eps)

    rope = None
    if cfg.rope:
        sin, cos = rope_tables(cfg)
        rope = (g.const("rope.sin", sin), g.const("rope.cos", cos))
    attn_names = []
    size: str | None = None
    counts = cfg.tokens_per_block()
    for i in range(cfg.depth):
        merge = (cfg.merge[i], counts[i]) if cfg.merge else None
        x, probs, size = _block(g, f"blocks.{i}", x, w, cfg, rope, merge, size)
        attn_names.append(probs)

    if not cfg.fc_norm:
        x = _layer_norm(g, "norm", x, w, cfg.norm_eps)
    pooled = _pool(g, x, w, cfg, opset, counts[-1], size)
    if cfg.fc_norm:
        pooled = _layer_norm(g, "fc_norm", pooled, w, cfg.norm_eps)
    if cfg.embed_proj:
        pooled = _linear(g, "embed_proj", pooled, w["embed_proj.weight"], None)
    if cfg.head_l2norm:
        pooled = _l2_normalize(g, "head.l2norm", pooled)

    out_name = "logits" if cfg.num_classes else "features"
    if cfg.num_classes:
        out = _linear(g, "head", pooled, w["head.weight"], w["head.bias"])
        if cfg.dist_head:
            dist = g.node("Gather", [x, g.ints("pool_dist.index", 1)], "pool_dist", axis=1)  # type: ignore[arg-type]
            out_dist = _linear(g, "head_dist", dist, w["head_dist.weight"], w["head_dist.bias"])
            both = g.node("Add", [out, out_dist], "heads.sum")
            out = g.node("Mul", [both, g.const("heads.half", 0.5)], "heads.mean")
    else:
        out = pooled
    out = g.node("Identity", [out], out_name) if out != out_name else out

    outputs = [helper.make_tensor_value_info(
        out_name, TensorProto.FLOAT, [batch_dim, cfg.output_dim])]
    if attention_outputs:
        for i, probs in enumerate(attn_names):
            name = g.node("Identity", [probs], f"attn.{i}")
            outputs.append(helper.make_tensor_value_info(
                name, TensorProto.FLOAT, [batch_dim, cfg.num_heads, counts[i], counts[i]]))

    graph = helper.make_graph(g.nodes, "vit", [x_in], outputs, initializer=g.initializers)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="vitedge")
    model.ir_version = min(model.ir_version, 10)
    return model


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _linear(g: GraphBuilder, name: str, x: str, weight: np.ndarray, bias: np.ndarray | None,
            transposed: bool = False) -> str:
    wt = weight if transposed else weight.T
    y = g.node("MatMul", [x, g.const(f"{name}.weight", np.ascontiguousarray(wt))], f"{name}/MatMul")
    if bias is None:
        return y
    return g.node("Add", [y, g.const(f"{name}.bias", bias)], name)


def _layer_norm(g: GraphBuilder, name: str, x: str, w: Mapping[str, np.ndarray], eps: float) -> str:
    return g.node("LayerNormalization", [x, g.const(f"{name}.weight", w[f"{name}.weight"]),
                                         g.const(f"{name}.bias", w[f"{name}.bias"])],
                  name, axis=-1, epsilon=float(eps))


def _heads(g: GraphBuilder, name: str, x: str, cfg: ViTConfig, perm: list[int]) -> str:
    split = g.node("Reshape", [x, g.ints(f"{name}.shape", [0, 0, cfg.num_heads, cfg.head_dim])],
                   f"{name}.split_heads")
    return g.node("Transpose", [split], f"{name}.heads", perm=perm)


def _pool(g: GraphBuilder, x: str, w: Mapping[str, np.ndarray], cfg: ViTConfig, opset: int,
          tokens: int, size: str | None = None) -> str:
    """The normed sequence (B, T, D) to the pooled features (B, pooled_dim). Merged tokens
    (sizes `size` (B, T, 1)) count by their size: a size-weighted mean, or their log size
    added to the attention pool's logits."""
    k = cfg.num_prefix_tokens

    def patch_tokens(t: str, name: str) -> str:
        return t if not k else g.node(
            "Slice", [t, g.ints(f"{name}.start", [k]), g.ints(f"{name}.end", [tokens]),
                      g.ints(f"{name}.axis", [1])], name)

    if cfg.global_pool == "token":
        return g.node("Gather", [x, g.ints("pool.index", 0)], "pool", axis=1)  # type: ignore[arg-type]
    body = patch_tokens(x, "pool.patch_tokens")
    sizes = None if size is None else patch_tokens(size, "pool.patch_sizes")
    if cfg.global_pool == "map":
        return _attention_pool(g, "attn_pool", body, w, cfg, sizes)
    name = "pool" if cfg.global_pool == "avg" else "pool.mean"
    if sizes is not None:  # sum of x * size over the patch tokens / the patch count
        weighted = g.node("Mul", [body, sizes], "pool.weighted")
        total = g.node("ReduceSum", [weighted, g.ints("pool.axes", [1])], "pool.sum", keepdims=0)
        mean = g.node("Mul", [total, g.const("pool.inv_patches", 1.0 / cfg.num_patches)], name)
    elif opset >= 18:
        mean = g.node("ReduceMean", [body, g.ints("pool.axes", [1])], name, keepdims=0)
    else:
        mean = g.node("ReduceMean", [body], name, axes=[1], keepdims=0)
    if cfg.global_pool == "avg":
        return mean
    token = g.node("Gather", [x, g.ints("pool.index", 0)], "pool.token", axis=1)  # type: ignore[arg-type]
    return g.node("Concat", [token, mean], "pool", axis=-1)


def _attention_pool(g: GraphBuilder, p: str, x: str, w: Mapping[str, np.ndarray],
                    cfg: ViTConfig, sizes: str | None = None) -> str:
    """SigLIP's head: a learned query attends over the patch tokens (one query, so the
    query's projection is a constant), then a residual MLP. (B, N, D) -> (B, D)."""
    d = cfg.embed_dim
    q = (w[f"{p}.latent"].reshape(1, d) @ w[f"{p}.q.weight"].T + w[f"{p}.q.bias"]).astype(np.float32)
    q_heads = g.const(f"{p}.q.heads", q.reshape(1, 1, cfg.num_heads, cfg.head_dim)
                      .transpose(0, 2, 1, 3) * np.float32(cfg.head_dim ** -0.5))
    kv = _linear(g, f"{p}.kv", x, w[f"{p}.kv.weight"], w[f"{p}.kv.bias"])
    axis = g.ints(f"{p}.kv.axis", [2])
    k = g.node("Slice", [kv, g.ints(f"{p}.k.start", [0]), g.ints(f"{p}.k.end", [d]), axis], f"{p}.k")
    v = g.node("Slice", [kv, g.ints(f"{p}.v.start", [d]), g.ints(f"{p}.v.end", [2 * d]), axis],
               f"{p}.v")
    kt = _heads(g, f"{p}.k", k, cfg, [0, 2, 3, 1])
    vh = _heads(g, f"{p}.v", v, cfg, [0, 2, 1, 3])
    scores = g.node("MatMul", [q_heads, kt], f"{p}.qk")
    if sizes is not None:
        scores = g.node("Add", [scores, _log_size(g, p, sizes)], f"{p}.proportional")
    probs = g.node("Softmax", [scores], f"{p}.softmax", axis=-1)
    ctx = g.node("MatMul", [probs, vh], f"{p}.context")
    merged = g.node("Transpose", [ctx], f"{p}.merge_heads", perm=[0, 2, 1, 3])
    flat = g.node("Reshape", [merged, g.ints(f"{p}.merge_shape", [0, 0, d])], f"{p}.merged")
    out = _linear(g, f"{p}.proj", flat, w[f"{p}.proj.weight"], w[f"{p}.proj.bias"])
    h = _layer_norm(g, f"{p}.norm", out, w, cfg.norm_eps)
    h = _linear(g, f"{p}.mlp.fc1", h, w[f"{p}.mlp.fc1.weight"], w[f"{p}.mlp.fc1.bias"])
    h = _activation(g, f"{p}.mlp.act", h, cfg.act)
    h = _linear(g, f"{p}.mlp.fc2", h, w[f"{p}.mlp.fc2.weight"], w[f"{p}.mlp.fc2.bias"])
    pooled = g.node("Add", [out, h], f"{p}.residual")
    return g.node("Gather", [pooled, g.ints(f"{p}.index", 0)], "pool", axis=1)  # type: ignore[arg-type]


def _l2_normalize(g: GraphBuilder, name: str, x: str) -> str:
    """x / max(||x||, 1e-12) over the last axis, as torch's F.normalize."""
    square = g.node("Mul", [x, x], f"{name}.square")
    total = g.node("ReduceSum", [square, g.ints(f"{name}.axes", [-1])], f"{name}.sum", keepdims=1)
    norm = g.node("Sqrt", [total], f"{name}.norm")
    floor = g.node("Max", [norm, g.const(f"{name}.eps", 1e-12)], f"{name}.floor")
    return g.node("Div", [x, floor], name)


def _rotate(g: GraphBuilder, name: str, x: str, cfg: ViTConfig, rope: tuple[str, str]) -> str:
    """Rotary embedding on the patch tokens of a (B, heads, T, head_dim) query or key:
    x * cos + (-x1, x0, -x3, x2, ...) * sin; the prefix tokens pass unchanged."""
    k, t, hd = cfg.num_prefix_tokens, cfg.num_tokens, cfg.head_dim
    axis = g.ints(f"{name}.token_axis", [2])
    patches = x if not k else g.node(
        "Slice", [x, g.ints(f"{name}.start", [k]), g.ints(f"{name}.end", [t]), axis],
        f"{name}.patches")
    pairs = g.node("Reshape", [patches, g.ints(f"{name}.pairs_shape", [0, 0, 0, hd // 2, 2])],
                   f"{name}.pairs")
    last = g.ints(f"{name}.pair_axis", [4])
    even = g.node("Slice", [pairs, g.ints(f"{name}.even_start", [0]), g.ints(f"{name}.even_end", [1]),
                            last], f"{name}.even")
    odd = g.node("Slice", [pairs, g.ints(f"{name}.odd_start", [1]), g.ints(f"{name}.odd_end", [2]),
                           last], f"{name}.odd")
    minus_odd = g.node("Neg", [odd], f"{name}.minus_odd")
    swapped = g.node("Concat", [minus_odd, even], f"{name}.swapped", axis=4)
    turned = g.node("Reshape", [swapped, g.ints(f"{name}.turned_shape", [0, 0, 0, hd])],
                    f"{name}.turned")
    sin, cos = rope
    a = g.node("Mul", [patches, cos], f"{name}.cos")
    b = g.node("Mul", [turned, sin], f"{name}.sin")
    rotated = g.node("Add", [a, b], f"{name}.rotated")
    if not k:
        return rotated
    prefix = g.node("Slice", [x, g.ints(f"{name}.prefix_start", [0]),
                              g.ints(f"{name}.prefix_end", [k]), axis], f"{name}.prefix")
    return g.node("Concat", [prefix, rotated], name, axis=2)


def _block(g: GraphBuilder, p: str, x: str, w: Mapping[str, np.ndarray], cfg: ViTConfig,
           rope: tuple[str, str] | None = None, merge: tuple[int, int] | None = None,
           size: str | None = None) -> tuple[str, str, str | None]:
    """One encoder block; with `merge` = (r, tokens), ToMe between attention and
    MLP (`_merge`), proportional attention on the tokens' sizes `size` (B, T, 1)."""
    d = cfg.embed_dim
    h = _layer_norm(g, f"{p}.norm1", x, w, cfg.norm_eps)
    if cfg.fused_qkv:
        qkv_weight, qkv_bias = w[f"{p}.attn.qkv.weight"], w.get(f"{p}.attn.qkv.bias")
    else:
        # separate q, k, v Linears (Hugging Face) become one: one larger GEMM is faster,
        # and the input is quantized once
        qkv_weight = np.concatenate([w[f"{p}.attn.{n}.weight"] for n in "qkv"])
        biases = [w.get(f"{p}.attn.{n}.bias") for n in "qkv"]
        qkv_bias = None if all(b is None for b in biases) else np.concatenate(
            [b if b is not None else np.zeros(d, np.float32) for b in biases])
    merging = merge is not None and merge[0] > 0
    if merging:  # ToMe's metric: head_dim more output columns of the same GEMM
        qkv_weight, qkv_bias = _with_key_mean(qkv_weight, qkv_bias, cfg)
    qkv = _linear(g, f"{p}.attn.qkv", h, qkv_weight, qkv_bias)
    axis = g.ints(f"{p}.attn.qkv.axis", [2])
    q, k, v = (
        g.node("Slice", [qkv, g.ints(f"{p}.attn.{n}.start", [i * d]),
                         g.ints(f"{p}.attn.{n}.end", [(i + 1) * d]), axis], f"{p}.attn.{n}")
        for i, n in enumerate("qkv")
    )
    qh = _heads(g, f"{p}.attn.q", q, cfg, [0, 2, 1, 3])
    if rope is None:
        kt = _heads(g, f"{p}.attn.k", k, cfg, [0, 2, 3, 1])
    else:
        qh = _rotate(g, f"{p}.attn.q.rope", qh, cfg, rope)
        kh = _rotate(g, f"{p}.attn.k.rope", _heads(g, f"{p}.attn.k", k, cfg, [0, 2, 1, 3]), cfg, rope)
        kt = g.node("Transpose", [kh], f"{p}.attn.k.t", perm=[0, 1, 3, 2])
    vh = _heads(g, f"{p}.attn.v", v, cfg, [0, 2, 1, 3])
    scores = g.node("MatMul", [qh, kt], f"{p}.attn.qk")
    scaled = g.node("Mul", [scores, g.const(f"{p}.attn.scale", cfg.head_dim ** -0.5)],
                    f"{p}.attn.scaled")
    if size is not None:
        assert merge is not None  # sizes exist only after a merging block
        scaled = g.node("Add", [scaled, _log_size(g, f"{p}.attn", size, merge[1])],
                        f"{p}.attn.proportional")
    probs = g.node("Softmax", [scaled], f"{p}.attn.softmax", axis=-1)
    ctx = g.node("MatMul", [probs, vh], f"{p}.attn.context")
    merged = g.node("Transpose", [ctx], f"{p}.attn.merge_heads", perm=[0, 2, 1, 3])
    flat = g.node("Reshape", [merged, g.ints(f"{p}.attn.merge_shape", [0, 0, d])], f"{p}.attn.merged")
    if cfg.attn_norm:
        flat = _layer_norm(g, f"{p}.attn.norm", flat, w, cfg.norm_eps)
    a = _linear(g, f"{p}.attn.proj", flat, w[f"{p}.attn.proj.weight"], w[f"{p}.attn.proj.bias"])
    if cfg.layer_scale:
        a = g.node("Mul", [a, g.const(f"{p}.ls1.gamma", w[f"{p}.ls1.gamma"])], f"{p}.ls1")
    x = g.node("Add", [x, a], f"{p}.residual1")
    if merging:
        assert merge is not None
        metric = g.node("Slice", [qkv, g.ints(f"{p}.merge.metric.start", [3 * d]),
                                  g.ints(f"{p}.merge.metric.end", [3 * d + cfg.head_dim]), axis],
                        f"{p}.merge.metric.keys")
        x, size = _merge(g, f"{p}.merge", x, size, metric, cfg, *merge)

    h = _layer_norm(g, f"{p}.norm2", x, w, cfg.norm_eps)
    h = _mlp(g, f"{p}.mlp", h, w, cfg)
    if cfg.layer_scale:
        h = g.node("Mul", [h, g.const(f"{p}.ls2.gamma", w[f"{p}.ls2.gamma"])], f"{p}.ls2")
    return g.node("Add", [x, h], f"{p}.residual2"), probs, size


def _log_size(g: GraphBuilder, p: str, size: str, tokens: int = -1) -> str:
    """Sizes (B, T, 1) -> their logs as (B, 1, 1, T), added to attention logits (ToMe's
    proportional attention: a token standing for n patches counts n times). A block gives
    its token count, written into the shape, where ONNX Runtime's build reads it to expand
    the bias to the (B, 1, T, T) its fused attention takes (a (B, 1, T, T) bias in the graph
    would stop OpenVINO fusing the attention)."""
    logs = g.node("Log", [size], f"{p}.log_size")
    return g.node("Reshape", [logs, g.ints(f"{p}.log_size.shape", [0, 1, 1, tokens])],
                  f"{p}.log_size.keys")


def _with_key_mean(weight: np.ndarray, bias: np.ndarray | None,
                   cfg: ViTConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """The QKV Linear's weight (3D, D) and bias with ToMe's metric appended: the key rows
    averaged over heads, so that the one GEMM also yields the keys' head mean (B, T,
    head_dim). The same numbers as averaging the keys' heads, without the Reshape,
    ReduceMean and layout change that cost about 60 us a merging block on OpenVINO at
    ViT-S; the q, k and v columns, and so ONNX Runtime's attention fusion, are untouched."""
    d, heads = cfg.embed_dim, cfg.num_heads
    rows = weight[d:2 * d].reshape(heads, cfg.head_dim, -1).mean(axis=0, dtype=np.float64)
    weight = np.concatenate([weight, rows.astype(weight.dtype)])
    if bias is not None:
        mean = bias[d:2 * d].reshape(heads, -1).mean(axis=0, dtype=np.float64)
        bias = np.concatenate([bias, mean.astype(bias.dtype)])
    return weight, bias


def _merge(g: GraphBuilder, p: str, x: str, size: str | None, metric: str, cfg: ViTConfig,
           r: int, t: int) -> tuple[str, str]:
    """ToMe's bipartite soft matching of the T tokens x (B, T, D), static shapes, ops every
    backend runs: tokens alternately into A (even) and B (odd); similarity = cosine of the
    keys averaged over heads; each A token's best B partner (a TopK of 1); the r
    best edges (TopK r) merged into their partners by size-weighted mean. The output's
    order (prefix tokens first: class, registers, A's then B's; then the kept A tokens in
    their original order, then B) is one TopK of a constant rank plus T for each merged
    token; the tokens are gathered in that order in one Gather, and the merged ones
    added to their partners' rows by a one-hot MatMul (B, T - r, r) (no scatter with a
    reduction). For `explain` the graph names `order` (B, T - r): each output token's
    input position, `moved` (B, r): the merged tokens' input positions, and `into` (B, r):
    the output row each joins. Returns the tokens (B, T - r, D) and sizes (B, T - r, 1)."""
    prefix = cfg.num_prefix_tokens
    ta, tb = (t + 1) // 2, t // 2
    ka, kb = (prefix + 1) // 2, prefix // 2
    # the metric (B, T, head_dim): keys averaged over heads (`_with_key_mean`), L2-normalised
    metric = g.node("LpNormalization", [metric], f"{p}.metric", axis=-1, p=2)
    ma, mb = (g.node("Slice", [metric, g.ints(f"{p}.metric.{n}.start", [start]),
                               g.ints(f"{p}.metric.{n}.end", [t]), g.ints(f"{p}.metric.{n}.axis", [1]),
                               g.ints(f"{p}.metric.{n}.step", [2])], f"{p}.metric.{n}")
              for n, start in (("a", 0), ("b", 1)))
    mbt = g.node("Transpose", [mb], f"{p}.metric.b.t", perm=[0, 2, 1])
    scores = g.node("MatMul", [ma, mbt], f"{p}.scores")
    if prefix:  # protected tokens: never a source (A rows), never a destination (B columns)
        mask = np.zeros((1, ta, tb), np.float32)
        mask[:, :ka] = -1e4
        mask[:, :, :kb] = -1e4
        scores = g.node("Add", [scores, g.const(f"{p}.protect", mask)], f"{p}.scores.protected")
    # each A token's best B partner and its score: one TopK of 1 (OpenVINO runs ArgMax as a
    # TopK six times slower, beside a ReduceMax); ties go to the lower index, as ArgMax's
    g.nodes.append(helper.make_node("TopK", [scores, g.ints(f"{p}.one", [1])],
                                    [f"{p}.best.col", f"{p}.partner.col"], name=f"{p}.match",
                                    axis=-1))
    flat = g.ints(f"{p}.flat", [0, -1])
    best = g.node("Reshape", [f"{p}.best.col", flat], f"{p}.best")  # (B, ta)
    partner = g.node("Reshape", [f"{p}.partner.col", flat], f"{p}.partner")  # (B, ta)
    g.nodes.append(helper.make_node("TopK", [best, g.ints(f"{p}.r", [r])],
                                    [f"{p}.edges", f"{p}.src"], name=f"{p}.choose", axis=-1))
    src = f"{p}.src"  # (B, r): A indices merged away, best edge first
    dst = g.node("GatherElements", [partner, src], f"{p}.dst", axis=1)  # their B partners
    moved = g.node("Mul", [src, g.ints(f"{p}.two", 2)], f"{p}.moved")  # type: ignore[arg-type]
    # the output order: rank of each input position among the kept tokens, + T if merged
    order_of = [*range(0, 2 * ka, 2), *range(1, 2 * kb, 2), *range(2 * ka, t, 2),
                *range(2 * kb + 1, t, 2)]
    rank = np.empty(t, np.float32)
    rank[order_of] = np.arange(t, dtype=np.float32)
    last = g.ints(f"{p}.last", [-1])
    merged_hot = g.node("Cast", [g.node("Equal", [
        g.node("Unsqueeze", [moved, last], f"{p}.moved.col"),
        g.ints(f"{p}.positions", list(range(t)))], f"{p}.moved.eq")], f"{p}.moved.onehot",
        to=TensorProto.FLOAT)  # (B, r, T)
    merged_away = g.node("ReduceSum", [merged_hot, g.ints(f"{p}.rows", [1])], f"{p}.merged_away",
                         keepdims=0)  # (B, T): 1 where merged
    order_key = g.node("Add", [g.node("Mul", [merged_away, g.const(f"{p}.t", float(t))],
                                      f"{p}.merged_away.scaled"), g.const(f"{p}.rank", rank)],
                       f"{p}.order_key")
    g.nodes.append(helper.make_node("TopK", [order_key, g.ints(f"{p}.kept", [t - r])],
                                    [f"{p}.order_key.kept", f"{p}.order"], name=f"{p}.keep",
                                    axis=-1, largest=0))
    order = f"{p}.order"
    # B token j's output row: prefix B after prefix A, the rest after the kept A tokens
    b_rows = [ka + j if j < kb else ta - r + j for j in range(tb)]
    into = g.node("Gather", [g.ints(f"{p}.b_rows", b_rows), dst], f"{p}.into", axis=0)
    into_hot = g.node("Cast", [g.node("Equal", [
        g.node("Unsqueeze", [into, g.ints(f"{p}.middle", [1])], f"{p}.into.row"),
        g.const(f"{p}.out_rows", np.arange(t - r).reshape(t - r, 1), np.int64)], f"{p}.into.eq")],
        f"{p}.into.onehot", to=TensorProto.FLOAT)  # (B, T - r, r)
    # rows of the batch's tokens flattened to (B * T, width): position + T * image
    offsets = g.node("Mul", [_batch_rows(g, x), g.ints(f"{p}.token_count", [t])], f"{p}.offsets")
    order_index = g.node("Add", [order, offsets], f"{p}.order.index")
    moved_index = g.node("Add", [moved, offsets], f"{p}.moved.index")

    def merged(name: str, v: str, width: int) -> str:
        """v (B, T, width) in the output order, the merged tokens summed into their
        partners: (B, T - r, width)."""
        rows = g.node("Reshape", [v, g.ints(f"{name}.rows.shape", [-1, width])], f"{name}.rows")
        base = g.node("Gather", [rows, order_index], f"{name}.kept", axis=0)
        joining = g.node("Gather", [rows, moved_index], f"{name}.moved", axis=0)
        return g.node("Add", [base, g.node("MatMul", [into_hot, joining], f"{name}.into")],
                      f"{name}.out")

    # size-weighted: x * size and size merged as sums, then divided
    if size is None:  # every token stands for itself: sizes of one
        sums = merged(f"{p}.sums", x, cfg.embed_dim)
        joined = g.node("ReduceSum", [into_hot, last], f"{p}.size.joined", keepdims=1)
        new_size = g.node("Add", [joined, g.const(f"{p}.size.one", 1.0)], f"{p}.size.out")
    else:
        sums = merged(f"{p}.sums", g.node("Mul", [x, size], f"{p}.scaled"), cfg.embed_dim)
        new_size = merged(f"{p}.size", size, 1)
    return g.node("Div", [sums, new_size], f"{p}.tokens"), new_size


def _batch_rows(g: GraphBuilder, x: str) -> str:
    """(B, 1): 0, 1, ..., B - 1, the image index of each row of x (B, ...); made once per
    graph (a flat Gather of the batch's rows, rather than GatherND with batch_dims, which
    OpenVINO turns into a shape subgraph per use)."""
    name = "merge.batch_rows"
    if name in g._names:
        return name
    shape = g.node("Shape", [x], "merge.input_shape")
    batch = g.node("Gather", [shape, g.ints("merge.batch_axis", 0)], "merge.batch",  # type: ignore[arg-type]
                   axis=0)
    rows = g.node("Range", [g.ints("merge.first_row", 0), batch, g.ints("merge.row_step", 1)],  # type: ignore[arg-type]
                  "merge.rows")
    return g.node("Unsqueeze", [rows, g.ints("merge.rows.axis", [1])], name)


def _mlp(g: GraphBuilder, p: str, x: str, w: Mapping[str, np.ndarray], cfg: ViTConfig) -> str:
    if cfg.mlp == "swiglu":
        gate = _linear(g, f"{p}.fc1_g", x, w[f"{p}.fc1_g.weight"], w[f"{p}.fc1_g.bias"])
        value = _linear(g, f"{p}.fc1_x", x, w[f"{p}.fc1_x.weight"], w[f"{p}.fc1_x.bias"])
        sig = g.node("Sigmoid", [gate], f"{p}.act.sigmoid")
        silu = g.node("Mul", [gate, sig], f"{p}.act")
        h = g.node("Mul", [silu, value], f"{p}.glu")
    else:
        h = _linear(g, f"{p}.fc1", x, w[f"{p}.fc1.weight"], w[f"{p}.fc1.bias"])
        h = _activation(g, f"{p}.act", h, cfg.act)
    if cfg.mlp_norm:
        h = _layer_norm(g, f"{p}.norm", h, w, cfg.norm_eps)
    return _linear(g, f"{p}.fc2", h, w[f"{p}.fc2.weight"], w[f"{p}.fc2.bias"])


def _activation(g: GraphBuilder, name: str, x: str, act: str) -> str:
    if act == "quick_gelu":  # x * sigmoid(1.702 x)
        scaled = g.node("Mul", [x, g.const(f"{name}.alpha", 1.702)], f"{name}.scaled")
        sig = g.node("Sigmoid", [scaled], f"{name}.sigmoid")
        return g.node("Mul", [x, sig], name)
    if act == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.node("Mul", [g.node("Mul", [x, x], f"{name}.square"), x], f"{name}.cube")
        inner = g.node("Add", [x, g.node("Mul", [cube, g.const(f"{name}.c", 0.044715)],
                                         f"{name}.cube_scaled")], f"{name}.inner")
        arg = g.node("Mul", [inner, g.const(f"{name}.k", np.sqrt(2.0 / np.pi))], f"{name}.arg")
        one = g.node("Add", [g.node("Tanh", [arg], f"{name}.tanh"), g.const(f"{name}.one", 1.0)],
                     f"{name}.add")
        return g.node("Mul", [g.node("Mul", [x, one], f"{name}.mul"),
                              g.const(f"{name}.half", 0.5)], name)
    return _gelu(g, name, x)


def _gelu(g: GraphBuilder, name: str, x: str) -> str:
    """Exact GELU, 0.5 * x * (1 + erf(x / sqrt(2))), in the form TensorRT fuses."""
    scaled = g.node("Div", [x, g.const(f"{name}.sqrt2", np.sqrt(2.0))], f"{name}.div")
    erf = g.node("Erf", [scaled], f"{name}.erf")
    one = g.node("Add", [erf, g.const(f"{name}.one", 1.0)], f"{name}.add")
    prod = g.node("Mul", [x, one], f"{name}.mul")
    return g.node("Mul", [prod, g.const(f"{name}.half", 0.5)], name)
