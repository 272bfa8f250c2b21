"""Rich tables that stay readable in a narrow terminal: never a cell cut to "…".

``print_table`` prints a table as it is when it fits the console's width. Otherwise it turns the
table on its side (its columns become rows, its rows become columns headed by their first cell) and
splits the rows over as many tables as it takes for each to fit; a two-column table, or a row too
wide even on its own, is printed as "key: value" lines, which the terminal wraps and nothing cuts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

__all__ = ["fits", "print_table"]


def fits(table: Table, console: Console) -> bool:
    """Whether ``table`` fits ``console`` at its natural width (no cell wrapped or cut)."""
    from rich.measure import Measurement

    unbounded = console.options.update_width(1_000_000)  # measured within the console, it is clamped
    return Measurement.get(console, unbounded, table).maximum <= console.width


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` on ``console``: as it is if it fits, else on its side in parts, else as lines."""
    if fits(table, console):
        console.print(table)
        return
    columns = table.columns
    cells: list[list[RenderableType]] = [list(column.cells) for column in columns]
    rows = len(cells[0]) if cells else 0
    if len(columns) > 2:
        parts: list[list[int]] = []
        for row in range(rows):
            if parts and fits(_sideways(table, cells, [*parts[-1], row]), console):
                parts[-1].append(row)
            else:
                parts.append([row])
        if all(fits(_sideways(table, cells, part), console) for part in parts):
            # The title and caption on lines of their own (wrapped at the console's width): as the
            # title of a narrow table they would wrap to its width.
            if table.title:
                console.print(table.title, style="table.title")
            for part in parts:
                console.print(_sideways(table, cells, part))
            if table.caption:
                console.print(table.caption, style="table.caption")
            return
    _print_lines(console, table, cells, rows)


def _text(renderable: RenderableType | None) -> str:
    from rich.text import Text

    if renderable is None:
        return ""
    if isinstance(renderable, Text):
        return renderable.plain
    return str(renderable)


def _sideways(table: Table, cells: list[list[RenderableType]], rows: list[int]) -> Table:
    """``table`` turned on its side for ``rows``: one row per column, one column per row."""
    from rich.table import Table

    columns = table.columns
    turned = Table(box=table.box, show_lines=False)
    turned.add_column(_text(columns[0].header), justify="left", no_wrap=True)
    for row in rows:
        turned.add_column(_text(cells[0][row]), justify="right", no_wrap=True)
    for index, column in enumerate(columns[1:], start=1):
        turned.add_row(_text(column.header), *[cells[index][row] for row in rows])
    return turned


def _print_lines(console: Console, table: Table, cells: list[list[RenderableType]], rows: int) -> None:
    """One block per row: its first cell, then "header: value" lines, which the terminal wraps
    (soft wrap), as the title and caption: an address or a path stays in one piece, to copy."""
    if table.title:
        console.print(table.title, style="table.title", soft_wrap=True)
    headers = [_text(column.header) for column in table.columns]
    for row in range(rows):
        values = [_text(column[row]) for column in cells]
        if len(headers) == 2:
            console.print(f"{values[0]}: {values[1]}", soft_wrap=True, highlight=False)
            continue
        console.print(f"{headers[0]} {values[0]}", style="bold", soft_wrap=True, highlight=False)
        for header, value in zip(headers[1:], values[1:], strict=True):
            console.print(f"  {header}: {value}", soft_wrap=True, highlight=False)
    if table.caption:
        console.print(table.caption, style="table.caption", soft_wrap=True)
