"""Command-line flags made from the options dataclasses: each field's `Flag` metadata
(`vitedge.options`) gives the flag, its help, its bounds and its default, so a command
declares which fields it takes and gets the options object back. Nothing here knows an
option; a new one is a field in `vitedge.options`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from vitedge.options import Flag

SEPARATOR = "__"
"""Parameter names are CLASS__field, so two dataclasses' fields never collide."""


class LazyChoice(click.Choice):
    """A Choice whose values are read when the command line is parsed (the registered
    backends, which a plugin may add after this module is imported)."""

    def __init__(self, values: Callable[[], tuple[str, ...]]):
        self._values = values
        super().__init__(values())

    @property
    def choices(self) -> tuple[str, ...]:
        return self._values()

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass


def _field(cls: type, name: str) -> dataclasses.Field[Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(f"{cls.__name__} has no field {name}")


def _param_type(spec: Flag, default: Any) -> Any:
    kind = spec.kind or (type(default) if default is not None and not isinstance(default, tuple)
                         else None)
    if spec.choices is not None:
        return LazyChoice(spec.choices) if callable(spec.choices) else click.Choice(spec.choices)
    if spec.path is not None:
        return click.Path(dir_okay=spec.path != "file", file_okay=spec.path != "folder",
                          path_type=str)
    if spec.parse is not None:
        return None
    if kind is int and (spec.least is not None or spec.most is not None):
        return click.IntRange(None if spec.least is None else int(spec.least),
                              None if spec.most is None else int(spec.most), min_open=spec.above)
    if kind is float and (spec.least is not None or spec.most is not None):
        return click.FloatRange(spec.least, spec.most, min_open=spec.above)
    return kind


def _parsed(parse: Callable[[str], Any]) -> Callable[..., Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        if value is None or not isinstance(value, str):
            return value
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return callback


def flag(cls: type, name: str, **override: Any) -> Callable[[Any], Any]:
    """One click option for field `name` of options dataclass `cls` (`override`: click
    settings that differ for this command, e.g. required=True)."""
    f = _field(cls, name)
    spec: Flag = f.metadata.get("flag") or Flag()
    default = f.default if f.default is not dataclasses.MISSING else None
    dest = f"{cls.__name__}{SEPARATOR}{name}"
    flag_name = spec.name or "--" + name.replace("_", "-")
    settings: dict[str, Any] = {"help": spec.help or None}
    if spec.negate:
        names = [spec.negate, dest]
        settings.update(is_flag=True, default=False)
    elif isinstance(default, bool):
        names = [flag_name, dest]
        settings.update(is_flag=True, default=False)
    else:
        names = [flag_name, dest]
        shown = spec.shown if spec.shown is not None else default
        settings.update(type=_param_type(spec, default), metavar=spec.metavar,
                        multiple=spec.multiple,
                        default=None if spec.multiple else shown,
                        show_default=shown is not None and not spec.multiple)
        if spec.parse is not None:
            settings["callback"] = _parsed(spec.parse)
    settings.update(override)
    return click.option(*names, **settings)


def flags(cls: type, *names: str) -> Callable[[Any], Any]:
    """Click options for several fields of `cls`, in the order given."""
    def decorate(fn: Any) -> Any:
        for name in reversed(names):
            fn = flag(cls, name)(fn)
        return fn
    return decorate


def options(cls: type, values: dict[str, Any], **extra: Any) -> Any:
    """An options object of `cls` from the parsed flags in `values` (taken out of it) and
    `extra` fields; a flag not given keeps the field's default."""
    prefix = f"{cls.__name__}{SEPARATOR}"
    given: dict[str, Any] = {}
    for key in [k for k in values if k.startswith(prefix)]:
        name, value = key[len(prefix):], values.pop(key)
        f = _field(cls, name)
        spec: Flag = f.metadata.get("flag") or Flag()
        if spec.negate:
            if value:
                given[name] = False
        elif spec.multiple:
            if value:
                given[name] = tuple(value)
        elif value is not None:
            given[name] = value
    return cls(**{**given, **extra})
