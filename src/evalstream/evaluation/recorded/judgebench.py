"""JudgeBench as labelled items with its recorded judgements (see the package doc)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from evalstream.evaluation.datasets import (
    DataFormatError,
    DataNotFoundError,
    data_root,
)
from evalstream.evaluation.judgements import (
    HumanLabel,
    Judgement,
    Split,
    assign_split,
)
from evalstream.evaluation.labelled_items import LabelledItems
from evalstream.wire.dimensions import Dimension, PairwiseLabel
from evalstream.wire.jsonl import json_objects

from .common import (
    FRACTIONS,
    ORDER_VOTES,
    REWARD_MARGIN,
    TEMPLATE_CHARS,
    VOTES_SOURCE,
    Content,
    RecordedData,
    cost,
    cost_note,
    from_votes,
    labelled_items,
    tokens,
)

# --- JudgeBench ------------------------------------------------------------------------------------

JUDGEBENCH_DIR: Final = "judgebench"
_JB_SET: Final = "dataset=judgebench,response_model=gpt-4o-2024-05-13"
#: output file's judge model -> (judge name, tier)
JUDGEBENCH_JUDGES: Final[Mapping[str, tuple[str, int]]] = MappingProxyType(
    {
        "judge_name=reward_model,judge_model=Ray2333_GRM-Gemma-2B-rewardmodel-ft": ("grm-gemma-2b", 1),
        "judge_name=reward_model,judge_model=internlm_internlm2-7b-reward": ("internlm2-7b-reward", 1),
        "judge_name=reward_model,judge_model=Skywork_Skywork-Reward-Gemma-2-27B": ("skywork-reward-27b", 1),
        "judge_name=arena_hard,judge_model=o1-mini-2024-09-12": ("o1-mini", 2),
    }
)
_DECISIONS: Final[Mapping[str, str]] = MappingProxyType(
    {"A>B": PairwiseLabel.A.value, "B>A": PairwiseLabel.B.value, "A=B": PairwiseLabel.TIE.value}
)
_SWAP: Final[Mapping[str, str]] = MappingProxyType(
    {PairwiseLabel.A.value: PairwiseLabel.B.value, PairwiseLabel.B.value: PairwiseLabel.A.value}
)
RM_SOURCE: Final = (
    "sigmoid(|s_A - s_B| / sd): the Bradley-Terry probability of the verdict at temperature sd, the "
    "standard deviation of the model's scores on the calibration split (label-free); margin averaged "
    "over both orders"
)


def _score_scale(rows: Sequence[Mapping[str, Any]], splits: Mapping[str, Split], path: Path) -> float:
    """The standard deviation of a reward model's scores on calibration items: a label-free scale, so
    that one model's margins spread over (0.5, 1) instead of saturating at 1."""
    import numpy as np

    scores = [
        score
        for row in rows
        if splits.get(f"judgebench/{row['pair_id']}") is Split.CALIBRATION
        for score in _reward_margins(row["judgments"], str(path))[1]
    ]
    scale = float(np.std(scores)) if len(scores) > 1 else 0.0
    if not scale > 0:
        raise DataFormatError(
            f"{path}: reward scores on the calibration split have no spread; cannot scale margins"
        )
    return scale


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; see {path.parent.parent}/SOURCE.md")
    return [raw for _, raw in json_objects(path, kind="JudgeBench file", error=DataFormatError)]


def _decision(raw: Any, swapped: bool, where: str) -> str | None:
    if raw is None:
        return None
    label = _DECISIONS.get(str(raw))
    if label is None:
        raise DataFormatError(f"{where}: decision {raw!r} is none of {', '.join(_DECISIONS)}, null")
    return _SWAP.get(label, label) if swapped else label


def _reward_margins(games: Sequence[Mapping[str, Any]], where: str) -> tuple[list[float], list[float]]:
    """Per game, ``s_A - s_B`` in the original frame, and every score seen."""
    margins, scores_seen = [], []
    for swapped, game in zip((False, True), games, strict=True):
        scores = game["judgment"].get("scores")
        if not isinstance(scores, list) or len(scores) != 2:
            raise DataFormatError(f"{where}: reward-model game without two scores: {scores!r}")
        first, second = float(scores[0]), float(scores[1])
        margins.append(second - first if swapped else first - second)
        scores_seen += [first, second]
    return margins, scores_seen


def _reward_verdict(margins: Sequence[float], scale: float) -> tuple[str, float, tuple[str | None, ...]]:
    from scipy.special import expit

    def sign(m: float) -> str:
        return PairwiseLabel.A.value if m > 0 else PairwiseLabel.B.value if m < 0 else PairwiseLabel.TIE.value

    margin = sum(margins) / len(margins)
    return sign(margin), float(expit(abs(margin) / scale)), tuple(sign(m) for m in margins)


def build_judgebench(root: Path | None = None, *, seed: int = 0) -> LabelledItems:
    """JudgeBench (GPT-4o pairs) as labelled items: a reward model -> o1-mini, see the module doc."""
    base = data_root(root) / JUDGEBENCH_DIR
    fractions = FRACTIONS[RecordedData.JUDGEBENCH]
    pairs = {row["pair_id"]: row for row in _jsonl(base / "data" / f"{_JB_SET}.jsonl")}
    splits = {
        f"judgebench/{pair_id}": assign_split(f"judgebench/{pair_id}", seed=seed, fractions=fractions)
        for pair_id in pairs
    }
    judgements: list[Judgement] = []
    dim = Dimension.PAIRWISE
    for suffix, (judge, tier) in JUDGEBENCH_JUDGES.items():
        path = base / "outputs" / f"{_JB_SET},{suffix}.jsonl"
        rows = _jsonl(path)
        scale = _score_scale(rows, splits, path) if tier == 1 else 1.0
        seen = set()
        for number, row in enumerate(rows, start=1):
            where = f"{path}:{number}"
            pair = pairs.get(row["pair_id"])
            if pair is None or pair["label"] != row["label"]:
                raise DataFormatError(
                    f"{where}: pair {row['pair_id']!r} is missing from the data file or differs"
                )
            seen.add(row["pair_id"])
            games = row["judgments"]
            if len(games) != 2:
                raise DataFormatError(f"{where}: expected 2 games (A,B) and (B,A), got {len(games)}")
            shown = len(pair["question"]) + len(pair["response_A"]) + len(pair["response_B"])
            label: str | None
            if tier == 1:
                label, conf, positions = _reward_verdict(_reward_margins(games, where)[0], scale)
                in_tokens, out_tokens = 2 * tokens(shown), 0
            else:
                positions = tuple(
                    _decision(g["decision"], swapped, where)
                    for swapped, g in zip((False, True), games, strict=True)
                )
                label, conf = from_votes(positions)
                in_tokens = 2 * tokens(TEMPLATE_CHARS + shown)
                out_tokens = sum(tokens(len(str(g["judgment"].get("response") or ""))) for g in games)
            judgements.append(
                Judgement(
                    item_id=f"judgebench/{row['pair_id']}",
                    dimension=dim,
                    tier=tier,
                    judge=judge,
                    label=label,
                    confidence=conf,
                    cost_usd=cost(judge, in_tokens, out_tokens),
                    input_tokens=in_tokens,
                    output_tokens=out_tokens,
                    position_labels=positions,
                    confidence_source=REWARD_MARGIN if tier == 1 else ORDER_VOTES,
                )
            )
        if seen != set(pairs):
            raise DataFormatError(f"{path}: judges {len(seen)} of the {len(pairs)} pairs; expected all")
    humans = []
    for pair_id, pair in pairs.items():
        truth = _decision(pair["label"], False, f"{_JB_SET}.jsonl pair {pair_id}")
        if truth not in (PairwiseLabel.A.value, PairwiseLabel.B.value):
            raise DataFormatError(
                f"{_JB_SET}.jsonl pair {pair_id}: label {pair['label']!r} is not A>B or B>A"
            )
        item_id = f"judgebench/{pair_id}"
        humans.append(HumanLabel(item_id=item_id, dimension=dim, label=truth, annotator="gold"))
    sources = {
        judge: (RM_SOURCE if tier == 1 else VOTES_SOURCE) for judge, tier in JUDGEBENCH_JUDGES.values()
    }
    content = {
        f"judgebench/{pair_id}": Content(
            prompt=pair["question"], response=pair["response_A"], response_b=pair["response_B"]
        )
        for pair_id, pair in pairs.items()
    }
    return LabelledItems(
        name="judgebench",
        items=labelled_items(content, judgements=judgements, humans=humans, splits=splits),
        truth_annotator="gold",
        cascade=("skywork-reward-27b", "o1-mini"),
        confidence_sources=MappingProxyType(sources),
        notes=(
            f"judgebench reward-model confidence: {RM_SOURCE}",
            f"judgebench o1-mini confidence: {VOTES_SOURCE}",
            "judgebench truth: objective correctness (the response reaching the verified answer), "
            "not preference",
            "judgebench: reward models are self-hosted (cost 0); o1-mini's hidden reasoning tokens were not "
            "recorded, so its cost is a floor",
            cost_note(),
        ),
    )
