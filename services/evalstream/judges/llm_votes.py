"""Confidence and vote combination for the LLM judge: pure functions of parsed replies.

Confidence, in order of preference:

1. ``logprobs``: the probability the judge gave the label (the label's tokens, with ``top_logprobs``
   for the alternatives), averaged over calls.
2. agreement: when the endpoint returns no logprobs the judge switches that model to ``n`` samples
   (``fallback_samples``) and counts votes across samples, panel models and orders. The majority
   label wins; its confidence is Laplace's rule of succession, ``(k + 1) / (n + 2)`` for ``k`` of
   ``n`` votes, so disagreement lowers it and one unanimous vote is not certainty. A pairwise A/B split
   is a ``tie``. Other ties go to the lead (first) model's vote.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from evalstream.wire.dimensions import Dimension, PairwiseLabel, RefusalLabel, quality_label

from .llm_http import Choice, TokenLogprob
from .prompts import ParsedVerdict

__all__ = ["Decision", "Vote", "combine_votes", "label_probabilities", "score_probabilities"]


# --------------------------------------------------------------------------------------------- confidence


def _value_tokens(tokens: Sequence[TokenLogprob], key: str, string: bool) -> tuple[int, int] | None:
    """(index of the first token holding the value of ``key``, char offset of the value in it)."""
    text = "".join(t.token for t in tokens)
    match = re.search(rf'"{re.escape(key)}"\s*:\s*' + ('"' if string else ""), text)
    if match is None:
        return None
    start, pos = match.end(), 0
    for i, t in enumerate(tokens):
        if pos + len(t.token) > start:
            return i, start - pos
        pos += len(t.token)
    return None


def label_probabilities(
    tokens: Sequence[TokenLogprob], key: str, labels: Collection[str]
) -> dict[str, float] | None:
    """P(label) for a JSON string field from token logprobs: the chosen label's tokens give its
    probability; each ``top_logprobs`` alternative that commits to a different label adds
    P(prefix) * P(alternative). None when the field or its tokens are not there."""
    found = _value_tokens(tokens, key, string=True)
    if found is None:
        return None
    first, offset = found
    probs: dict[str, float] = defaultdict(float)
    path, prefix = 0.0, ""
    for i, tok in enumerate(tokens[first:]):
        lead = offset if i == 0 else 0
        for alt, lp in tok.top:
            if alt == tok.token or len(alt) < lead or alt[:lead] != tok.token[:lead]:
                continue
            cand = prefix + alt[lead:]
            hits = [lab for lab in labels if (lab + '"').startswith(cand) or cand.startswith(lab + '"')]
            if len(hits) == 1:
                probs[hits[0]] += math.exp(path + lp)
        path += tok.logprob
        prefix += tok.token[lead:]
        if '"' in prefix:
            break
    value = prefix.split('"', 1)[0]
    if value not in labels:
        return None
    probs[value] += math.exp(path)
    return dict(probs)


def score_probabilities(
    tokens: Sequence[TokenLogprob], key: str, lo: int, hi: int
) -> dict[int, float] | None:
    """P(score) for a JSON integer field from the logprobs of its first token (a two-digit score whose
    first digit is a separate token counts as that digit: an underestimate of 10)."""
    found = _value_tokens(tokens, key, string=False)
    if found is None:
        return None
    first, offset = found
    head = tokens[first]
    digits = head.token[offset:]
    following = "".join(t.token for t in tokens[first + 1 : first + 3])
    chosen_text = re.match(r"\d+", digits + following)
    if chosen_text is None or not lo <= int(chosen_text.group()) <= hi:
        return None
    probs: dict[int, float] = defaultdict(float)
    probs[int(chosen_text.group())] += math.exp(head.logprob)
    for alt, lp in head.top:
        if alt == head.token or alt[:offset] != head.token[:offset]:
            continue
        text = alt[offset:].strip()
        if text.isdigit() and lo <= int(text) <= hi:
            probs[int(text)] += math.exp(lp)
    return dict(probs)


@dataclass(frozen=True, slots=True, kw_only=True)
class Vote:
    """One sampled verdict, in the item's frame (pairwise labels already un-swapped)."""

    model: str
    label: str
    score: float | None = None  # quality only
    probs: Mapping[str, float] | None = None  # label -> probability, from logprobs
    rationale: str = ""
    swapped: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    label: str
    score: float
    confidence: float
    source: Literal["logprobs", "agreement"]
    agreement: str  # "k/n"
    rationale: str


_REFUSING: Final = frozenset({RefusalLabel.FULL_REFUSAL, RefusalLabel.PARTIAL_REFUSAL})


def _score(dimension: Dimension, dist: Mapping[str, float], votes: Sequence[Vote]) -> float:
    total = sum(dist.values()) or 1.0
    if dimension is Dimension.REFUSAL:
        return sum(p for lab, p in dist.items() if lab in _REFUSING) / total
    if dimension is Dimension.PAIRWISE:
        return (dist.get(PairwiseLabel.A, 0.0) + 0.5 * dist.get(PairwiseLabel.TIE, 0.0)) / total
    scores = [v.score for v in votes if v.score is not None]
    return sum(scores) / len(scores) if scores else 0.0


def _majority(dimension: Dimension, votes: Sequence[Vote], weights: Mapping[str, float]) -> str:
    if dimension is Dimension.QUALITY:  # the label of the mean score
        return quality_label(sum(v.score or 0.0 for v in votes) / len(votes))
    top = max(weights.values())
    winners = {lab for lab, w in weights.items() if math.isclose(w, top)}
    if dimension is Dimension.PAIRWISE and {PairwiseLabel.A, PairwiseLabel.B} <= winners:
        return PairwiseLabel.TIE  # the orders or the panel disagree: neither is better
    # Other ties: the lead model's vote. With logprobs the most likely label may be one no vote chose
    # (the chosen label's probability split over token spellings, or sampling that was not greedy):
    # the estimate decides, and among equal estimates the label that sorts first.
    return next((v.label for v in votes if v.label in winners), min(winners))


def combine_votes(dimension: Dimension, votes: Sequence[Vote]) -> Decision:
    """Averaged logprob distributions when every vote has one, else a majority vote (PoLL) with
    confidence ``(k + 1) / (n + 2)``; see the module docstring."""
    if not votes:
        raise ValueError("no votes to combine")
    n = len(votes)
    counts = Counter(v.label for v in votes)
    if all(v.probs for v in votes):
        dist: dict[str, float] = defaultdict(float)
        for v in votes:
            for lab, p in (v.probs or {}).items():
                dist[lab] += p / n
        label = _majority(dimension, votes, dist)
        confidence, source = min(1.0, dist.get(label, 0.0)), "logprobs"
        weights: Mapping[str, float] = dist
    else:
        weights = {lab: c / n for lab, c in counts.items()}
        label = _majority(dimension, votes, weights)
        confidence, source = (counts.get(label, 0) + 1) / (n + 2), "agreement"
    return Decision(
        label=label,
        score=_score(dimension, weights, votes),
        confidence=confidence,
        source=source,  # type: ignore[arg-type]
        agreement=f"{counts.get(label, 0)}/{n}",
        rationale=next((v.rationale for v in votes if v.label == label), ""),
    )


def _swap(label: str) -> str:
    return {PairwiseLabel.A: PairwiseLabel.B, PairwiseLabel.B: PairwiseLabel.A}.get(
        PairwiseLabel(label), label
    )


def _vote(
    dimension: Dimension,
    model: str,
    swapped: bool,
    parsed: ParsedVerdict,
    choice: Choice,
    use_logprobs: bool = True,
) -> Vote:
    probs: dict[str, float] | None = None
    if choice.logprobs and use_logprobs:
        if dimension is Dimension.QUALITY:
            scores = score_probabilities(choice.logprobs, "score", 1, 10)
            if scores:
                total = sum(scores.values())
                folded: dict[str, float] = defaultdict(float)
                for s, p in scores.items():
                    folded[quality_label(s)] += p
                probs = dict(folded)
                parsed = ParsedVerdict(
                    label=parsed.label,
                    score=sum(s * p for s, p in scores.items()) / total,
                    rationale=parsed.rationale,
                )
        else:
            labels = [
                str(lab) for lab in (PairwiseLabel if dimension is Dimension.PAIRWISE else RefusalLabel)
            ]
            probs = label_probabilities(choice.logprobs, "label", labels)
    label = parsed.label
    if swapped:
        label = _swap(label)
        probs = {_swap(lab): p for lab, p in probs.items()} if probs else probs
    return Vote(
        model=model, label=label, score=parsed.score, probs=probs, rationale=parsed.rationale, swapped=swapped
    )
