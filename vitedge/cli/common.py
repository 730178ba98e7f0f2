"""What every command shares: the consoles, the command class that gives each command its
`--json` and `--debug`, the progress bar the stages report through, and the few ways a
result is printed. No command's policy lives here."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from vitedge.report import Reporter

out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 200,
              soft_wrap=not sys.stdout.isatty())
"""Piped into a log, tables keep their columns instead of folding at 80 characters, and a
line with a long path stays one line for grep."""
err = Console(stderr=True, soft_wrap=True)  # an error line or a path is never broken in two


def _set_debug(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        os.environ["VITEDGE_DEBUG"] = "1"


def debug_option() -> Callable[[Any], Any]:
    return click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                        callback=_set_debug, help="Show tracebacks for errors.")


class VitedgeCommand(click.Command):
    """A command with `--json` (as the parameter `as_json`) and `--debug`, declared here
    once for every command."""

    def __init__(self, *args: Any, json_help: str = "Print the result as JSON.",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(["--json", "as_json"], is_flag=True, help=json_help))
        self.params.append(click.Option(["--debug"], is_flag=True, expose_value=False,
                                        is_eager=True, callback=_set_debug,
                                        help="Show tracebacks for errors."))


def command(name: str | None = None, json_help: str = "Print the result as JSON.",
            **kwargs: Any) -> Callable[[Any], click.Command]:
    return click.command(name, cls=VitedgeCommand, json_help=json_help, **kwargs)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def warn(warnings: list[str], as_json: bool) -> None:
    """Warnings on stderr, one line each (with --json they go into the JSON instead)."""
    if not as_json:
        for line in warnings:
            err.print(f"[yellow]warning:[/] {line}")


def notes(lines: list[str]) -> None:
    for line in lines:
        err.print(f"[yellow]note:[/] {line}")


def json_or_notes(result: Any, as_json: bool) -> bool:
    """Print the result as JSON (True: nothing more to print) or its notes on stderr."""
    if as_json:
        print_json(result.to_dict())
        return True
    notes(result.notes)
    return False


def rows_table(rows: list[tuple[str, str]], title: str | None = None) -> Table:
    """A two-column table of (what, value) rows, as `inspect`, `profiles` and `build` show."""
    from rich.markup import escape
    from rich.text import Text

    table = Table(show_header=False, title=escape(title) if title else None)
    for key, value in rows:
        table.add_row(Text(key), Text(value))  # data, not markup: "[tensorrt]" stays
    return table


def stage_table(stages: dict[str, Any], title: str) -> Table:
    table = Table("stage", "mean ms", "p50", "p90", "p99", "max", title=title)
    for stage, s in stages.items():
        table.add_row(stage, f"{s['mean']:.3f}", f"{s['p50']:.3f}", f"{s['p90']:.3f}",
                      f"{s['p99']:.3f}", f"{s['max']:.3f}")
    return table


class Activity:
    """What the running command is doing (its label, the step it is on, the steps it has
    finished), so that a Ctrl-C can say what it interrupted."""

    label: str | None = None
    step: str | None = None
    done: list[tuple[str, float]] = []

    @classmethod
    def start(cls, label: str | None) -> None:
        cls.label, cls.step, cls.done = label, None, []

    @classmethod
    def interrupted(cls) -> str | None:
        """The line a Ctrl-C leaves, or None when no stage was running."""
        if cls.label is None:
            return None
        line = f"interrupted while {cls.label}"
        if cls.step and cls.step != cls.label:
            line += f", during {cls.step}"
        if cls.done:
            line += " (finished: " + ", ".join(f"{n} {s:.2f} s" for n, s in cls.done) + ")"
        return line + "; no partial file is left"


class Bar(Reporter):
    """The stages' reporter on stderr: a progress bar named after the step, and warnings
    as yellow lines. With --json the bar is off and warnings still go to stderr. With
    `lines` (stdout piped into a log or `| cat`), each step's line is printed on stdout as
    the step ends, where the bar and the final summary would show nothing until the end."""

    def __init__(self, bar: Any = None, lines: bool = False):
        self.bar = bar
        self.lines = lines
        self.task = bar.add_task("", total=None) if bar else None

    def progress(self, done: int, total: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=done, total=total)

    def step(self, name: str) -> None:
        Activity.step = name
        if self.bar:
            self.bar.update(self.task, description=name, completed=0, total=None)

    def step_done(self, name: str, seconds: float) -> None:
        Activity.done.append((name, seconds))
        Activity.step = None  # between steps, until the next begins
        if self.lines:
            out.print(f"  {name:<22} {seconds:7.2f} s", highlight=False)
            out.file.flush()

    def warning(self, message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}")


@contextlib.contextmanager
def progress(label: str, enabled: bool = True) -> Iterator[Bar]:
    Activity.start(label)
    if not enabled:
        yield Bar()
        Activity.start(None)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                  console=err, transient=True) as bar:
        reporter = Bar(bar, lines=not out.is_terminal)
        reporter.step(label)
        yield reporter
    Activity.start(None)
