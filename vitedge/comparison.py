"""`vitedge compare A B C --data FOLDER`: several artifacts of one model side by side in one
table: accuracy on a labelled folder, top-1 agreement with the first (the reference), size
on disk and median latency per image, measured here in one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vitedge.errors import VitedgeError
from vitedge.options import CompareOptions, EvalOptions
from vitedge.report import Reporter, reporter


@dataclass
class Compared:
    artifact: str
    backend: str
    precision: str
    size_bytes: int
    top1: float
    top5: float
    agreement: float | None
    """Top-1 agreement with the first artifact (None for the first itself)."""
    mean_kl: float | None
    latency_ms: float
    """Median model inference time of one image at batch 1 on this machine."""


@dataclass
class Comparison:
    data: str
    images: int
    rows: list[Compared] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {"data": self.data, "images": self.images, "reference": self.rows[0].artifact,
                "artifacts": [asdict(r) for r in self.rows], "warnings": self.warnings,
                "skipped": self.skipped}


def compare_artifacts(artifacts: list[str | Path], options: CompareOptions,
                      report: Reporter | None = None) -> Comparison:
    """Each artifact evaluated on `options.data` against the first, its size, and its
    median batch-1 latency here."""
    import vitedge.backends as backends
    from vitedge.evaluate import evaluate

    if len(artifacts) < 2:
        raise VitedgeError("compare needs two or more artifacts", "vitedge eval judges one")
    rep = reporter(report)
    result: Comparison | None = None
    for i, artifact in enumerate(artifacts):
        rep.step(f"evaluating {Path(artifact).name}")
        r = evaluate(artifact, EvalOptions(data=options.data, limit=options.limit,
                                           reference=None if i == 0 else artifacts[0]), rep)
        if result is None:
            result = Comparison(str(options.data), r.images, skipped=r.skipped)
        result.warnings += [w for w in r.warnings if w not in result.warnings]
        backend = backends.get(backends.backend_of(artifact))
        rep.step(f"timing {Path(artifact).name}")
        result.rows.append(Compared(
            str(artifact), backend.name, r.precision, backend.artifact_size(Path(artifact)),
            r.top1, r.top5, r.agreement.top1_agreement if r.agreement else None,
            r.agreement.mean_kl if r.agreement else None,
            _latency_ms(artifact, options.iterations)))
    assert result is not None
    return result


def _latency_ms(artifact: str | Path, iterations: int) -> float:
    """Median time of one batch-1 inference of the model alone (a zero input)."""
    from vitedge.backends import load_runner
    from vitedge.backends.base import median_ms

    with load_runner(artifact) as runner:
        x = runner.zero_input()
        return median_ms(lambda: runner.infer(x), least=iterations)
