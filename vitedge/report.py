"""What a long stage tells whoever watches it: the step it is on, progress within a step,
and warnings (skipped images, notes). One object instead of positional callbacks, so every
stage takes `report=None` the same way; the CLI's progress bar is one, `Reporter()` says
nothing, and `Collect` keeps everything (tests, scripts)."""

from __future__ import annotations

from dataclasses import dataclass, field


class Reporter:
    """Says nothing; subclass and override what you want to show."""

    def step(self, name: str) -> None:
        """A new step begins (export, calibrate, quantize, ...)."""

    def step_done(self, name: str, seconds: float) -> None:
        """Step `name` ended after `seconds` (a piped log shows each as it ends)."""

    def progress(self, done: int, total: int) -> None:
        """`done` of `total` units of the current step."""

    def warning(self, message: str) -> None:
        """Something the user should know, that does not stop the stage."""


QUIET = Reporter()


def reporter(report: Reporter | None) -> Reporter:
    return report if report is not None else QUIET


@dataclass
class Collect(Reporter):
    """Keeps every step, the last progress and every warning."""

    steps: list[str] = field(default_factory=list)
    last_progress: tuple[int, int] | None = None
    warnings: list[str] = field(default_factory=list)

    def step(self, name: str) -> None:
        self.steps.append(name)

    def progress(self, done: int, total: int) -> None:
        self.last_progress = (done, total)

    def warning(self, message: str) -> None:
        self.warnings.append(message)
