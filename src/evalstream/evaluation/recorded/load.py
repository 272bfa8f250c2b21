"""Choosing a recorded set, a labelled-items file or a pair of tables: the entry of ``calibrate`` and
``report``. A recorded set and a file take one path: both are read into labelled items
(``labelled_items.LabelledItems``), and those into the labelled set."""

from __future__ import annotations

from pathlib import Path

from evalstream.evaluation.judgements import (
    LabelledSet,
    TableError,
    choose_truth_annotator,
    read_human_labels,
    read_judgements,
    write_human_labels,
    write_judgements,
)
from evalstream.evaluation.labelled_items import LabelledItems, is_labelled_items_file, read_labelled_items

from .common import RecordedData
from .judgebench import build_judgebench
from .llmbar import build_llmbar
from .xstest import build_xstest

_BUILDERS = {
    RecordedData.XSTEST: build_xstest,
    RecordedData.LLMBAR: build_llmbar,
    RecordedData.JUDGEBENCH: build_judgebench,
}


def read_items(data: RecordedData | str, root: Path | None = None, *, seed: int = 0) -> LabelledItems:
    """The labelled items of a recorded data set (split with ``seed``) or of a labelled-items file."""
    if not isinstance(data, RecordedData) and is_labelled_items_file(data):
        path = Path(data)
        items = read_labelled_items(path)
        if not any(item.judgements for item in items):
            raise TableError(
                f"{path} has human labels but no recorded judgements; ask the judges first: "
                f"evalstream collect --data {path} --judges 0=HOST:PORT,... (it writes the items with "
                "their judgements), then calibrate or report on what it wrote"
            )
        return LabelledItems(name=path.stem, items=tuple(items))
    try:
        which = RecordedData(data)
    except ValueError:
        raise TableError(
            f"unknown recorded data set {data!r}; choose one of {', '.join(RecordedData)}, a labelled-items "
            ".jsonl file, or pass --judgements and --humans tables"
        ) from None
    return _BUILDERS[which](root, seed=seed)


def build(data: RecordedData | str, root: Path | None = None, *, seed: int = 0) -> LabelledSet:
    """The labelled set of a recorded data set or a labelled-items file, split with ``seed``."""
    return read_items(data, root, seed=seed).labelled_set(seed=seed)


def load_labelled_set(
    *,
    data: str | None,
    judgements: Path | None,
    humans: Path | None,
    truth_annotator: str | None = None,
    seed: int = 0,
    write_tables: Path | None = None,
    root: Path | None = None,
) -> LabelledSet:
    """A recorded set (``data``) or a pair of tables, the shared entry of ``calibrate`` and ``report``."""
    if data is not None and (judgements is not None or humans is not None):
        raise TableError("give either --data or --judgements with --humans, not both")
    if data is not None:
        labelled = read_items(data, root, seed=seed).labelled_set(truth_annotator=truth_annotator, seed=seed)
    elif judgements is not None and humans is not None:
        human_rows = read_human_labels(humans)
        labelled = LabelledSet(
            name=judgements.stem,
            judgements=tuple(read_judgements(judgements)),
            humans=tuple(human_rows),
            truth_annotator=choose_truth_annotator(human_rows, truth_annotator),
        )
    else:
        raise TableError(
            f"no labelled data: pass --data ({', '.join(RecordedData)}, or a labelled-items .jsonl file) "
            "or both --judgements and --humans"
        )
    if write_tables is not None:
        write_tables.mkdir(parents=True, exist_ok=True)
        write_judgements(write_tables / f"{labelled.name}.judgements.jsonl", labelled.judgements)
        write_human_labels(write_tables / f"{labelled.name}.humans.jsonl", labelled.humans)
    return labelled
