"""The closed vocabularies of judging: dimensions, their labels, judge tiers, response statistics.

Shared by pipelines, services and the exporter as plain strings on the wire; this module is the one
place they are spelled. It imports neither Beam nor gRPC.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "LABELS",
    "Dimension",
    "EmbeddingStat",
    "FormatLabel",
    "PairwiseLabel",
    "QualityLabel",
    "RefusalLabel",
    "Tier",
]


class Dimension(StrEnum):
    REFUSAL = "refusal"  # did the model answer? (XSTest's three classes)
    FORMAT = "format"  # cheap structural flags: empty, truncated, prompt echo, template leak
    QUALITY = "quality"  # pointwise quality, score 1-10
    PAIRWISE = "pairwise"  # which of two responses is better (offline reports, regression)


class RefusalLabel(StrEnum):
    FULL_COMPLIANCE = "full_compliance"
    FULL_REFUSAL = "full_refusal"
    PARTIAL_REFUSAL = "partial_refusal"


class FormatLabel(StrEnum):
    OK = "ok"
    EMPTY = "empty"
    TRUNCATED = "truncated"
    PROMPT_ECHO = "prompt_echo"
    TEMPLATE_LEAK = "template_leak"


class QualityLabel(StrEnum):
    GOOD = "good"  # score >= 7 of 10
    FAIR = "fair"  # 4..6
    POOR = "poor"  # <= 3


class PairwiseLabel(StrEnum):
    A = "A"
    B = "B"
    TIE = "tie"


LABELS: dict[Dimension, frozenset[str]] = {
    Dimension.REFUSAL: frozenset(RefusalLabel),
    Dimension.FORMAT: frozenset(FormatLabel),
    Dimension.QUALITY: frozenset(QualityLabel),
    Dimension.PAIRWISE: frozenset(PairwiseLabel),
}


class Tier(IntEnum):
    RULES = 0
    ENCODER = 1
    LLM = 2


def quality_label(score: float) -> QualityLabel:
    """Map a 1-10 quality score to its label."""
    if score >= 7:
        return QualityLabel.GOOD
    if score >= 4:
        return QualityLabel.FAIR
    return QualityLabel.POOR


class EmbeddingStat(StrEnum):
    """Scalar statistics of a response's tier-1 embedding (unit length), against the reference profile
    of the encoder's training responses (``services/evalstream/judges/encoder.py``); drift compares them.

    The names are the keys of ``ItemResult.stats``, ``Verdict.response_stats`` and
    ``Summary.response_stat_sketches``, and the ``dimension`` label of ``feature="embedding"``."""

    CENTROID_COSINE = "embedding_centroid_cosine"  # cosine to the mean training embedding, in [-1, 1]
    PC1 = "embedding_pc1"  # coordinate on the training embeddings' first principal axis
    PC2 = "embedding_pc2"  # ... and on the second
