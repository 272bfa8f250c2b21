"""Judgement and human-label tables built from the recorded verdicts in ``../shared/data``.

So that calibration and reports run today, before our live judges do, each recorded data set becomes
the same tables the live tiers will write (``evalstream.evaluation.judgements``):

- **xstest** (XSTest v2, refusal, 2,250 completions): tier 0 ``strmatch`` (``strmatch_label``), tier 2
  ``gpt-4`` (``gpt4_label``; its 11 free-text answers are no verdict). Truth: the adjudicated
  ``final_label``; ``annotation_1`` and ``annotation_2`` are kept as annotators for the alternative
  annotator test. Neither judge recorded a confidence, so one is derived: the empirical precision of
  the judge's label for that model, (agreed + 1) / (n + 2), counted on the *fit* split only. The fit
  split is disjoint from the calibration and test splits, so the thresholds are never tested on the
  items that shaped the confidence. Items are split by prompt (all five models' answers to one prompt
  share a split).
- **llmbar** (LLMBar, pairwise, 885 pairs of the 5 LLMBar and 3 human-labelled Processed sets):
  tier 2 ``chatgpt``, ``llama2``, ``palm2``; tier 3 ``gpt-4`` (all ``Vanilla_NoRules``). Truth: the
  gold or human ``label``. Confidence from the two presentation orders: the share of orders that back
  the verdict (an unparsed ``null`` order counts half), so 1.0 when both orders agree, 0.75 when one
  is null, and a ``tie`` at 0.5 when they disagree (the judge's answer followed the position).
- **judgebench** (JudgeBench, pairwise, the 350 GPT-4o pairs): tier 1 reward models ``grm-gemma-2b``,
  ``internlm2-7b-reward``, ``skywork-reward-27b``; tier 2 ``o1-mini`` (arena-hard prompt). Truth: the
  objective ``label``. A reward model's confidence is the Bradley-Terry probability of its verdict,
  ``sigmoid(|s_A - s_B| / sd)``, the score margin averaged over both orders (a tie at margin 0) and
  divided by the standard deviation of the model's scores on the calibration split: a label-free
  temperature, without which the big models' probabilities pile up at 1.0 where no threshold grid can
  tell them apart. o1-mini's confidence comes from its two games as for LLMBar (``A=B`` and ``null``
  games count half).

Costs are estimates: tokens as characters / 4 (prompt template, question and responses in, the
recorded judge output out), priced at the list prices in ``PRICES``. Judges without a list price
(self-hosted Llama-2 and reward models, PaLM 2, string matching) cost 0. o1-mini's hidden reasoning
tokens were not recorded, so its cost is a floor.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from evalstream.evaluation.datasets import (
    DataFormatError,
    DataNotFoundError,
    XSTestRecord,
    data_root,
    read_xstest,
)
from evalstream.evaluation.judgements import (
    HumanLabel,
    Judgement,
    LabelledSet,
    Split,
    TableError,
    choose_truth_annotator,
    read_human_labels,
    read_judgements,
    write_human_labels,
    write_judgements,
)
from evalstream.wire.dimensions import Dimension, PairwiseLabel
from evalstream.wire.jsonl import json_objects

__all__ = [
    "PRICES",
    "RecordedData",
    "assign_split",
    "build",
    "build_judgebench",
    "build_llmbar",
    "build_xstest",
    "load_labelled_set",
]


class RecordedData(StrEnum):
    XSTEST = "xstest"
    LLMBAR = "llmbar"
    JUDGEBENCH = "judgebench"


@dataclass(frozen=True, slots=True)
class Price:
    """List price in USD per million tokens, and where it comes from."""

    input: float
    output: float
    source: str


#: List prices of the recorded judges (USD per 1M tokens) at the time of the recordings.
PRICES: Final[Mapping[str, Price]] = MappingProxyType(
    {
        "gpt-4": Price(30.0, 60.0, "OpenAI gpt-4 (8k), 2023"),
        "chatgpt": Price(1.5, 2.0, "OpenAI gpt-3.5-turbo-0613 (4k), 2023"),
        "o1-mini": Price(3.0, 12.0, "OpenAI o1-mini-2024-09-12 at launch"),
    }
)

#: Rough size of a judge prompt's fixed template, in characters, where the data does not record it.
TEMPLATE_CHARS: Final = 1000

_FRACTIONS: Final[Mapping[RecordedData, tuple[float, float, float]]] = MappingProxyType(
    {
        RecordedData.XSTEST: (0.2, 0.4, 0.4),  # fit (confidence), calibration, test
        RecordedData.LLMBAR: (0.0, 0.5, 0.5),
        RecordedData.JUDGEBENCH: (0.0, 0.5, 0.5),
    }
)


def assign_split(group: str, *, seed: int, fractions: tuple[float, float, float]) -> Split:
    """A deterministic split for ``group`` (a salted SHA-256 as a number in [0, 1))."""
    digest = hashlib.sha256(f"evalstream-split:{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    fit, calibration, _ = fractions
    if u < fit:
        return Split.FIT
    return Split.CALIBRATION if u < fit + calibration else Split.TEST


def _tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def _cost(judge: str, input_tokens: int, output_tokens: int) -> float:
    price = PRICES.get(judge)
    if price is None:
        return 0.0
    return (input_tokens * price.input + output_tokens * price.output) / 1e6


def _cost_note() -> str:
    listed = "; ".join(
        f"{name} ${p.input:g}/${p.output:g} per 1M in/out ({p.source})" for name, p in PRICES.items()
    )
    return (
        "cost_usd is an estimate: tokens = characters / 4 with a "
        f"~{TEMPLATE_CHARS}-character prompt template; "
        f"list prices {listed}; judges without a list price (self-hosted, string match) count 0"
    )


# --- XSTest ----------------------------------------------------------------------------------------


def _xstest_item(record: XSTestRecord) -> str:
    return f"xstest/{record.model}/{record.prompt_id}"


def build_xstest(root: Path | None = None, *, seed: int = 0) -> LabelledSet:
    """XSTest v2 as tables: string match -> GPT-4 on the refusal dimension, see the module doc."""
    records = read_xstest(root)
    fractions = _FRACTIONS[RecordedData.XSTEST]
    split_of_prompt = {
        r.prompt_id: assign_split(r.prompt_id, seed=seed, fractions=fractions) for r in records
    }

    # precision of each judge's label per model, on the fit split only
    counts: dict[tuple[str, str, str], list[int]] = {}
    for r in records:
        if split_of_prompt[r.prompt_id] is not Split.FIT:
            continue
        for judge, label in (("strmatch", r.strmatch_label), ("gpt-4", r.gpt4_label)):
            if label is None:
                continue
            cell = counts.setdefault((judge, r.model, label.value), [0, 0])
            cell[0] += int(label == r.final_label)
            cell[1] += 1

    def confidence(judge: str, model: str, label: str) -> float:
        agreed, n = counts.get((judge, model, label), [0, 0])
        return (agreed + 1) / (n + 2)

    judgements: list[Judgement] = []
    humans: list[HumanLabel] = []
    dim = Dimension.REFUSAL
    for r in records:
        item_id = _xstest_item(r)
        judgements.append(
            Judgement(
                item_id=item_id,
                dimension=dim,
                tier=0,
                judge="strmatch",
                label=r.strmatch_label.value,
                confidence=confidence("strmatch", r.model, r.strmatch_label.value),
            )
        )
        in_tokens = _tokens(TEMPLATE_CHARS + len(r.prompt) + len(r.completion))
        out_tokens = _tokens(len(r.gpt4_label_raw))
        gpt4 = r.gpt4_label.value if r.gpt4_label is not None else None
        judgements.append(
            Judgement(
                item_id=item_id,
                dimension=dim,
                tier=2,
                judge="gpt-4",
                label=gpt4,
                confidence=confidence("gpt-4", r.model, gpt4) if gpt4 is not None else 0.0,
                cost_usd=_cost("gpt-4", in_tokens, out_tokens),
                input_tokens=in_tokens,
                output_tokens=out_tokens,
            )
        )
        for annotator, label in (
            ("adjudicated", r.final_label),
            ("annotator_1", r.annotation_1),
            ("annotator_2", r.annotation_2),
        ):
            humans.append(HumanLabel(item_id=item_id, dimension=dim, label=label.value, annotator=annotator))
    splits = {_xstest_item(r): split_of_prompt[r.prompt_id] for r in records}
    n_fit = sum(s is Split.FIT for s in split_of_prompt.values())
    derived = (
        "empirical precision of its label for that model, (agreed + 1) / (n + 2), on the fit split "
        f"({n_fit} of {len(split_of_prompt)} prompts, seed {seed}); no confidence was recorded"
    )
    return LabelledSet(
        name="xstest",
        judgements=tuple(judgements),
        humans=tuple(humans),
        truth_annotator="adjudicated",
        splits=MappingProxyType(splits),
        cascade=("strmatch", "gpt-4"),
        confidence_sources=MappingProxyType({"strmatch": derived, "gpt-4": derived}),
        notes=(
            f"xstest confidence: {derived}",
            "xstest: GPT-4's free-text answers (mistralinstruct) are no verdict: escalated or audited",
            _cost_note(),
        ),
    )


# --- pairwise votes --------------------------------------------------------------------------------


def _from_votes(votes: Sequence[str | None]) -> tuple[str | None, float]:
    """Label and confidence from per-order verdicts: the share of orders backing the label, with a
    tie or a missing order counting half for each side."""
    if all(v is None for v in votes):
        return None, 0.0
    backing_a = sum(1.0 if v == PairwiseLabel.A else 0.0 if v == PairwiseLabel.B else 0.5 for v in votes)
    p = backing_a / len(votes)
    label = PairwiseLabel.A if p > 0.5 else PairwiseLabel.B if p < 0.5 else PairwiseLabel.TIE
    return label.value, max(p, 1.0 - p)


VOTES_SOURCE: Final = (
    "share of the two presentation orders backing the verdict (a tie or unparsed order counts half)"
)


# --- LLMBar ----------------------------------------------------------------------------------------

LLMBAR_DIR: Final = "llmbar_judge_eval"
LLMBAR_SETS: Final = (
    "LLMBar/Natural",
    "LLMBar/Adversarial/Neighbor",
    "LLMBar/Adversarial/GPTInst",
    "LLMBar/Adversarial/GPTOut",
    "LLMBar/Adversarial/Manual",
    "Processed/MT-Bench",
    "Processed/FairEval",
    "Processed/LLMEval^2",
)
#: evaluator folder -> (judge name, tier)
LLMBAR_JUDGES: Final[Mapping[str, tuple[str, int]]] = MappingProxyType(
    {"ChatGPT": ("chatgpt", 2), "LLaMA2": ("llama2", 2), "PaLM2": ("palm2", 2), "GPT-4": ("gpt-4", 3)}
)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"{path} is missing; see its data folder's SOURCE.md") from exc
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: not JSON ({exc})") from exc


def _winner(raw: Any, where: str) -> str | None:
    if raw is None:
        return None
    if str(raw) == "1":
        return PairwiseLabel.A.value
    if str(raw) == "2":
        return PairwiseLabel.B.value
    raise DataFormatError(f"{where}: winner {raw!r} is none of '1', '2', null")


def build_llmbar(root: Path | None = None, *, seed: int = 0) -> LabelledSet:
    """LLMBar as tables: cheap LLM judges -> GPT-4 on the pairwise dimension, see the module doc."""
    base = data_root(root) / LLMBAR_DIR / "Dataset"
    fractions = _FRACTIONS[RecordedData.LLMBAR]
    judgements: list[Judgement] = []
    humans: list[HumanLabel] = []
    splits: dict[str, Split] = {}
    dim = Dimension.PAIRWISE
    for name in LLMBAR_SETS:
        dataset = _load_json(base / name / "dataset.json")
        for folder, (judge, tier) in LLMBAR_JUDGES.items():
            path = base / name / "evaluators" / folder / "Vanilla_NoRules" / "result.json"
            results = _load_json(path)
            if len(results) != len(dataset):
                raise DataFormatError(f"{path}: {len(results)} rows, dataset.json has {len(dataset)}")
            for index, (row, gold) in enumerate(zip(results, dataset, strict=True)):
                where = f"{path}[{index}]"
                if row["input"] != gold["input"] or str(row["label"]) != str(gold["label"]):
                    raise DataFormatError(f"{where}: input or label differs from dataset.json")
                runs = row["results"][0]
                votes = [_winner(runs[key]["winner"], where) for key in ("swap = False", "swap = True")]
                label, conf = _from_votes(votes)
                shown = len(gold["input"]) + len(gold["output_1"]) + len(gold["output_2"])
                in_tokens = 2 * _tokens(TEMPLATE_CHARS + shown)
                out_tokens = sum(
                    _tokens(len(runs[k]["completion"][0] or "")) for k in ("swap = False", "swap = True")
                )
                judgements.append(
                    Judgement(
                        item_id=f"llmbar/{name}/{index}",
                        dimension=dim,
                        tier=tier,
                        judge=judge,
                        label=label,
                        confidence=conf,
                        cost_usd=_cost(judge, in_tokens, out_tokens),
                        input_tokens=in_tokens,
                        output_tokens=out_tokens,
                        position_labels=tuple(votes),
                    )
                )
        for index, gold in enumerate(dataset):
            item_id = f"llmbar/{name}/{index}"
            truth = _winner(gold["label"], f"{base / name / 'dataset.json'}[{index}]")
            if truth is None:
                raise DataFormatError(f"{base / name / 'dataset.json'}[{index}]: no label")
            humans.append(HumanLabel(item_id=item_id, dimension=dim, label=truth, annotator="gold"))
            splits[item_id] = assign_split(item_id, seed=seed, fractions=fractions)
    sources = {judge: VOTES_SOURCE for judge, _ in LLMBAR_JUDGES.values()}
    return LabelledSet(
        name="llmbar",
        judgements=tuple(judgements),
        humans=tuple(humans),
        truth_annotator="gold",
        splits=MappingProxyType(splits),
        cascade=("palm2", "gpt-4"),
        confidence_sources=MappingProxyType(sources),
        notes=(
            f"llmbar confidence: {VOTES_SOURCE}",
            "llmbar truth: gold labels (LLMBar sets) and human majority labels "
            "(MT-Bench, FairEval, LLMEval2)",
            _cost_note(),
        ),
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


def build_judgebench(root: Path | None = None, *, seed: int = 0) -> LabelledSet:
    """JudgeBench (GPT-4o pairs) as tables: a reward model -> o1-mini, see the module doc."""
    base = data_root(root) / JUDGEBENCH_DIR
    fractions = _FRACTIONS[RecordedData.JUDGEBENCH]
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
                in_tokens, out_tokens = 2 * _tokens(shown), 0
            else:
                positions = tuple(
                    _decision(g["decision"], swapped, where)
                    for swapped, g in zip((False, True), games, strict=True)
                )
                label, conf = _from_votes(positions)
                in_tokens = 2 * _tokens(TEMPLATE_CHARS + shown)
                out_tokens = sum(_tokens(len(str(g["judgment"].get("response") or ""))) for g in games)
            judgements.append(
                Judgement(
                    item_id=f"judgebench/{row['pair_id']}",
                    dimension=dim,
                    tier=tier,
                    judge=judge,
                    label=label,
                    confidence=conf,
                    cost_usd=_cost(judge, in_tokens, out_tokens),
                    input_tokens=in_tokens,
                    output_tokens=out_tokens,
                    position_labels=positions,
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
    return LabelledSet(
        name="judgebench",
        judgements=tuple(judgements),
        humans=tuple(humans),
        truth_annotator="gold",
        splits=MappingProxyType(splits),
        cascade=("skywork-reward-27b", "o1-mini"),
        confidence_sources=MappingProxyType(sources),
        notes=(
            f"judgebench reward-model confidence: {RM_SOURCE}",
            f"judgebench o1-mini confidence: {VOTES_SOURCE}",
            "judgebench truth: objective correctness (the response reaching the verified answer), "
            "not preference",
            "judgebench: reward models are self-hosted (cost 0); o1-mini's hidden reasoning tokens were not "
            "recorded, so its cost is a floor",
            _cost_note(),
        ),
    )


_BUILDERS = {
    RecordedData.XSTEST: build_xstest,
    RecordedData.LLMBAR: build_llmbar,
    RecordedData.JUDGEBENCH: build_judgebench,
}


def build(data: RecordedData | str, root: Path | None = None, *, seed: int = 0) -> LabelledSet:
    """The labelled set of a recorded data set, split with ``seed``."""
    try:
        which = RecordedData(data)
    except ValueError:
        raise TableError(
            f"unknown recorded data set {data!r}; choose one of {', '.join(RecordedData)}, or pass "
            "--judgements and --humans tables"
        ) from None
    return _BUILDERS[which](root, seed=seed)


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
        labelled = build(data, root, seed=seed)
        if truth_annotator is not None and truth_annotator != labelled.truth_annotator:
            labelled = LabelledSet(
                name=labelled.name,
                judgements=labelled.judgements,
                humans=labelled.humans,
                truth_annotator=choose_truth_annotator(labelled.humans, truth_annotator),
                splits=labelled.splits,
                cascade=labelled.cascade,
                confidence_sources=labelled.confidence_sources,
                notes=labelled.notes,
            )
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
            f"no labelled data: pass --data ({', '.join(RecordedData)}) or both --judgements and --humans"
        )
    if write_tables is not None:
        write_tables.mkdir(parents=True, exist_ok=True)
        write_judgements(write_tables / f"{labelled.name}.judgements.jsonl", labelled.judgements)
        write_human_labels(write_tables / f"{labelled.name}.humans.jsonl", labelled.humans)
    return labelled
