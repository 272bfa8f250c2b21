"""JSON Lines files and pydantic errors, read and explained the same way everywhere.

Judgement tables, human-label tables and label files are JSON Lines: one JSON object a line, blank
lines skipped. ``json_objects`` yields each object with its line number and raises the caller's error
type with a message that names the file, the line and what is wrong; ``explain`` turns a pydantic
``ValidationError`` into one line that names each field, the problem and the value that arrived.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

__all__ = ["explain", "json_objects"]


def json_objects(path: Path, *, kind: str, error: type[Exception]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for each non-blank line of ``path``; ``error`` for the first bad one."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read the {kind} {path}: {exc}") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(
                f"{path}:{number}: not JSON ({exc.msg}); the {kind} is JSON Lines, one object a line"
            ) from None
        if not isinstance(raw, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(raw).__name__}")
        yield number, raw


def explain(exc: ValidationError, *, whole: str = "record") -> str:
    """Each error of ``exc`` as ``field: message (got value)``; ``whole`` names an error of no field."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or whole
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)
