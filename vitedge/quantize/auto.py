"""`--precision auto`: a format per layer, the cheapest the target accelerates that keeps the
model within an accuracy budget.

1. Which formats: those every target of the profile accelerates with its backend (the
   precision table, `vitedge.backends.precisions`), cheapest first, then the base the
   rest of the graph runs in (FP16 on a GPU, FP32 on the CPU).
2. Sensitivity: each layer alone in each format, the others in the base: how far the output
   moves from FP32 (1 - mean cosine) on the sensitivity images.
3. Assignment: every layer in the cheapest format; while the whole model misses the budget
   (top-1 agreement with FP32, or mean cosine for a model without classes), the layer whose
   next dearer format recovers most moves to it, and the whole model is measured again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from vitedge.compare import Agreement, agreement
from vitedge.precisions import FP8, FP16, FP32, INT8, NVFP4
from vitedge.report import Reporter, reporter

SENSITIVITY_IMAGES = 64
"""Images each single-layer graph is measured on (the budget is checked on all)."""


def auto_formats(column: str, targets: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """(the formats to choose from, cheapest first; the base format) for the targets of one
    backend column. FP8 where the targets have it (it replaces INT8 there: the better 8-bit
    format for ViT activations, docs/sources.md#fp8-nvfp4-vit), NVFP4 before it on Blackwell,
    INT8 elsewhere."""
    from vitedge.backends.precisions import accelerated

    common = set.intersection(*(set(accelerated(column, t)) for t in targets)) if targets \
        else set()
    base = FP16 if FP16 in common else FP32  # FP16 only where it is accelerated
    formats: tuple[str, ...]
    if FP8 in common:
        formats = (NVFP4, FP8) if NVFP4 in common else (FP8,)
    else:
        formats = (INT8,) if INT8 in common else ()
    return formats, base


@dataclass
class AutoChoice:
    formats: dict[str, str]
    """Layer -> its format."""
    check: Agreement
    """The chosen graph against FP32 on the budget's images."""
    within: bool
    budget: str
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    """Layer -> format -> 1 - mean cosine with FP32 with that layer alone in that format."""
    measured_graphs: int = 0


def within_budget(a: Agreement, classifier: bool, max_drop: float) -> bool:
    """Top-1 agreement at least 1 - D/100 on the images measured (a model without classes:
    mean cosine). A rate of rare flips measured on a few hundred images is noisy: on other
    images the agreement can be a little lower (benchmarks/RESULTS.md shows by how much)."""
    least = 1.0 - max_drop / 100.0
    return (a.top1_agreement >= least) if classifier else (a.cosine >= least)


def budget_words(classifier: bool, max_drop: float) -> str:
    least = 1.0 - max_drop / 100.0
    return (f"top-1 agreement with FP32 >= {least:.2%}" if classifier else
            f"mean cosine with FP32 >= {least:.4f}")


def choose_formats(layers: list[str], formats: tuple[str, ...], base: str,
                   graph: Callable[[dict[str, str]], onnx.ModelProto],
                   run: Callable[[onnx.ModelProto, np.ndarray], np.ndarray],
                   reference: np.ndarray, inputs: np.ndarray, classifier: bool,
                   max_drop: float, report: Reporter | None = None) -> AutoChoice:
    """The cheapest assignment of `formats` (then `base`) to `layers` within the budget.
    `graph(assignment)` makes the quantized model, `run(model, inputs)` computes it as the
    CPU check does; `reference` is FP32's output on `inputs`."""
    rep = reporter(report)
    ladder = (*formats, base)
    few = slice(0, min(SENSITIVITY_IMAGES, len(inputs)))
    base_only = {layer: base for layer in layers}
    sensitivity: dict[str, dict[str, float]] = {layer: {base: 0.0} for layer in layers}
    total = len(layers) * len(formats)
    done = 0
    rep.step("measuring each layer in each format")
    for fmt in formats:
        for layer in layers:
            out = run(graph({**base_only, layer: fmt}), inputs[few])
            sensitivity[layer][fmt] = 1.0 - agreement(reference[few], out).cosine
            done += 1
            rep.progress(done, total)
    level = dict.fromkeys(layers, 0)
    measured = total

    def assignment() -> dict[str, str]:
        return {layer: ladder[level[layer]] for layer in layers}

    rep.step("choosing formats within the budget")
    check = agreement(reference, run(graph(assignment()), inputs))
    measured += 1
    step = max(1, len(layers) // 16)  # layers moved per round on a deep model
    while not within_budget(check, classifier, max_drop):
        movable = [layer for layer in layers if level[layer] < len(ladder) - 1]
        if not movable:
            break

        def gain(layer: str) -> float:
            here, dearer = ladder[level[layer]], ladder[level[layer] + 1]
            return sensitivity[layer][here] - sensitivity[layer][dearer]

        for layer in sorted(movable, key=gain, reverse=True)[:step]:
            level[layer] += 1
        check = agreement(reference, run(graph(assignment()), inputs))
        measured += 1
        rep.progress(sum(level.values()), len(layers) * (len(ladder) - 1))
    return AutoChoice(assignment(), check, within_budget(check, classifier, max_drop),
                      budget_words(classifier, max_drop), sensitivity, measured)
