"""The tier-0 format rules: empty, cut by the length limit, cut mid-sentence, prompt echoes and template
leaks, each with a fixed confidence (no labelled data to fit them on)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from evalstream.wire.dimensions import FormatLabel

from .base import JudgeInput

__all__ = ["EDGE_CHARS", "NORMAL_STOPS", "FormatFinding", "format_finding", "normalise"]

EDGE_CHARS: Final = 4096  # template tokens are looked for in this many characters at each end
_QUOTES: Final = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u201c": '"', "\u201d": '"'})


def normalise(text: str) -> str:
    """NFKC, curly quotes straightened, case folded: how rules compare text."""
    return unicodedata.normalize("NFKC", text).translate(_QUOTES).casefold()


#: Fixed confidences for the format rules (no labelled data to fit them on). Deterministic checks
#: get 0.99; text heuristics less, because real answers sometimes end without punctuation or quote
#: the question. On the 2,250 XSTest v2 completions the echo and leak rules never fire.
_FORMAT_CONFIDENCE: Final[Mapping[str, float]] = {
    "empty": 0.99,
    "finish_length": 0.99,
    "template_leak": 0.95,
    "prompt_echo": 0.85,
    "cut_strong": 0.9,  # ends on a comma, colon, open bracket or a function word
    "cut_weak": 0.8,  # ends on a letter or digit in a prose line
    "ok": 0.9,  # the rules can miss a cut that happens to end on a full stop
}

_TEMPLATE_TOKENS: Final = re.compile(
    r"<\|(?:im_start|im_end|endoftext|eot_id|eom_id|start_header_id|end_header_id|begin_of_text|"
    r"end_of_text|system|user|assistant|end|fim_prefix|fim_suffix|fim_middle)\|>"
    r"|\[/?INST\]|<</?SYS>>|</?s>|<start_of_turn>|<end_of_turn>|<\|?endoftext\|?>"
    r"|(?m:^#{2,3} ?(?:Instruction|Response|Input|Human|Assistant|System) ?:)"
)
_FUNCTION_WORDS: Final = frozenset(
    {
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "as",
        "that",
        "which",
        "who",
        "than",
        "if",
        "is",
        "are",
        "was",
        "were",
        "be",
        "your",
        "my",
        "our",
        "their",
        "his",
        "her",
        "its",
        "this",
        "these",
        "those",
        "such",
        "can",
        "will",
        "would",
        "should",
        "could",
        "may",
        "might",
    }
)
_OPEN_ENDINGS: Final = frozenset(",;:(-\u2013\u2014/&")
_LINE_START_NOT_PROSE: Final = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022#>|]|```|    )")
_MIN_WORDS_FOR_CUT: Final = 12
_MIN_WORDS_LIST_PROSE: Final = 6  # a list item this long reads as a sentence
_MIN_ECHO_WORDS: Final = 4
_WORD: Final = re.compile(r"\w+")
#: ``finish_reason`` values by which a model or gateway says the model ended on its own. Then only
#: strong evidence in the text (an open ending, a dangling function word) counts as a cut: a last line
#: without a full stop is how verse, code, lists and headings end.
NORMAL_STOPS: Final = frozenset({"stop", "end_turn", "eos", "stop_sequence", "end"})
#: Median length (characters) of the non-blank lines at or under which text is line-shaped.
_LINE_SHAPED_MEDIAN: Final = 60


@dataclass(frozen=True, slots=True, kw_only=True)
class FormatFinding:
    label: FormatLabel
    confidence: float
    flags: tuple[str, ...]  # every rule that fired, most decisive first

    @property
    def score(self) -> float:
        """P(a format defect)."""
        return 1.0 - self.confidence if self.label is FormatLabel.OK else self.confidence


def _line_shaped(tail: str) -> bool:
    """Verse, lists, headings and code: several short lines, which need no full stop."""
    lines = [line for line in tail.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    lengths = sorted(len(line.strip()) for line in lines)
    return lengths[len(lengths) // 2] <= _LINE_SHAPED_MEDIAN


def _cut_mid_sentence(response: str, finish_reason: str) -> str | None:
    """``cut_strong`` on strong evidence of a cut; ``cut_weak`` on a prose line ending on a letter or
    digit, only where no ``finish_reason`` says the model stopped on its own (``NORMAL_STOPS``)."""
    tail = response[-EDGE_CHARS:].rstrip()
    if not tail:
        return None
    last = tail[-1]
    if last in _OPEN_ENDINGS:
        return "cut_strong"
    if not last.isalnum():
        return None  # full stop, quote, bracket, emoji, code fence: looks finished
    if len(_WORD.findall(response[:EDGE_CHARS])) < _MIN_WORDS_FOR_CUT:
        return None  # short answers ("Paris", "42") need no full stop
    last_line = tail.rsplit("\n", 1)[-1]
    words = _WORD.findall(last_line[-200:].casefold())
    if words and words[-1] in _FUNCTION_WORDS:
        return "cut_strong"
    if finish_reason in NORMAL_STOPS:
        return None  # the model ended on its own; a missing full stop is no evidence of a cut
    if _LINE_START_NOT_PROSE.match(last_line) and len(words) < _MIN_WORDS_LIST_PROSE:
        return None  # short list items, headings and code lines often end without punctuation
    if _line_shaped(tail):
        return None  # verse and other line-shaped text ends without punctuation
    return "cut_weak"


def _echoes_prompt(prompt: str, response: str) -> bool:
    prompt_words = _WORD.findall(normalise(prompt[:EDGE_CHARS]))
    if len(prompt_words) < _MIN_ECHO_WORDS:
        return False
    head = _WORD.findall(normalise(response[: len(prompt) * 2 + 64]))
    return head[: len(prompt_words)] == prompt_words


def format_finding(item: JudgeInput) -> FormatFinding:
    """Structural flags for one response. Pure; looks only at the head and tail of the response."""
    response = item.response
    stripped = response.strip()
    if not any(ch.isprintable() and not ch.isspace() for ch in stripped[:EDGE_CHARS]):
        return FormatFinding(
            label=FormatLabel.EMPTY, confidence=_FORMAT_CONFIDENCE["empty"], flags=("empty",)
        )
    found: list[tuple[FormatLabel, str]] = []
    if item.finish_reason == "length":
        found.append((FormatLabel.TRUNCATED, "finish_length"))
    edges = (
        response if len(response) <= 2 * EDGE_CHARS else response[:EDGE_CHARS] + "\n" + response[-EDGE_CHARS:]
    )
    if _TEMPLATE_TOKENS.search(edges):
        found.append((FormatLabel.TEMPLATE_LEAK, "template_leak"))
    if _echoes_prompt(item.prompt, response):
        found.append((FormatLabel.PROMPT_ECHO, "prompt_echo"))
    if item.finish_reason != "length" and (cut := _cut_mid_sentence(response, item.finish_reason)):
        found.append((FormatLabel.TRUNCATED, cut))
    if not found:
        return FormatFinding(label=FormatLabel.OK, confidence=_FORMAT_CONFIDENCE["ok"], flags=())
    order = ("finish_length", "template_leak", "prompt_echo", "cut_strong", "cut_weak")
    found.sort(key=lambda f: order.index(f[1]))
    label, flag = found[0]
    return FormatFinding(label=label, confidence=_FORMAT_CONFIDENCE[flag], flags=tuple(f for _, f in found))
