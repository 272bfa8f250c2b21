"""Command-line flags derived from a settings class, so a setting is declared once.

Each field of a pydantic-settings class becomes ``--field-name`` (its description is the help, its
environment name and default are shown); a process's ``main()`` adds the flags of its settings
classes to one ``argparse`` parser and builds the settings from the flags that were given, so the
order stays: explicit flag, then environment, then default. A field whose flag reads differently
(an older or shorter name, ``NAME=VALUE`` repeated, a negative switch) says so with a ``Flag``.

Why not pydantic-settings' own ``CliSettingsSource``: it names flags after fields (or their aliases,
which would rename the environment variables too), so it cannot keep the flags the processes
already take (``--judge``, ``--grace``, ``--no-transactions``, ``--label-cap NAME=N``), and the
pipeline must leave unknown flags to Beam (``parse_known_args``).
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

from evalstream.runtime.settings import env_name

__all__ = ["Flag", "SettingsFlags", "add_settings_flags", "describe_default", "field_type", "pairs"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Flag:
    """How one field's flag differs from ``--field-name`` taking one value."""

    #: The flag's name (``--judge``) instead of ``--field-name``.
    name: str | None = None
    #: Parses one value (argparse reports its ``ArgumentTypeError`` or ``ValueError`` with usage).
    parse: Callable[[str], Any] | None = None
    #: The flag may be given several times; ``collect`` turns the parsed values into the field's value.
    collect: Callable[[list[Any]], Any] | None = None
    metavar: str | None = None
    #: A bool field set to False by this switch (e.g. ``--no-transactions``); no ``--x``/``--no-x`` pair.
    switch_off: bool = False
    #: Help when the field's description is not the right text for the command line.
    help: str | None = None


def field_type(info: FieldInfo) -> Any:
    """The field's type without ``None`` (``int | None`` -> ``int``)."""
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _scalar(kind: Any) -> tuple[Callable[[str], Any] | None, list[str] | None]:
    """argparse ``type`` and ``choices`` for a field type; complex types take JSON."""
    if kind in (int, float, Path):
        return kind, None
    if isinstance(kind, type) and issubclass(kind, Enum):
        return str, [str(member.value) for member in kind]
    if typing.get_origin(kind) is Literal:
        return str, [str(a) for a in typing.get_args(kind)]
    if typing.get_origin(kind) in (dict, list, tuple) or kind in (dict, list, tuple):
        return _json, None
    return None, None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"expected JSON, e.g. '{{\"2\": 120}}'; got {text!r}: {exc}"
        ) from exc


def describe_default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "unset"
    if value == "":
        return '""'
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value)
    return str(value)


def pairs(what: str) -> Callable[[str], tuple[str, str]]:
    """A parser of ``NAME=VALUE`` for the flag ``what`` (repeat it for several)."""

    def parse(text: str) -> tuple[str, str]:
        name, sep, value = text.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise argparse.ArgumentTypeError(f"{what} expects NAME=VALUE (e.g. model=gpt-4o), got {text!r}")
        return name.strip(), value.strip()

    return parse


@dataclass(frozen=True, slots=True)
class SettingsFlags:
    """The flags of one settings class on a parser; turns parsed arguments into field values."""

    cls: type[BaseSettings]
    #: field name -> argparse ``dest``
    dests: Mapping[str, str]
    #: field name -> the flag (``--judge``)
    names: Mapping[str, str]
    collectors: Mapping[str, Callable[[list[Any]], Any]]

    def explicit(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields given on the command line (unset flags are left to the environment)."""
        values: dict[str, Any] = {}
        for field, dest in self.dests.items():
            value = getattr(args, dest)
            if value is None:
                continue
            collect = self.collectors.get(field)
            values[field] = collect(value) if collect is not None else value
        return values

    def build(self, args: argparse.Namespace) -> BaseSettings:
        return self.cls(**self.explicit(args))


def _fields(cls: type[BaseSettings], only: Collection[str] | None, skip: Collection[str]) -> Iterator[str]:
    for field in cls.model_fields:
        if (only is None or field in only) and field not in skip:
            yield field


def add_settings_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type[BaseSettings],
    *,
    flags: Mapping[str, Flag] | None = None,
    only: Collection[str] | None = None,
    skip: Collection[str] = (),
) -> SettingsFlags:
    """Add ``--field-name`` for each field of ``cls`` (or ``only`` these, less ``skip``)."""
    flags = flags or {}
    unknown = set(flags) - set(cls.model_fields)
    if unknown:
        raise ValueError(f"flags for unknown fields of {cls.__name__}: {sorted(unknown)}")
    dests: dict[str, str] = {}
    names: dict[str, str] = {}
    collectors: dict[str, Callable[[list[Any]], Any]] = {}
    for field in _fields(cls, only, skip):
        info = cls.model_fields[field]
        spec = flags.get(field, Flag())
        name = spec.name or "--" + field.replace("_", "-")
        dest = field
        if any(action.dest == dest for action in parser._actions):
            raise ValueError(f"{cls.__name__}.{field}: the parser already has a flag for {dest!r}")
        text = spec.help or (info.description or "").rstrip(".")
        where = f"env {env_name(cls, field)}, default {describe_default(info)}".replace("%", "%%")
        help_text = f"{text} ({where})" if text else f"({where})"
        kind = field_type(info)
        options: dict[str, Any] = {"dest": dest, "help": help_text, "default": None}
        if spec.switch_off:
            parser.add_argument(name, action="store_const", const=False, **options)
        elif kind is bool:
            parser.add_argument(name, action=argparse.BooleanOptionalAction, **options)
        else:
            parse, choices = _scalar(kind)
            if spec.parse is not None:
                parse = spec.parse
            if parse is not None:
                options["type"] = parse
            if choices is not None:
                options["choices"] = choices
            if spec.metavar is not None:
                options["metavar"] = spec.metavar
            if spec.collect is not None:
                options["action"] = "append"
                collectors[field] = spec.collect
            parser.add_argument(name, **options)
        dests[field] = dest
        names[field] = name
    return SettingsFlags(cls, dests, names, collectors)
