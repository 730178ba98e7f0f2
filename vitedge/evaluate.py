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
    labels: list[str] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    """Each class's `label`, `images`, `correct` and top-1 `accuracy` (None without images)."""
    confusion: list[list[int]] = field(default_factory=list)
    """confusion[true][predicted]: images of class `true` predicted as `predicted`, in
    `labels` order."""

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
    names = labels or [str(i) for i in range(logits.shape[-1])]
    confusion = np.zeros((len(names), len(names)), np.int64)
    np.add.at(confusion, (truth, logits.argmax(-1)), 1)
    result.labels, result.confusion = list(names), confusion.tolist()
    result.per_class = [{"label": name, "images": int(confusion[i].sum()),
                         "correct": int(confusion[i, i]),
                         "accuracy": float(confusion[i, i] / confusion[i].sum())
                         if confusion[i].sum() else None} for i, name in enumerate(names)]
    if ref is not None:
        ref_logits = np.concatenate(ref_outs)
        result.reference_top1 = topk_accuracy(ref_logits, truth, 1)
        result.agreement = agreement(ref_logits, logits)
    return result


def confusion_lines(result: EvalResult) -> list[str]:
    """The confusion matrix as text: one row per true class, one column per prediction."""
    names = result.labels
    width = max(5, *(len(str(n)) for row in result.confusion for n in row))
    tags = [str(i) for i in range(len(names))]
    lines = ["true \\ predicted  " + " ".join(t.rjust(width) for t in tags)]
    for i, row in enumerate(result.confusion):
        lines.append(f"{tags[i]:>2} {names[i][:15]:<15} " + " ".join(str(n).rjust(width) for n in row))
    return lines


def write_confusion_plot(path: str | Path, result: EvalResult) -> None:
    """The confusion matrix as a picture (rows: true class, columns: prediction; each row
    as shares of its images), with per-class accuracy in the row labels."""
    from vitedge.errors import require

    require("matplotlib", "plot", "--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.array(result.confusion, dtype=np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(result.labels)
    fig, ax = plt.subplots(figsize=(3 + 0.5 * n, 2.5 + 0.45 * n))
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    rows = [f"{c['label']} ({c['accuracy']:.0%})" if c["accuracy"] is not None else c["label"]
            for c in result.per_class]
    ax.set_yticks(range(n), rows)
    ax.set_xticks(range(n), result.labels, rotation=60, ha="right")
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if shares[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true class (top-1 accuracy)")
    ax.set_title(f"{Path(result.model).name}: top-1 {result.top1:.2%} on {result.images} images")
    fig.tight_layout()
    from vitedge.fileio import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
