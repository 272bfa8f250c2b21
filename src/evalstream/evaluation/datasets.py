"""Where the shared labelled data lives, and readers for it.

The data (``../shared/data`` beside the repository) is real public labelled data; it is never copied
into the repository. Each folder's SOURCE.md gives its origin, licence and fields: keep that
attribution in anything derived from it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream.runtime.paths import REPO_ROOT
from evalstream.runtime.settings import env_name
from evalstream.wire.dimensions import RefusalLabel

__all__ = [
    "DATA_DIR_ENV",
    "XSTEST_DATASET",
    "XSTEST_DIR",
    "XSTEST_MODELS",
    "DataFormatError",
    "DataNotFoundError",
    "DataSettings",
    "XSTestModel",
    "XSTestPrompt",
    "XSTestRecord",
    "data_root",
    "read_xstest",
    "read_xstest_prompts",
]


class DataSettings(BaseSettings):
    """Where the shared labelled data is read from."""

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    data_dir: Path | None = None
    """Folder of the shared labelled data (xstest_v2_refusal/, ...); unset: ``../shared/data`` beside
    the repository."""


#: The environment variable of ``DataSettings.data_dir``.
DATA_DIR_ENV: Final = env_name(DataSettings, "data_dir")


class DataNotFoundError(FileNotFoundError):
    """The shared labelled data is not where it was expected."""


def data_root(explicit: Path | None = None) -> Path:
    """Explicit argument, then ``EVALSTREAM_DATA_DIR``, then ``../shared/data`` beside the repo."""
    candidates = [explicit] if explicit else []
    if (configured := DataSettings().data_dir) is not None:
        candidates.append(configured)
    candidates.append(REPO_ROOT.parent / "shared" / "data")
    for path in candidates:
        if path is not None and path.is_dir():
            return path
    raise DataNotFoundError(
        f"shared data not found (tried {', '.join(str(p) for p in candidates)}); "
        f"set {DATA_DIR_ENV} to the folder that holds xstest_v2_refusal/ and the other data sets"
    )


# --- XSTest v2 (xstest_v2_refusal/): refusal labels on 5 models x 450 prompts -----------------------

#: Folder of XSTest v2 under the data root; SOURCE.md there gives origin, licence and label meanings.
XSTEST_DIR: Final = "xstest_v2_refusal"
#: Dataset name carried in replayed events' labels.
XSTEST_DATASET: Final = "xstest_v2"

_XSTEST_LABELS_DIR = Path("evaluation") / "automated_evaluation_labels"
_XSTEST_ID_PREFIX = "v2-"


class DataFormatError(ValueError):
    """A data file does not have the columns or values its SOURCE.md describes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class XSTestModel:
    """One model setup of the XSTest v2 paper, as named by the tag in the file names."""

    tag: str  # "llama2orig": the file-name tag, used as the event's ``model``
    base_model: str  # "Llama-2-70b-chat"
    system_prompt: str  # "original", "no" or "guardrail"; "" where SOURCE.md names none

    @property
    def version(self) -> str:
        """The event's ``model_version``: base model and system-prompt setup, e.g.
        ``Llama-2-70b-chat/original-system-prompt`` (just ``GPT-4`` when no setup is named)."""
        if not self.system_prompt:
            return self.base_model
        return f"{self.base_model}/{self.system_prompt}-system-prompt"


#: The five setups of SOURCE.md ("What the model tags mean"), in the order they are read.
XSTEST_MODELS: Final[Mapping[str, XSTestModel]] = MappingProxyType(
    {
        m.tag: m
        for m in (
            XSTestModel(tag="gpt4", base_model="GPT-4", system_prompt=""),
            XSTestModel(tag="llama2new", base_model="Llama-2-70b-chat", system_prompt="no"),
            XSTestModel(tag="llama2orig", base_model="Llama-2-70b-chat", system_prompt="original"),
            XSTestModel(tag="mistralguard", base_model="Mistral-7B-Instruct-v0.1", system_prompt="guardrail"),
            XSTestModel(tag="mistralinstruct", base_model="Mistral-7B-Instruct-v0.1", system_prompt="no"),
        )
    }
)

_XSTEST_LABEL_CODES: Final[Mapping[str, RefusalLabel]] = MappingProxyType(
    {
        "1_full_compliance": RefusalLabel.FULL_COMPLIANCE,
        "2_full_refusal": RefusalLabel.FULL_REFUSAL,
        "3_partial_refusal": RefusalLabel.PARTIAL_REFUSAL,
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class XSTestPrompt:
    """One row of ``xstest_prompts.csv``."""

    number: int  # the ``id`` column, 1..450
    prompt: str  # the prompt text as the file has it today
    type: str  # one of 18 types; ``contrast_*`` types are unsafe
    safe: bool  # ``label == "safe"``
    focus: str
    note: str


@dataclass(frozen=True, slots=True, kw_only=True)
class XSTestRecord:
    """One model completion with its human and automatic refusal labels.

    ``prompt`` is the text the model answered (from the completion files). For ``v2-195`` it differs
    from today's ``xstest_prompts.csv`` ("my enemy's death" vs "someone's death"): the prompt file was
    edited in 2025, after the completions were made; ``current_prompt`` holds the new text.
    """

    model: str  # tag, e.g. "llama2orig"
    model_version: str  # e.g. "Llama-2-70b-chat/original-system-prompt"
    prompt_id: str  # "v2-1" .. "v2-450"
    prompt_type: str
    safe: bool
    prompt: str
    current_prompt: str
    completion: str
    annotation_1: RefusalLabel
    annotation_2: RefusalLabel
    annotators_agree: bool
    final_label: RefusalLabel  # adjudicated human label: the ground truth
    gpt4_label: RefusalLabel | None  # None where GPT-4 answered free text instead of a label
    gpt4_label_raw: str
    strmatch_label: RefusalLabel


def read_xstest_prompts(root: Path | None = None) -> dict[int, XSTestPrompt]:
    """``xstest_prompts.csv`` by prompt number."""
    path = data_root(root) / XSTEST_DIR / "xstest_prompts.csv"
    prompts: dict[int, XSTestPrompt] = {}
    for line, row in _csv_rows(path, {"id", "prompt", "type", "label", "focus", "note"}):
        if row["label"] not in ("safe", "unsafe"):
            raise DataFormatError(f"{path}:{line}: label {row['label']!r} is neither 'safe' nor 'unsafe'")
        number = _int(row["id"], path, line)
        prompts[number] = XSTestPrompt(
            number=number,
            prompt=row["prompt"],
            type=row["type"],
            safe=row["label"] == "safe",
            focus=row["focus"],
            note=row["note"],
        )
    return prompts


def read_xstest(root: Path | None = None, *, models: Sequence[str] | None = None) -> list[XSTestRecord]:
    """All labelled completions of the given model tags (default: all five), model by model, each in
    prompt order. Joins ``*_gpteval.csv`` and ``*_streval.csv`` by id (their shared columns must
    agree) and ``xstest_prompts.csv`` by number (``v2-12`` is prompt 12; the types must agree)."""
    wanted = list(XSTEST_MODELS) if models is None else list(models)
    unknown = [m for m in wanted if m not in XSTEST_MODELS]
    if unknown:
        raise ValueError(f"unknown XSTest model tag(s) {unknown}; choose from {', '.join(XSTEST_MODELS)}")
    base = data_root(root)
    prompts = read_xstest_prompts(base)
    records: list[XSTestRecord] = []
    for tag in wanted:
        records.extend(_read_xstest_model(base, XSTEST_MODELS[tag], prompts))
    return records


_COMPLETION_COLUMNS = frozenset(
    {"id", "type", "prompt", "completion", "annotation_1", "annotation_2", "agreement", "final_label"}
)
_SHARED_COLUMNS = sorted(_COMPLETION_COLUMNS)


def _read_xstest_model(
    base: Path, model: XSTestModel, prompts: Mapping[int, XSTestPrompt]
) -> list[XSTestRecord]:
    folder = base / XSTEST_DIR / _XSTEST_LABELS_DIR
    gpt_path = folder / f"xstest_v2_completions_{model.tag}_gpteval.csv"
    str_path = folder / f"xstest_v2_completions_{model.tag}_streval.csv"
    strmatch = {
        row["id"]: (line, row) for line, row in _csv_rows(str_path, _COMPLETION_COLUMNS | {"strmatch_label"})
    }
    records: list[XSTestRecord] = []
    for line, row in _csv_rows(gpt_path, _COMPLETION_COLUMNS | {"gpt4_label"}):
        where = f"{gpt_path}:{line}"
        prompt_id = row["id"]
        if prompt_id not in strmatch:
            raise DataFormatError(f"{where}: id {prompt_id!r} has no row in {str_path.name}")
        str_line, str_row = strmatch.pop(prompt_id)
        differ = [c for c in _SHARED_COLUMNS if row[c] != str_row[c]]
        if differ:
            raise DataFormatError(f"{where}: columns {differ} differ from {str_path.name} line {str_line}")
        if not prompt_id.startswith(_XSTEST_ID_PREFIX):
            raise DataFormatError(f"{where}: id {prompt_id!r} does not start with {_XSTEST_ID_PREFIX!r}")
        number = _int(prompt_id.removeprefix(_XSTEST_ID_PREFIX), gpt_path, line)
        prompt = prompts.get(number)
        if prompt is None or prompt.type != row["type"]:
            found = prompt.type if prompt else "no such prompt"
            raise DataFormatError(
                f"{where}: {prompt_id} has type {row['type']!r}, xstest_prompts.csv has {found!r} "
                f"for prompt {number}"
            )
        gpt4_raw = row["gpt4_label"]
        records.append(
            XSTestRecord(
                model=model.tag,
                model_version=model.version,
                prompt_id=prompt_id,
                prompt_type=row["type"],
                safe=prompt.safe,
                prompt=row["prompt"],
                current_prompt=prompt.prompt,
                completion=row["completion"],
                annotation_1=_label(row["annotation_1"], where),
                annotation_2=_label(row["annotation_2"], where),
                annotators_agree=_bool(row["agreement"], where),
                final_label=_label(row["final_label"], where),
                gpt4_label=_XSTEST_LABEL_CODES.get(gpt4_raw.strip()),
                gpt4_label_raw=gpt4_raw,
                strmatch_label=_label(str_row["strmatch_label"], f"{str_path}:{str_line}"),
            )
        )
    if strmatch:
        raise DataFormatError(f"{str_path}: ids {sorted(strmatch)[:5]} have no row in {gpt_path.name}")
    return records


def _csv_rows(path: Path, columns: AbstractSet[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows as dicts with the line number each starts on. Quoted fields may span lines."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataNotFoundError(
            f"{path} is missing; see {path.parent}/SOURCE.md for what belongs here"
        ) from exc
    with handle:
        reader = csv.DictReader(handle)
        missing = columns - set(reader.fieldnames or ())
        if missing:
            raise DataFormatError(f"{path}: columns {sorted(missing)} missing; found {reader.fieldnames}")
        line = reader.line_num + 1
        for row in reader:
            yield line, row
            line = reader.line_num + 1


def _label(raw: str, where: str) -> RefusalLabel:
    try:
        return _XSTEST_LABEL_CODES[raw.strip()]
    except KeyError:
        raise DataFormatError(
            f"{where}: label {raw!r} is not one of {', '.join(_XSTEST_LABEL_CODES)}"
        ) from None


def _bool(raw: str, where: str) -> bool:
    value = raw.strip().lower()
    if value not in ("true", "false"):
        raise DataFormatError(f"{where}: agreement {raw!r} is neither TRUE nor FALSE")
    return value == "true"


def _int(raw: str, path: Path, line: int) -> int:
    try:
        return int(raw)
    except ValueError:
        raise DataFormatError(f"{path}:{line}: {raw!r} is not a whole number") from None
