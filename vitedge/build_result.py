"""What `vitedge build` returns, filled in as its stages run: the artifact, what it was
built for, every step's time, the intermediate files written and reused, the verification
and the quantize step's own account, and the notes the user should read."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from vitedge.architecture import merge_words
from vitedge.precisions import precision_words
from vitedge.report import Reporter

T = TypeVar("T")


@dataclass
class BuildResult:
    artifact: Path
    backend: str
    backend_reason: str
    precision: str
    profile: str
    device: str
    size_bytes: int
    steps: dict[str, float] = field(default_factory=dict)
    intermediate: list[str] = field(default_factory=list)
    """Every file the build wrote besides the artifact (export, calibration table and cache,
    quantized model)."""
    reused: list[str] = field(default_factory=list)
    """Intermediates that were there already and were what this build makes."""
    details: dict[str, Any] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    """What `vitedge.verification` measured; empty with --no-verify."""
    quantization: dict[str, Any] = field(default_factory=dict)
    """The quantize step's own account: `summary` (what went into which format, in lines) and
    `check` (its graph against FP32 on the CPU, which also runs where the artifact cannot);
    empty where nothing was quantized or the quantized model was reused."""
    notes: list[str] = field(default_factory=list)
    float_parts: str | None = None
    """What the artifact's float arithmetic runs in here, where the backend decides it
    (OpenVINO: fp32, or bf16 for --precision bf16 and where an INT8 build measured it faster)."""
    merge: dict[str, Any] = field(default_factory=dict)
    """A merged graph's token merging (`vitedge.build_merge.merge_record`): schedule, tokens
    per block, GFLOPs against unmerged, --merge auto's choice; empty without merging."""

    @property
    def seconds(self) -> float:
        return round(sum(self.steps.values()), 2)

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "seconds": self.seconds}
        d["output"] = str(d.pop("artifact"))  # the file written: `output` in every command
        return d

    def summary_rows(self) -> list[tuple[str, str]]:
        """The build summary, as rows."""
        rows = [("artifact", f"{self.artifact} ({self.size_bytes / 1e6:.2f} MB)"),
                ("precision", precision_words(self.precision, self.float_parts)),
                ("backend", self.backend),
                ("profile", self.profile), ("device", self.device),
                ("build time", f"{self.seconds:.1f} s")]
        if self.merge.get("schedule"):
            m = self.merge
            rows.insert(2, ("token merging", merge_words(m["schedule"], m["tokens_per_block"],
                                                         m["gflops"], m["gflops_unmerged"])))
        if self.intermediate:
            rows.append(("also wrote", ", ".join(self.intermediate)))
        if self.reused:
            rows.append(("reused", ", ".join(self.reused)))
        return rows


def timed(result: BuildResult, report: Reporter, name: str, fn: Callable[[], T]) -> T:
    """`fn()`, shown as the step `name` and its seconds recorded in `result.steps`."""
    report.step(name)
    t = time.perf_counter()
    value = fn()
    result.steps[name] = round(time.perf_counter() - t, 2)
    report.step_done(name, result.steps[name])
    return value
