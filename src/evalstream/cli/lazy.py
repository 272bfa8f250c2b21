"""Commands whose modules are imported only when the command runs (or shows its own ``--help``).

``evalstream --help`` lists every command without importing calibration, Kafka or Beam: a lazy
command is known by its name, the ``module:function`` of its typer shell and its one-line summary
(``tests/test_cli_lazy.py`` checks the summary is the first line of the shell's docstring). This is
click's documented pattern for lazily loaded subcommands ("Lazily Loading Subcommands" in the click
docs), on typer's group class. (Typer carries its own copy of click, ``typer._click``; its types are
written ``Any`` here rather than imported from a private module.)
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

__all__ = ["LazyCommand", "LazyGroup", "lazy_group"]


@dataclass(frozen=True, slots=True)
class LazyCommand:
    """Where a command's typer shell is (``"evalstream.cli.report:report_command"``) and its summary."""

    target: str
    summary: str

    def load(self, name: str) -> Any:
        """The shell as typer makes it into a click command (imports its module)."""
        module, _, attr = self.target.partition(":")
        shell = getattr(importlib.import_module(module), attr)
        single = typer.Typer(add_completion=False)
        single.command(name)(shell)
        return typer.main.get_command(single)


class _Placeholder(TyperCommand):
    """Lists a lazy command with its summary; loads the real one when it is run or asked for help."""

    def __init__(self, name: str, lazy: LazyCommand) -> None:
        super().__init__(name, short_help=lazy.summary, help=lazy.summary)
        self._lazy = lazy

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Any = None,
        **extra: Any,
    ) -> Any:
        return self._lazy.load(self.name or "").make_context(info_name, args, parent=parent, **extra)


class LazyGroup(TyperGroup):
    """A typer group that also holds lazy commands (``lazy_group`` makes one per app)."""

    lazy: Mapping[str, LazyCommand] = {}

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name in self.lazy:
            return _Placeholder(cmd_name, self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)


def lazy_group(commands: Mapping[str, LazyCommand]) -> type[LazyGroup]:
    """A ``LazyGroup`` class holding ``commands`` (for ``typer.Typer(cls=...)``)."""
    return type("EvalstreamGroup", (LazyGroup,), {"lazy": dict(commands)})
