"""Run a vitedge ONNX model with ONNX Runtime: the embedded default backend, and how the
quantized and FP16 models are measured on a CPU. Needs onnxruntime and numpy (and the onnx
package for a raw Q/DQ INT8 graph, re-encoded when it loads, and for `attention`). What the
file is (a `vitedge build` artifact or an export) comes from its manifest, read without
parsing the graph."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends.base import Runner, TensorInfo, attention_outputs
from vitedge.compare import softmax
from vitedge.errors import VitedgeError
from vitedge.lifetime import scratch_folder
from vitedge.manifest import Manifest, manifest_from_file
from vitedge.precisions import FP8_FAMILY, MIXED
from vitedge.sessions import (
    default_providers,
    ort_session,
    run_in_batches,
    static_batch,
)


def is_built(manifest: Manifest) -> bool:
    """A `vitedge build` ONNX Runtime artifact (optimized, CPU-exact INT8), as its manifest
    records, whatever the file is called."""
    return manifest.source.get("backend") == "onnxruntime"


class OnnxRuntimeRunner(Runner):
    """A vitedge model in ONNX Runtime: `infer` takes a batch of model inputs (any size;
    a model exported with a static batch is fed in padded chunks)."""

    backend = "onnxruntime"
    concurrent = True
    """ONNX Runtime's `run` is thread-safe: several threads may infer at once."""

    def __init__(self, path: str | Path, threads: int | None = None, use_gpu: bool = False):
        self.path = Path(path)
        if not self.path.is_file():
            raise VitedgeError(f"no such file: {self.path}")
        manifest = manifest_from_file(self.path)
        if manifest is None:
            raise VitedgeError(f"{self.path} has no vitedge manifest",
                               "export it with `vitedge export`")
        self.manifest = manifest
        self.warnings = []
        # ONNX Runtime's CPU kernels compute FP32 and INT8 graphs' float parts in FP32
        self.float_parts = "fp32" if manifest.precision in ("fp32", "int8") and not use_gpu \
            else None
        # a `vitedge build` artifact is optimized already: no work at start-up. Its manifest
        # records the profile's thread count (source.onnxruntime_threads) for the
        # application to pass as `threads`.
        self.built = is_built(manifest)
        self.threads = threads
        self.providers_wanted = default_providers(use_gpu)
        self.optimization = "none" if self.built else "all"
        self._model: Any = self.path  # a path, or the model re-encoded in memory
        if manifest.precision == "int8" and not self.built:
            from vitedge.backends.onnxruntime.int8 import cpu_exact_graph
            from vitedge.graph import load_onnx

            self._model = cpu_exact_graph(load_onnx(self.path))
        elif manifest.precision == "int8":
            from vitedge.backends.onnxruntime.int8 import saturation_warnings

            self.warnings += saturation_warnings(manifest, self.path.name)
        elif manifest.precision in (*FP8_FAMILY, MIXED):
            self._model, self.optimization = self._low_float(), "none"
        self.session = self._session()
        self.providers = self.session.get_providers()
        self.inputs = [_info(v) for v in self.session.get_inputs()]
        self.outputs = [_info(v) for v in self.session.get_outputs()]
        first = self.session.get_inputs()[0]
        self.fixed_batch = static_batch(self.session)
        self.input_dtype = np.uint8 if first.type == "tensor(uint8)" else np.float32
        self._taps: _Taps | None = None

    def _low_float(self) -> Any:
        """An FP8 / NVFP4 graph as the CPU computes it: Q/DQ in float (no optimization
        fuses them), NVFP4 through the exact rewrite (`vitedge.emulation`); said once."""
        from vitedge.emulation import cpu_graph, needs_emulation
        from vitedge.graph import load_onnx

        model = load_onnx(self.path)
        self.warnings.append(f"{self.path.name} is {self.manifest.precision}, a GPU format: on "
                             "the CPU its Q/DQ are computed in float"
                             + (", NVFP4 through vitedge's exact rewrite" if needs_emulation(model)
                                else "") + " (the numbers a GPU computes, not its speed)")
        return cpu_graph(model)

    def _session(self, model: Any = None, **extra: Any) -> Any:
        return ort_session(self._model if model is None else model, self.threads,
                           optimization=self.optimization, providers=self.providers_wanted,
                           **extra)

    def _run(self, session: Any, x: np.ndarray, outputs: list[str] | None) -> list[np.ndarray]:
        self._check_open()
        return run_in_batches(session, self.input_name, np.asarray(x, self.input_dtype),
                              self.fixed_batch, outputs)

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._run(self.session, x, [self.output_name])[0]

    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self._run(self.session, x, None), strict=True))

    def infer_named(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._check_open()
        got = self.session.run(None, self._feeds(feeds))
        return dict(zip(self.output_names, got, strict=True))

    def layer_times(self, x: np.ndarray, runs: int = 10) -> dict[str, float]:
        """ONNX Runtime's profile of a session opened exactly as this one (same model,
        threads, optimization level), fed as `infer` feeds it."""
        with scratch_folder("profile-") as tmp:
            session = self._session(profile_prefix=str(Path(tmp) / "profile"))
            for _ in range(runs):
                self._run(session, x, [self.output_name])
            events = json.loads(Path(session.end_profiling()).read_text())
        totals: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
                node = e["name"].removesuffix("_kernel_time")
                totals[node] = totals.get(node, 0.0) + e["dur"] / 1e3
        return {k: v / runs for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}

    def attention(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Each block's attention probabilities read from this model's own graph: its
        `attn.N` outputs, else each Softmax's output, else the query and key of a fused
        MultiHeadAttention (softmax(q k^T * scale), the op's definition); an INT8 artifact's
        QAttention is split back into its integer MatMul and MultiHeadAttention first. A
        second session, opened on first use."""
        if attention_outputs(self.output_names) and not self.manifest.architecture.merge:
            return super().attention(x)
        if self._taps is None:
            self._taps = _Taps(self)
        out = dict(zip(self._taps.names, self._run(self._taps.session, x, self._taps.names),
                       strict=True))
        probs = [out[t.probs].astype(np.float32, copy=False) if t.probs else
                 _softmax_qk(out[t.query], out[t.key], t.heads, t.scale,
                             out[t.bias] if t.bias else None) for t in self._taps.taps]
        if self._taps.merges:  # token merging: attention among the original tokens
            from vitedge.merging import merge_members, on_original_tokens

            merges = [tuple(out[n] for n in names) for names in self._taps.merges]
            members = merge_members(merges, self.manifest.architecture)  # type: ignore[arg-type]
            probs = on_original_tokens(probs, members)
        return out[self.output_name], probs

    def _release(self) -> None:
        self.session = None
        self._taps = None


def _info(v: Any) -> TensorInfo:
    return TensorInfo(v.name, tuple(d if isinstance(d, int) else str(d) for d in v.shape),
                      str(v.type).removeprefix("tensor(").removesuffix(")"))


@dataclass(frozen=True)
class _Tap:
    """Where one block's attention can be read: its probabilities, or q and k."""

    probs: str | None = None
    query: str = ""
    key: str = ""
    heads: int = 0
    scale: float = 0.0
    bias: str = ""  # MultiHeadAttention's attention bias (token merging's log sizes)


class _Taps:
    """A session on the runner's graph with every block's attention tap as an output."""

    def __init__(self, runner: OnnxRuntimeRunner) -> None:
        import onnx

        from vitedge.backends.onnxruntime.fusions import split_quantized_attention
        from vitedge.graph import load_onnx

        model = runner._model
        if isinstance(model, onnx.ModelProto):
            graph = onnx.ModelProto()
            graph.CopyFrom(model)
        else:
            graph = load_onnx(model)
        split_quantized_attention(graph)
        self.taps: list[_Tap] = []
        for node in graph.graph.node:
            if node.op_type == "Softmax" and not node.name.startswith("attn_pool."):
                # a block's attention (SigLIP's pooling head has a softmax of its own)
                self.taps.append(_Tap(probs=node.output[0]))
            elif node.op_type == "MultiHeadAttention":
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                self.taps.append(_Tap(query=node.input[0], key=node.input[1],
                                      heads=int(attrs["num_heads"]),
                                      scale=float(attrs.get("scale", 0.0)),
                                      bias=node.input[5] if len(node.input) > 5 else ""))
        depth = runner.manifest.architecture.depth
        if len(self.taps) != depth:
            raise VitedgeError(f"found the attention of {len(self.taps)} blocks in "
                               f"{runner.name}, but the model has {depth}",
                               "explain the model as vitedge exported it")
        present = {o.name for o in graph.graph.output}
        wanted = [n for t in self.taps for n in ((t.probs,) if t.probs else (t.query, t.key, t.bias))
                  if n]
        cfg = runner.manifest.architecture
        made = {o for node in graph.graph.node for o in node.output}
        self.merges = [tuple(f"blocks.{i}.merge.{n}" for n in ("order", "moved", "into"))
                       for i, r in enumerate(cfg.merge) if r]
        if any(n not in made for names in self.merges for n in names):
            raise VitedgeError(f"{runner.name} merges tokens but its graph no longer shows "
                               "which (an optimizer renamed them)",
                               "explain the model as vitedge exported it")
        wanted += [n for names in self.merges for n in names]
        for name in wanted:
            if name not in present:
                graph.graph.output.append(onnx.ValueInfoProto(name=name))
                present.add(name)
        self.names = [runner.output_name, *dict.fromkeys(wanted)]
        self.session = runner._session(graph)


def _softmax_qk(q: np.ndarray, k: np.ndarray, heads: int, scale: float,
                bias: np.ndarray | None = None) -> np.ndarray:
    b, t, d = q.shape
    qh = q.astype(np.float32).reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)
    kh = k.astype(np.float32).reshape(b, -1, heads, d // heads).transpose(0, 2, 3, 1)
    logits = (qh @ kh) * (scale or (d // heads) ** -0.5)
    return softmax(logits if bias is None else logits + bias.astype(np.float32))
