"""Versioned judge prompts, the verdict schema of each dimension, and strict reply parsing.

A prompt is a file ``<dimension>.<version>.yaml`` beside this module with ``system`` (the
instructions) and ``user`` (a template). The template may hold only the placeholders ``{{prompt}}``,
``{{response}}``, ``{{response_a}}`` and ``{{response_b}}``, each exactly once. Rendering replaces
them in one pass with delimited blocks::

    <<<BEGIN RESPONSE 3f9a1c0e5d7b2a48>>>
    ...judged text, verbatim...
    <<<END RESPONSE 3f9a1c0e5d7b2a48>>>

The tag is a fresh random nonce that occurs in none of the judged texts, so judged text can neither
close its block nor be read as a placeholder; it is never interpolated into the instructions. The
reply must be one JSON object with exactly the dimension's fields (``verdict_schema``); anything
else is rejected by ``parse_reply``, whatever the judged text asked for.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from evalstream.wire.dimensions import LABELS, Dimension, PairwiseLabel, RefusalLabel, quality_label

__all__ = [
    "DIALECTS",
    "PROMPTS_DIR",
    "Dialect",
    "ParsedVerdict",
    "PromptError",
    "PromptTemplate",
    "ReplySchemaError",
    "load_prompt",
    "new_nonce",
    "parse_reply",
    "render_block",
    "response_format",
    "schema_instruction",
    "verdict_schema",
]

PROMPTS_DIR: Final = Path(__file__).resolve().parent
#: Placeholder -> block name, per dimension: what each prompt must show.
PLACEHOLDERS: Final[dict[Dimension, dict[str, str]]] = {
    Dimension.REFUSAL: {"prompt": "PROMPT", "response": "RESPONSE"},
    Dimension.QUALITY: {"prompt": "PROMPT", "response": "RESPONSE"},
    Dimension.PAIRWISE: {"prompt": "PROMPT", "response_a": "RESPONSE_A", "response_b": "RESPONSE_B"},
}
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_RATIONALE_MAX: Final = 2000
#: Label order in schemas and prompts (stable, not set order).
_LABEL_ORDER: Final[dict[Dimension, tuple[str, ...]]] = {
    Dimension.REFUSAL: tuple(RefusalLabel),
    Dimension.PAIRWISE: tuple(PairwiseLabel),
}


class PromptError(ValueError):
    """A prompt file is missing or does not follow the template rules."""


class ReplySchemaError(ValueError):
    """A judge reply does not fit the dimension's verdict schema."""


def new_nonce(texts: Mapping[str, str] | None = None) -> str:
    """16 hex digits that occur in none of ``texts``."""
    while True:
        nonce = secrets.token_hex(8)
        if not texts or all(nonce not in t for t in texts.values()):
            return nonce


def render_block(name: str, text: str, nonce: str) -> str:
    return f"<<<BEGIN {name} {nonce}>>>\n{text}\n<<<END {name} {nonce}>>>"


@dataclass(frozen=True, slots=True, kw_only=True)
class PromptTemplate:
    dimension: Dimension
    version: str
    system: str
    user: str

    @property
    def name(self) -> str:
        return f"{self.dimension}.{self.version}"

    def render(self, texts: Mapping[str, str], *, nonce: str | None = None) -> list[dict[str, str]]:
        """Chat messages for one item. ``texts`` maps each placeholder name to the judged text."""
        wanted = PLACEHOLDERS[self.dimension]
        missing = set(wanted) - set(texts)
        if missing:
            raise KeyError(f"prompt {self.name} needs texts for {sorted(missing)}, got {sorted(texts)}")
        tag = nonce or new_nonce(texts)
        if any(tag in t for t in texts.values()):
            raise ValueError(f"nonce {tag} occurs in the judged text; use new_nonce()")
        blocks = {key: render_block(block, texts[key], tag) for key, block in wanted.items()}
        user = _PLACEHOLDER.sub(lambda m: blocks[m.group(1)], self.user)  # one pass: no re-expansion
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def load_prompt(
    dimension: Dimension | str, version: str = "v1", folder: Path = PROMPTS_DIR
) -> PromptTemplate:
    """Load and check ``<dimension>.<version>.yaml``."""
    dim = Dimension(dimension)
    path = folder / f"{dim}.{version}.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PromptError(f"cannot read prompt {path}: {exc}") from exc
    if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("system", "user")):
        raise PromptError(f"prompt {path} needs string fields 'system' and 'user'")
    if raw.get("dimension") != dim.value or str(raw.get("version")) != version:
        raise PromptError(
            f"prompt {path} declares dimension={raw.get('dimension')!r} version={raw.get('version')!r}; "
            f"expected {dim.value!r} and {version!r} as in its file name"
        )
    found = _PLACEHOLDER.findall(raw["user"])
    expected = sorted(PLACEHOLDERS[dim])
    if sorted(found) != expected:
        raise PromptError(
            f"prompt {path}: user template has placeholders {found}, expected each of {expected} once"
        )
    if _PLACEHOLDER.search(raw["system"]):
        raise PromptError(
            f"prompt {path}: the system text must not hold placeholders; judged text goes in 'user'"
        )
    return PromptTemplate(dimension=dim, version=version, system=raw["system"], user=raw["user"])


def verdict_schema(dimension: Dimension) -> dict[str, Any]:
    """The JSON Schema of a reply: ``{"rationale": str, "label": <enum>}`` or ``"score": 1..10``."""
    verdict: dict[str, Any]
    if dimension is Dimension.QUALITY:
        field, verdict = "score", {"type": "integer", "minimum": 1, "maximum": 10}
    elif dimension in _LABEL_ORDER:
        field, verdict = "label", {"type": "string", "enum": list(_LABEL_ORDER[dimension])}
    else:
        raise ValueError(f"no LLM verdict schema for dimension {dimension!r}")
    return {
        "type": "object",
        "properties": {"rationale": {"type": "string"}, field: verdict},
        "required": ["rationale", field],
        "additionalProperties": False,
    }


#: Structured-output dialects, in the order ``response_format=auto`` tries them.
Dialect = Literal["json_schema", "json_object_schema", "json_object", "none"]
DIALECTS: Final[tuple[Dialect, ...]] = ("json_schema", "json_object_schema", "json_object", "none")


def response_format(dimension: Dimension, mode: Dialect) -> dict[str, Any] | None:
    """The ``response_format`` request field in one dialect: OpenAI's ``json_schema``, llama.cpp's
    ``json_object`` with a ``schema`` (a grammar), plain JSON mode, or none."""
    if mode == "json_schema":
        schema = {"name": f"{dimension}_verdict", "schema": verdict_schema(dimension), "strict": True}
        return {"type": "json_schema", "json_schema": schema}
    if mode == "json_object_schema":
        return {"type": "json_object", "schema": verdict_schema(dimension)}
    if mode == "json_object":
        return {"type": "json_object"}
    return None


def schema_instruction(dimension: Dimension) -> str:
    """The schema in words, appended to the system text when the dialect does not enforce it
    (``json_object``: any object passes; ``none``: nothing is enforced)."""
    return (
        "\n\nYour reply must be a JSON object valid under this JSON Schema, with no other keys:\n"
        + json.dumps(verdict_schema(dimension), separators=(",", ":"))
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedVerdict:
    label: str
    score: float | None  # quality 1-10; None for label dimensions
    rationale: str


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ReplySchemaError(f"reply repeats a key: {keys}")
    return dict(pairs)


def parse_reply(dimension: Dimension, content: str | None) -> ParsedVerdict:
    """The verdict in a reply's content, or ReplySchemaError. Strict: the whole content must be one
    JSON object with exactly the schema's keys, and the label one of the dimension's labels."""
    if content is None or not content.strip():
        raise ReplySchemaError("reply is empty")
    try:
        obj = json.loads(content, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise ReplySchemaError(f"reply is not one JSON object: {exc.msg} at char {exc.pos}") from exc
    if not isinstance(obj, dict):
        raise ReplySchemaError(f"reply is a JSON {type(obj).__name__}, expected an object")
    field = "score" if dimension is Dimension.QUALITY else "label"
    unknown = set(obj) - {"rationale", field}
    if unknown or field not in obj:
        raise ReplySchemaError(f"reply has keys {sorted(obj)}, expected 'rationale' and '{field}'")
    rationale = obj.get("rationale", "")
    if not isinstance(rationale, str):
        raise ReplySchemaError(f"'rationale' is a {type(rationale).__name__}, expected a string")
    value = obj[field]
    if dimension is Dimension.QUALITY:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
            raise ReplySchemaError(f"'score' is {value!r}, expected an integer from 1 to 10")
        return ParsedVerdict(
            label=quality_label(value), score=float(value), rationale=rationale[:_RATIONALE_MAX]
        )
    if not isinstance(value, str) or value not in LABELS[dimension]:
        raise ReplySchemaError(f"'label' is {value!r}, expected one of {sorted(LABELS[dimension])}")
    return ParsedVerdict(label=value, score=None, rationale=rationale[:_RATIONALE_MAX])
