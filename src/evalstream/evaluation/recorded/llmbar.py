"""LLMBar as labelled items with its recorded judgements (see the package doc)."""

from __future__ import annotations

import json
from collections.abc import Mapping
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

from .common import (
    FRACTIONS,
    ORDER_VOTES,
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


def load_json(path: Path) -> Any:
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


def build_llmbar(root: Path | None = None, *, seed: int = 0) -> LabelledItems:
    """LLMBar as labelled items: cheap LLM judges -> GPT-4 on the pairwise dimension, see the module doc."""
    base = data_root(root) / LLMBAR_DIR / "Dataset"
    fractions = FRACTIONS[RecordedData.LLMBAR]
    judgements: list[Judgement] = []
    humans: list[HumanLabel] = []
    splits: dict[str, Split] = {}
    content: dict[str, Content] = {}
    dim = Dimension.PAIRWISE
    for name in LLMBAR_SETS:
        dataset = load_json(base / name / "dataset.json")
        for folder, (judge, tier) in LLMBAR_JUDGES.items():
            path = base / name / "evaluators" / folder / "Vanilla_NoRules" / "result.json"
            results = load_json(path)
            if len(results) != len(dataset):
                raise DataFormatError(f"{path}: {len(results)} rows, dataset.json has {len(dataset)}")
            for index, (row, gold) in enumerate(zip(results, dataset, strict=True)):
                where = f"{path}[{index}]"
                if row["input"] != gold["input"] or str(row["label"]) != str(gold["label"]):
                    raise DataFormatError(f"{where}: input or label differs from dataset.json")
                runs = row["results"][0]
                votes = [_winner(runs[key]["winner"], where) for key in ("swap = False", "swap = True")]
                label, conf = from_votes(votes)
                shown = len(gold["input"]) + len(gold["output_1"]) + len(gold["output_2"])
                in_tokens = 2 * tokens(TEMPLATE_CHARS + shown)
                out_tokens = sum(
                    tokens(len(runs[k]["completion"][0] or "")) for k in ("swap = False", "swap = True")
                )
                judgements.append(
                    Judgement(
                        item_id=f"llmbar/{name}/{index}",
                        dimension=dim,
                        tier=tier,
                        judge=judge,
                        label=label,
                        confidence=conf,
                        cost_usd=cost(judge, in_tokens, out_tokens),
                        input_tokens=in_tokens,
                        output_tokens=out_tokens,
                        position_labels=tuple(votes),
                        confidence_source=ORDER_VOTES,
                    )
                )
        for index, gold in enumerate(dataset):
            item_id = f"llmbar/{name}/{index}"
            truth = _winner(gold["label"], f"{base / name / 'dataset.json'}[{index}]")
            if truth is None:
                raise DataFormatError(f"{base / name / 'dataset.json'}[{index}]: no label")
            humans.append(HumanLabel(item_id=item_id, dimension=dim, label=truth, annotator="gold"))
            splits[item_id] = assign_split(item_id, seed=seed, fractions=fractions)
            content[item_id] = Content(
                prompt=gold["input"], response=gold["output_1"], response_b=gold["output_2"]
            )
    sources = {judge: VOTES_SOURCE for judge, _ in LLMBAR_JUDGES.values()}
    return LabelledItems(
        name="llmbar",
        items=labelled_items(content, judgements=judgements, humans=humans, splits=splits),
        truth_annotator="gold",
        cascade=("palm2", "gpt-4"),
        confidence_sources=MappingProxyType(sources),
        notes=(
            f"llmbar confidence: {VOTES_SOURCE}",
            "llmbar truth: gold labels (LLMBar sets) and human majority labels "
            "(MT-Bench, FairEval, LLMEval2)",
            cost_note(),
        ),
    )
