"""Does the artifact `vitedge build` made compute what it was built from, on the machine
that built it, with the backend that will run it?

Three references, each on the same inputs (held-out images of `--data`, never the ones that
set the calibration ranges):
- the graph the artifact computes, run by ONNX Runtime without optimizations (an INT8
  model's Q/DQ graph computed in float, as TensorRT reads it): below `min_agreement` top-1
  agreement the backend's kernels compute something else, and the build fails;
- the FP32 model: below `min_fp32_agreement` quantization collapsed, and the build fails.
Top-1 agreement counts the inputs whose reference top-1 is decided (not a near tie, which
any change of arithmetic may flip); an embedding model, or a reference that decides on too
few inputs (random weights, data far from training), is judged by cosine similarity
instead (`vitedge.compare.judge`);
- for the ONNX Runtime INT8 artifact, whose weights are re-encoded for the CPU, also the
  8-bit Q/DQ graph TensorRT is given (reported, not judged);
- for a token-merging graph, the unmerged FP32 model: what merging (and quantization) cost
  together, judged by the same collapse bar `min_fp32_agreement`; where that model cannot be
  had (an ONNX input without its checkpoint), one line says why.
The figures go into the artifact (manifest or engine sidecar), the build summary and
`vitedge inspect`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.compare import (
    COLLAPSE_COSINE,
    REDUCED_FLOAT_COSINE,
    SAME_FUNCTION_COSINE,
    Agreement,
    agreement,
    judge,
)
from vitedge.datasets import ImageSource, model_inputs
from vitedge.errors import VitedgeError
from vitedge.manifest import Manifest
from vitedge.options import MIN_FP32_AGREEMENT, VerifyOptions
from vitedge.runtime.preprocess import model_input

MIN_JUDGED = 32
"""Fewer inputs than this are reported but not judged (one disagreement is 3 %)."""


class VerificationError(VitedgeError):
    """The built artifact does not compute what it was built from."""


@dataclass
class Verification:
    backend: str
    device: str
    data: str
    """What the inputs were, e.g. '128 held-out images of calibration/fashion-mnist'."""
    held_out: bool
    graph: str
    """What `vs_graph` compares with."""
    vs_graph: Agreement
    vs_fp32: Agreement | None
    vs_tensorrt_graph: Agreement | None = None
    min_agreement: float = 0.99
    min_fp32_agreement: float = MIN_FP32_AGREEMENT
    judged: bool = True
    cpu: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    classifier: bool = True
    """False for an embedding model: judged by cosine, not top-1."""
    vs_unmerged_fp32: Agreement | None = None
    """A merged graph's artifact against the unmerged FP32 model."""
    unmerged_fp32_missing: str | None = None
    """Why a merged graph's artifact was not compared with the unmerged FP32 model."""
    float_parts: str | None = None
    """What the artifact's float arithmetic ran in (the runner's `float_parts`)."""

    @property
    def same_function_cosine(self) -> float:
        """The worst-input cosine with its graph that a judgement by cosine needs: lower
        where the float parts run in BF16 or FP16."""
        return REDUCED_FLOAT_COSINE if self.float_parts in ("bf16", "fp16") else \
            SAME_FUNCTION_COSINE

    @property
    def images(self) -> int:
        return self.vs_graph.images

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "device": self.device, "data": self.data,
                "held_out": self.held_out, "images": self.images, "graph": self.graph,
                "vs_graph": self.vs_graph.to_dict(),
                "vs_fp32": self.vs_fp32.to_dict() if self.vs_fp32 else None,
                "vs_tensorrt_graph": self.vs_tensorrt_graph.to_dict() if self.vs_tensorrt_graph
                else None, "min_agreement": self.min_agreement,
                "min_fp32_agreement": self.min_fp32_agreement, "judged": self.judged,
                "cpu": self.cpu, "notes": self.notes, "classifier": self.classifier,
                "vs_unmerged_fp32": self.vs_unmerged_fp32.to_dict() if self.vs_unmerged_fp32
                else None, "unmerged_fp32_missing": self.unmerged_fp32_missing,
                "float_parts": self.float_parts}


def verification_inputs(manifest: Manifest, held_out: ImageSource | None
                        ) -> tuple[np.ndarray, str, bool]:
    """(inputs, what they are, whether they are held-out data): the held-out images, or
    without them the bundled photographs."""
    if held_out is not None:
        x = np.stack(list(model_inputs(held_out, manifest)))
        what = "inputs" if held_out.kind == "array" else "images"
        return x, f"{len(x)} held-out {what} of {held_out.path}", True
    from vitedge.export.verify import photo_files
    from vitedge.runtime.preprocess import load_image

    photos = photo_files()
    x = np.stack([model_input(load_image(str(p)), manifest) for p in photos])
    return x, f"the {len(x)} bundled photos (no --data to hold out)", False


def verify_artifact(runner: Any, graph: Any, graph_name: str, fp32: Path | None,
                    inputs: np.ndarray, data: str, held_out: bool, options: VerifyOptions,
                    backend: str, device: str, tensorrt_graph: Any = None,
                    cpu: dict[str, Any] | None = None,
                    unmerged: tuple[Path | None, str | None] = (None, None)) -> Verification:
    """Run the artifact (through `runner`, as the pipeline will) and its references;
    `unmerged`: a merged graph's unmerged FP32 model, or why there is none."""
    from vitedge.backends import embedded
    from vitedge.sessions import graph_output

    def in_float(graph: Any) -> np.ndarray:
        """The graph with every ONNX Runtime optimization off: Q/DQ nodes computed in
        float, as TensorRT reads them, not through integer kernels (NVFP4 emulated)."""
        import onnx

        from vitedge.emulation import cpu_graph

        if isinstance(graph, bytes):
            graph = onnx.load_from_string(graph)
        return graph_output(cpu_graph(graph) if isinstance(graph, onnx.ModelProto) else graph,
                            inputs, optimization="none")

    out = runner.infer(inputs)
    classifier = bool(runner.manifest.is_classifier)
    vs_fp32 = vs_unmerged = None
    if fp32 is not None:
        with embedded().load(fp32) as reference:
            vs_fp32 = agreement(reference.infer(inputs), out)
    if unmerged[0] is not None:
        with embedded().load(unmerged[0]) as reference:
            vs_unmerged = agreement(reference.infer(inputs), out)
    return Verification(
        backend=backend, device=device, data=data, held_out=held_out, graph=graph_name,
        vs_graph=agreement(in_float(graph), out), vs_fp32=vs_fp32,
        vs_tensorrt_graph=agreement(in_float(tensorrt_graph), out)
        if tensorrt_graph is not None else None,
        min_agreement=options.min_agreement, min_fp32_agreement=options.min_fp32_agreement,
        judged=len(inputs) >= MIN_JUDGED, cpu=cpu, classifier=classifier,
        vs_unmerged_fp32=vs_unmerged, unmerged_fp32_missing=unmerged[1],
        float_parts=runner.float_parts,
        notes=[] if len(inputs) >= MIN_JUDGED else
        [f"verified on {len(inputs)} inputs only: too few to judge agreement (at least "
         f"{MIN_JUDGED}; " + ("give --data with more images: a build that calibrates holds at "
                              "most a quarter of them out" if held_out else "give --data") + ")"])


def check_verification(v: Verification, cause: Callable[[Verification], str] | None = None
                       ) -> None:
    """Raise VerificationError, with the cause found (`cause`, the backend's reading of
    the failure) and what to try, when `v` fails."""
    if not v.judged:
        return
    same = judge(v.vs_graph, v.min_agreement, v.same_function_cosine, v.classifier)
    if not same.ok:
        why = cause(v) if cause is not None else "it computes something else"
        raise VerificationError(
            f"the {v.backend} artifact agrees with {v.graph} on {v.data} by only "
            f"{same.measure}: {why}",
            "nothing was written; --min-agreement lowers the bar if this is expected"
            if same.by_top1 else
            "nothing was written; the bar is a cosine here, which no flag lowers: "
            + ("give --data images of the model's own classes, on which top-1 agreement can "
               "judge (and --min-agreement set its bar)" if v.classifier else
               "try another --precision or backend"))
    kept = judge(v.vs_fp32, v.min_fp32_agreement, COLLAPSE_COSINE, v.classifier, worst=False) \
        if v.vs_fp32 is not None else None
    if kept is not None and not kept.ok:
        raise VerificationError(
            f"the artifact agrees with the FP32 model on {v.data} by only {kept.measure}: "
            "quantization collapsed the model",
            "recalibrate (more --num-images, --method entropy), keep sensitive layers in float "
            "(vitedge quantize --sensitivity N), or build --precision fp16; "
            "--min-fp32-agreement lowers the bar")
    merged = judge(v.vs_unmerged_fp32, v.min_fp32_agreement, COLLAPSE_COSINE, v.classifier,
                   worst=False) if v.vs_unmerged_fp32 is not None else None
    if merged is not None and not merged.ok:
        raise VerificationError(
            f"the artifact agrees with the unmerged FP32 model on {v.data} by only "
            f"{merged.measure}: token merging collapsed the model",
            "merge fewer tokens (--merge auto --merge-max-drop D chooses within a budget); "
            "--min-fp32-agreement lowers the bar")


def verification_lines(v: dict[str, Any]) -> list[str]:
    """A build's verification (`Verification.to_dict`) as the build summary prints it: where
    it ran, then one line per reference with what was judged; [] when there is none."""
    if not v:
        return []
    if v.get("skipped"):
        return [str(v["skipped"])]
    if v.get("lines"):  # a build that words its own (a streaming graph: `streaming_build`)
        return [str(line) for line in v["lines"]]
    lines = [f"verified on {v['data']} ({v['backend']}, {v['device']}):"]
    rows = [("vs " + v["graph"], v["vs_graph"], v["min_agreement"]),
            ("vs the FP32 model", v["vs_fp32"], v["min_fp32_agreement"]),
            ("vs the unmerged FP32 model", v.get("vs_unmerged_fp32"), v["min_fp32_agreement"]),
            ("vs the 8-bit Q/DQ graph TensorRT gets", v["vs_tensorrt_graph"], None)]
    from vitedge.compare import MIN_DECIDED

    for what, a, least in rows:
        if not a:
            continue
        decided = a.get("decided", a["images"])
        if not v.get("classifier", True):
            top1 = ""  # an embedding: judged by cosine
        elif decided >= MIN_DECIDED:
            bar = f", at least {least:.0%}" if least is not None and v["judged"] else ""
            top1 = (f"top-1 agreement {a['top1_agreement']:.2%} of all inputs "
                    f"({a.get('decided_agreement', a['top1_agreement']):.2%} of the {decided} "
                    f"decided ones, which is judged{bar}), ")
        else:
            top1 = (f"top-1 agreement {a['top1_agreement']:.2%} (near ties: the reference "
                    f"decides only {decided} inputs, so cosine is judged), ")
        lines.append(f"  {what}: {top1}mean KL {a['mean_kl']:.2e}, cosine {a['cosine']:.5f} "
                     f"(min {a['cosine_min']:.5f})")
    if v.get("unmerged_fp32_missing"):
        lines.append(f"  {v['unmerged_fp32_missing']}")
    return lines
