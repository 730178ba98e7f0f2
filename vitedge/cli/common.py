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


class Bar(Reporter):
    """The stages' reporter on stderr: a progress bar named after the step, and warnings
    as yellow lines. With --json the bar is off and warnings still go to stderr."""

    def __init__(self, bar: Any = None):
        self.bar = bar
        self.task = bar.add_task("", total=None) if bar else None

    def progress(self, done: int, total: int) -> None:
        if self.bar:
            self.bar.update(self.task, completed=done, total=total)

    def step(self, name: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=name, completed=0, total=None)

    def warning(self, message: str) -> None:
        err.print(f"[yellow]warning:[/] {message}")


@contextlib.contextmanager
def progress(label: str, enabled: bool = True) -> Iterator[Bar]:
    if not enabled:
        yield Bar()
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
        reporter = Bar(bar)
        reporter.step(label)
        yield reporter
