"""Real recorded judge verdicts from ``../shared/data``, indexed by the judged item.

Each data set's SOURCE.md gives its origin and licence; this module only reads them. What is replayed:

- refusal, judge ``gpt-4``: XSTest v2 ``gpt4_label`` on 2,250 completions (3 classes). The 11 free-text
  labels in ``mistralinstruct`` (GPT-4 declining to classify) have no verdict and are replayed verbatim.
- pairwise, LLMBar ``Vanilla_NoRules``: GPT-4, ChatGPT, LLaMA-2-70B, PaLM-2 (8 sets) and Falcon-180B
  (5 sets), each in both presentation orders. ``null`` winners replay the judge's recorded completion.
- pairwise, JudgeBench arena-hard: o1-mini (GPT-4o pairs) and claude-3-haiku (Claude pairs), both orders,
  ``A=B`` as ``tie``; ``null`` decisions replay the judge's full recorded answer.
- quality, judge ``gpt-4``: Prometheus GPT-4 rubric scores, three gradings per response. Their 1-5 scale
  is mapped onto our 1-10 rubric by ``1 + (s - 1) * 9 / 4`` rounded (1, 3, 6, 8, 10), so labels follow
  ``evalstream.wire.dimensions.quality_label``; the original score stays in the rationale's source.
- quality, judges ``gpt-4`` and ``gpt-3.5-turbo-0613``: LLMBar ``Rating`` 1-10 scores per output.

Verdicts are stored in the frame they were shown in: for pairwise, ``A`` is the first response shown.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from evalstream.evaluation.datasets import read_xstest
from evalstream.wire.dimensions import Dimension, PairwiseLabel
from evalstream.wire.jsonl import json_objects

from .keys import item_key

__all__ = [
    "DATASETS",
    "MODELS",
    "PROMETHEUS_TO_TEN",
    "Recording",
    "ReplayStore",
    "canonical_model",
    "split_prometheus_instruction",
]

_log = logging.getLogger(__name__)

DATASETS: Final = ("xstest", "llmbar", "judgebench", "prometheus")

#: Canonical model id -> accepted aliases (matched case-insensitively) and the data's own name.
MODELS: Final[dict[str, tuple[str, ...]]] = {
    "gpt-4": ("gpt4", "GPT-4"),
    "gpt-3.5-turbo-0613": ("chatgpt", "ChatGPT", "gpt-35-turbo-0613"),
    "llama-2-70b-chat": ("llama2", "LLaMA2", "meta-llama/Llama-2-70b-chat-hf"),
    "text-bison-001": ("palm2", "PaLM2", "models/text-bison-001"),
    "falcon-180b-chat": ("falcon", "Falcon", "tiiuae/falcon-180B-chat"),
    "o1-mini-2024-09-12": ("o1-mini",),
    "claude-3-haiku-20240307": ("claude-3-haiku",),
}
_ALIASES: Final = {alias.lower(): name for name, aliases in MODELS.items() for alias in (name, *aliases)}

_JUDGEBENCH_LABELS: Final = {"A>B": PairwiseLabel.A, "B>A": PairwiseLabel.B, "A=B": PairwiseLabel.TIE}
#: Prometheus 1-5 -> our 1-10 rubric: 1 + (s - 1) * 9 / 4, rounded.
PROMETHEUS_TO_TEN: Final = {1: 1, 2: 3, 3: 6, 4: 8, 5: 10}
_RATIONALE_CHARS: Final = 600


def canonical_model(name: str) -> str | None:
    return _ALIASES.get(name.strip().lower())


@dataclass(frozen=True, slots=True, kw_only=True)
class Recording:
    """One recorded judge output on one item, in the frame it was shown."""

    label: str | None = None  # refusal or pairwise label; None: the recorded output had no verdict
    score: int | None = None  # quality 1-10
    rationale: str = ""
    raw: str  # the judge's output as recorded; replayed verbatim when there is no verdict
    finish_reason: str = "stop"
    source: str  # data set, judge and row, for stats and debugging

    @property
    def has_verdict(self) -> bool:
        return self.label is not None or self.score is not None


_Key = tuple[Dimension, str, str]  # (task, canonical model, item key)


class ReplayStore:
    """Recorded verdicts by (task, model, item). Built once at start-up; read-only afterwards."""

    def __init__(self) -> None:
        self._exact: dict[_Key, list[Recording]] = defaultdict(list)
        # Keys without the prompt, kept only where they point at exactly one exact key.
        self._loose_to_exact: dict[_Key, set[str]] = defaultdict(set)

    def add(self, task: Dimension, model: str, texts: tuple[str, ...], recording: Recording) -> None:
        exact = item_key(*texts)
        self._exact[task, model, exact].append(recording)
        self._loose_to_exact[task, model, item_key(*texts[1:])].add(exact)

    def lookup(self, task: Dimension, model: str, texts: tuple[str, ...]) -> list[Recording] | None:
        """Recordings for (prompt, response...) or, if the prompt differs, for the responses alone
        when they identify one item."""
        found = self._exact.get((task, model, item_key(*texts)))
        if found:
            return found
        exacts = self._loose_to_exact.get((task, model, item_key(*texts[1:])), set())
        if len(exacts) == 1:
            return self._exact[task, model, next(iter(exacts))]
        return None

    def counts(self) -> dict[str, int]:
        """Recorded verdicts per ``task/model``."""
        out: dict[str, int] = defaultdict(int)
        for (task, model, _), recs in self._exact.items():
            out[f"{task}/{model}"] += len(recs)
        return dict(sorted(out.items()))

    @property
    def models(self) -> list[str]:
        return sorted({model for _, model, _ in self._exact})

    @classmethod
    def load(cls, root: Path, datasets: Iterable[str] = DATASETS) -> ReplayStore:
        store = cls()
        loaders = {
            "xstest": _xstest,
            "llmbar": _llmbar,
            "judgebench": _judgebench,
            "prometheus": _prometheus,
        }
        for name in datasets:
            if name not in loaders:
                raise ValueError(f"unknown data set {name!r}; expected some of {', '.join(DATASETS)}")
            for task, model, texts, recording in loaders[name](root):
                store.add(task, model, texts, recording)
        _log.info("replay store loaded: %s", store.counts())
        return store


_Row = tuple[Dimension, str, tuple[str, ...], Recording]


def _xstest(root: Path) -> Iterator[_Row]:
    for r in read_xstest(root):
        rec = Recording(label=r.gpt4_label, raw=r.gpt4_label_raw, source=f"xstest/{r.model}/{r.prompt_id}")
        yield Dimension.REFUSAL, "gpt-4", (r.prompt, r.completion), rec


def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _llmbar(root: Path) -> Iterator[_Row]:
    base = root / "llmbar_judge_eval" / "Dataset"
    for path in sorted(base.glob("**/evaluators/*/Vanilla_NoRules/result.json")):
        judge = path.parts[-3]
        model = canonical_model(judge)
        if model is None:
            continue
        set_name = "/".join(path.relative_to(base).parts[:-4])
        for i, row in enumerate(_read_json(path)):
            games = row["results"][0]
            for game, shown in (("swap = False", (1, 2)), ("swap = True", (2, 1))):
                record = games[game]
                completion, finish = record["completion"]
                winner = record["winner"]  # original numbering: "1" is output_1, whatever was shown first
                label = None
                if winner is not None:
                    label = PairwiseLabel.A if int(winner) == shown[0] else PairwiseLabel.B
                first, second = row[f"output_{shown[0]}"], row[f"output_{shown[1]}"]
                rec = Recording(
                    label=label,
                    raw=completion,
                    rationale=completion[:_RATIONALE_CHARS],
                    finish_reason=finish or "stop",
                    source=f"llmbar/{set_name}/{judge}/{i}/{game}",
                )
                yield Dimension.PAIRWISE, model, (row["input"], first, second), rec
    for path in sorted(base.glob("**/evaluators/*/Rating/result.json")):
        judge = path.parts[-3]
        model = canonical_model(judge)
        if model is None:
            continue
        for i, row in enumerate(_read_json(path)):
            result = row["results"][0]
            for n in ("1", "2"):
                raw, finish = result[f"score_{n}"]
                score = int(raw) if raw.strip().isdigit() and 1 <= int(raw) <= 10 else None
                rec = Recording(
                    score=score,
                    raw=raw,
                    finish_reason=finish or "stop",
                    source=f"llmbar-rating/{judge}/{i}/{n}",
                )
                yield Dimension.QUALITY, model, (row["input"], row[f"output_{n}"]), rec


def _judgebench(root: Path) -> Iterator[_Row]:
    for path in sorted((root / "judgebench" / "outputs").glob("*judge_name=arena_hard*.jsonl")):
        judge = path.stem.split("judge_model=")[1]
        model = canonical_model(judge) or judge
        for _, row in json_objects(path, kind="JudgeBench output", error=ValueError):
            orders = ((row["response_A"], row["response_B"]), (row["response_B"], row["response_A"]))
            for game, (first, second) in zip(row["judgments"], orders, strict=True):
                response = game["judgment"]["response"]
                decision = game["decision"]  # already in the frame shown: "A>B" means first is better
                rec = Recording(
                    label=_JUDGEBENCH_LABELS.get(decision) if decision else None,
                    raw=response,
                    rationale=response[-_RATIONALE_CHARS:],
                    source=f"judgebench/{judge}/{row['pair_id']}",
                )
                yield Dimension.PAIRWISE, model, (row["question"], first, second), rec


def split_prometheus_instruction(instruction: str) -> tuple[str, str]:
    """(instruction to evaluate, response to evaluate) from a Prometheus absolute-grading prompt."""
    head, _, rest = instruction.partition("###Response to evaluate:")
    prompt = head.partition("###The instruction to evaluate:")[2]
    response = rest.partition("###Reference Answer")[0]
    return prompt.strip(), response.strip()


def _prometheus(root: Path) -> Iterator[_Row]:
    folder = root / "prometheus_gpt4_rubric_scores" / "eval" / "benchmark" / "data"
    for name in ("mt_bench_eval", "vicuna_eval"):
        for row in _read_json(folder / f"{name}.json"):
            prompt, response = split_prometheus_instruction(row["instruction"])
            for k, (score, feedback) in enumerate(zip(row["gpt4_score"], row["gpt4_feedback"], strict=True)):
                rec = Recording(
                    score=PROMETHEUS_TO_TEN.get(int(score)),
                    rationale=feedback[:_RATIONALE_CHARS],
                    raw=f"Feedback: {feedback} [RESULT] {score}",
                    source=f"prometheus/{name}/{row['idx']}/{row['response_source']}/{k} (1-5 score {score})",
                )
                yield Dimension.QUALITY, "gpt-4", (prompt, response), rec
