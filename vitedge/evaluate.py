"""`vitedge eval`: accuracy of a model on a labelled image folder, and how closely it
follows a reference model (top-1 agreement, KL divergence of the softmax, cosine of the
logits): how INT8 and FP16 models are judged against the FP32 export."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitedge.backends import Runner, load_runner
from vitedge.compare import Agreement, agreement
from vitedge.datasets import MAX_BROKEN_FRACTION, labelled_folder
from vitedge.errors import VitedgeError
from vitedge.options import EvalOptions
from vitedge.report import Reporter, reporter
from vitedge.runtime.preprocess import load_image, model_input


@dataclass
class EvalResult:
    model: str
    precision: str
    images: int
    top1: float
    top5: float
    seconds: float
    reference: str | None = None
    reference_top1: float | None = None
    agreement: Agreement | None = None
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Test images that could not be read (left out of every figure)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["artifact"] = d.pop("model")  # the model file read: `artifact` in every command
        return d


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[-1])
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=-1)))


def evaluate(artifact: str | Path, options: EvalOptions, report: Reporter | None = None
             ) -> EvalResult:
    """Top-1 / top-5 of ARTIFACT on `options.data` and, with `options.reference`, how
    closely it follows that model on the same images."""
    start = time.perf_counter()
    reference = options.reference
    with contextlib.ExitStack() as stack:
        model = stack.enter_context(load_runner(artifact))
        ref = stack.enter_context(load_runner(reference)) if reference else None
        result = _evaluate(model, ref, options.data, options.batch, options.limit,
                           reporter(report))
    result.model = str(artifact)
    result.reference = str(reference) if reference else None
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def _evaluate(model: Runner, ref: Runner | None, data: str | Path, batch: int,
              limit: int | None, rep: Reporter) -> EvalResult:
    labels = model.manifest.labels
    if not model.manifest.is_classifier:
        raise VitedgeError(f"{model.name} has no classification head (it outputs embeddings): "
                           "there is no accuracy to measure",
                           "compare embeddings with `vitedge embed`, or export a classifier")
    if ref is not None and ref.manifest.labels != labels:
        raise VitedgeError(f"{ref.name} has other labels than {model.name}",
                           "compare models exported from the same checkpoint")
    items = labelled_folder(data, labels, limit).items
    outs: list[np.ndarray] = []
    ref_outs: list[np.ndarray] = []
    same = ref is not None and ref.manifest.preprocess == model.manifest.preprocess and \
        ref.manifest.input == model.manifest.input
    kept_truth: list[int] = []
    skipped: list[str] = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        images = []
        for path, label in chunk:
            try:
                images.append((load_image(path), label))
            except VitedgeError as exc:
                skipped.append(str(path))
                rep.warning(f"skipped: {exc.message}")
                if len(skipped) > 2 and len(skipped) > MAX_BROKEN_FRACTION * (i + len(chunk)):
                    raise VitedgeError(f"{len(skipped)} of the first {i + len(chunk)} images in "
                                       f"{data} cannot be read (first: {skipped[0]})",
                                       "check the files") from exc
        rep.progress(min(i + batch, len(items)), len(items))
        if not images:
            continue
        kept_truth += [label for _, label in images]
        x = np.stack([model_input(im, model.manifest) for im, _ in images])
        outs.append(model.infer(x))
        if ref is not None:
            ref_outs.append(ref.infer(x if same else np.stack(
                [model_input(im, ref.manifest) for im, _ in images])))
    if not outs:
        raise VitedgeError(f"none of the {len(items)} images in {data} could be read")
    truth = np.array(kept_truth)
    logits = np.concatenate(outs)
    result = EvalResult(model.name, model.precision_label, len(truth),
                        topk_accuracy(logits, truth, 1), topk_accuracy(logits, truth, 5), 0.0,
                        warnings=list(model.warnings), skipped=skipped)
    if ref is not None:
        ref_logits = np.concatenate(ref_outs)
        result.reference_top1 = topk_accuracy(ref_logits, truth, 1)
        result.agreement = agreement(ref_logits, logits)
    return result
