"""Attention probabilities read from the deployed artifact, not recomputed in PyTorch, so
that an FP16 or INT8 model shows its own attention.

- An ONNX model: each block's softmax output is added to the graph outputs. Where the
  `vitedge build` artifact fused a block into MultiHeadAttention (which keeps no
  probabilities), its query and key inputs are read instead and softmax(q k^T * scale),
  the operator's own definition, is computed here. An INT8 artifact's QAttention, which
  keeps not even q and k, is split back into its integer MatMul and MultiHeadAttention
  first.
- A TensorRT engine: it keeps only the tensors marked as outputs, so it must be built from
  an export with `--attention-outputs` (outputs `attn.0` ... `attn.N`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from vitedge.compare import softmax
from vitedge.errors import VitedgeError
from vitedge.runtime.backend import Model

ATTENTION_OUTPUT = re.compile(r"attn\.(\d+)$")


@dataclass(frozen=True)
class _Probs:
    name: str


@dataclass(frozen=True)
class _QueryKey:
    query: str
    key: str
    heads: int
    scale: float


def _exported(outputs: list[str]) -> list[_Probs]:
    """The `attn.N` outputs of an `--attention-outputs` export, in block order."""
    found = sorted((int(m.group(1)), name) for name in outputs
                   if (m := ATTENTION_OUTPUT.match(name)))
    return [_Probs(name) for _, name in found]


def _taps(model: onnx.ModelProto) -> list[_Probs | _QueryKey]:
    """Where each block's attention can be read, in block order."""
    exported = _exported([o.name for o in model.graph.output])
    if exported:
        return list(exported)
    taps: list[_Probs | _QueryKey] = []
    for node in model.graph.node:
        if node.op_type == "Softmax":
            taps.append(_Probs(node.output[0]))
        elif node.op_type == "MultiHeadAttention":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            taps.append(_QueryKey(node.input[0], node.input[1], int(attrs["num_heads"]),
                                  float(attrs.get("scale", 0.0))))
    return taps


def _softmax_qk(q: np.ndarray, k: np.ndarray, heads: int, scale: float) -> np.ndarray:
    b, t, d = q.shape
    qh = q.astype(np.float32).reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)
    kh = k.astype(np.float32).reshape(b, -1, heads, d // heads).transpose(0, 2, 3, 1)
    return softmax((qh @ kh) * (scale or (d // heads) ** -0.5))


class AttentionReader:
    """`reader(x)` -> (logits, [probs of each block, (B, heads, T, T) float32]) for a batch
    of model inputs, from the artifact behind a loaded vitedge model."""

    def __init__(self, model: Model, threads: int | None = None):
        self.model = model
        depth = model.manifest.architecture.depth
        self._session: Any = None
        if model.path.suffix == ".onnx":
            self._open_onnx(threads)
        else:
            self._taps: list[_Probs | _QueryKey] = list(_exported(getattr(model, "output_names", [])))
            if not self._taps:
                raise VitedgeError(
                    f"{model.path.name} has no attention outputs (a TensorRT engine keeps only "
                    "the tensors it outputs)",
                    "export with `vitedge export ... --attention-outputs` and build the engine "
                    "from that, or explain the ONNX model")
        if len(self._taps) != depth:
            raise VitedgeError(f"found the attention of {len(self._taps)} blocks in "
                               f"{model.path.name}, but the model has {depth}",
                               "explain the model as vitedge exported it")

    def _open_onnx(self, threads: int | None) -> None:
        from vitedge.build.onnxruntime_fusions import split_quantized_attention
        from vitedge.build.onnxruntime_int8 import seven_bit_weights
        from vitedge.runtime.onnxrt import is_built, ort_session

        graph = onnx.load(str(self.model.path))
        built = is_built(self.model.manifest)
        if self.model.manifest.precision == "int8" and not built:
            seven_bit_weights(graph)  # as the model's own session runs it
        split_quantized_attention(graph)
        self._taps = _taps(graph)
        present = {o.name for o in graph.graph.output}
        wanted = [n for tap in self._taps
                  for n in ((tap.name,) if isinstance(tap, _Probs) else (tap.query, tap.key))]
        for name in wanted:
            if name not in present:
                graph.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
        self._session = ort_session(graph.SerializeToString(), threads,
                                    optimization="none" if built else "all")
        first = self._session.get_inputs()[0]
        self._input = first.name
        self._batch = first.shape[0] if isinstance(first.shape[0], int) else None
        self._dtype = np.uint8 if first.type == "tensor(uint8)" else np.float32

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        if self._session is None:
            return self.model.infer_all(x)  # type: ignore[attr-defined]
        x = np.asarray(x, self._dtype)
        n = len(x)
        if self._batch is not None and n != self._batch:
            if n > self._batch:
                raise VitedgeError(f"this model takes batches of {self._batch}; explain "
                                   f"{self._batch} images at a time")
            x = np.concatenate([x, np.repeat(x[-1:], self._batch - n, axis=0)])
        names = [o.name for o in self._session.get_outputs()]
        return {k: v[:n] for k, v in zip(names, self._session.run(names, {self._input: x}),
                                          strict=True)}

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self._run(x)
        probs = []
        for tap in self._taps:
            if isinstance(tap, _Probs):
                probs.append(out[tap.name].astype(np.float32, copy=False))
            else:
                probs.append(_softmax_qk(out[tap.query], out[tap.key], tap.heads, tap.scale))
        return out[self.model.manifest.output_name], probs
