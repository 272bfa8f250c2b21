"""Options several commands share, declared once (``Annotated`` aliases for typer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DataOption", "HumansOption", "JudgementsOption"]

#: A built-in recorded set or a labelled-items file with recorded judgements.
DataOption = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="xstest, llmbar or judgebench (../shared/data), or a labelled-items .jsonl file "
        "with recorded judgements (docs/calibration.md).",
    ),
]
#: A judgement table instead of ``--data``.
JudgementsOption = Annotated[Path | None, typer.Option(help="Judgement table (JSONL) instead of --data.")]
#: The human labels that go with ``--judgements``.
HumansOption = Annotated[Path | None, typer.Option(help="Human-label table (JSONL), with --judgements.")]
