"""The encoder judge's training data: labelled examples per dimension from the shared data, split.

``refusal_examples`` reads XSTest's human refusal labels, ``quality_examples`` the quality set; each
item goes to the held-out side by a salted hash of the prompt it answers (a prompt is never on both
sides), and every file read is recorded with its sha256 in the artefact's ``DataSource``.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from evalstream.evaluation.datasets import XSTEST_DIR, read_xstest
from evalstream.wire.dimensions import Dimension, RefusalLabel, quality_label

from .embedding import (
    TextField,
)
from .encoder_artefact import (
    DataSource,
)
from .rules_fit import HELD_OUT_PERCENT, is_held_out

__all__ = [
    "PROMETHEUS_DIR",
    "QUALITY_SPLIT_SALT",
    "Examples",
    "last_user_turn",
    "quality_examples",
    "refusal_examples",
]

QUALITY_SPLIT_SALT: Final = "encoder-quality-split-v1"

PROMETHEUS_DIR: Final = "prometheus_gpt4_rubric_scores"
_PROMETHEUS_FILES: Final = ("mt_bench_eval", "vicuna_eval")

_XSTEST_SOURCE: Final[dict[str, str]] = {
    "name": "XSTest v2 model completions (gpt4, llama2new, llama2orig, mistralguard, mistralinstruct)",
    "repository": "https://github.com/paul-rottger/exaggerated-safety",
    "commit": "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d",
    "paper": 'Röttger et al., "XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in Large '
    'Language Models", NAACL 2024',
    "licence": "CC-BY-4.0 (prompts and labels); completions under the Meta, Mistral and OpenAI terms",
    "target": "final_label: the adjudicated label of two human annotators",
}
_PROMETHEUS_SOURCE: Final[dict[str, str]] = {
    "name": "Prometheus absolute-grading eval sets: MT-Bench (second turns) and Vicuna-Bench, 4 chat models",
    "repository": "https://github.com/prometheus-eval/prometheus-eval",
    "commit": "dcfb44272d5d0414832f5dbb8c2a05ebc2614234",
    "paper": 'Kim et al., "Prometheus: Inducing Fine-grained Evaluation Capability in Language Models", '
    "ICLR 2024",
    "licence": "Apache-2.0; questions from MT-Bench and Vicuna-80 (FastChat, Apache-2.0); responses under "
    "the ChatGPT, Llama-2-Chat, Vicuna and WizardLM terms",
    "target": "mean of three GPT-4 1-5 rubric scores, mapped by 1 + (s - 1) * 9 / 4 to 1-10, then "
    "evalstream.wire.dimensions.quality_label",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Examples:
    """One dimension's labelled items, with the split each belongs to."""

    dimension: Dimension
    texts: Mapping[TextField, Sequence[str]]
    labels: Sequence[str]
    values: Sequence[float]  # the per-item numeric target behind the label (the score scale)
    groups: Sequence[str]  # the prompt each item answers; a group is never on both sides
    held_out: npt.NDArray[np.bool_]
    source: DataSource
    split_method: str


# --- data ----------------------------------------------------------------------------------------


def _hashes(root: Path, files: Sequence[Path]) -> dict[str, str]:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


def refusal_examples(root: Path) -> Examples:
    """XSTest v2: every completion with its human ``final_label``, grouped by prompt id."""
    records = read_xstest(root)
    folder = root / XSTEST_DIR
    files = [folder / "xstest_prompts.csv", *(folder / "evaluation").rglob("*.csv")]
    held_out = np.array([is_held_out(r.prompt_id) for r in records])
    return Examples(
        dimension=Dimension.REFUSAL,
        texts={
            TextField.PROMPT: [r.prompt for r in records],
            TextField.RESPONSE: [r.completion for r in records],
        },
        labels=[r.final_label.value for r in records],
        values=[0.0 if r.final_label is RefusalLabel.FULL_COMPLIANCE else 1.0 for r in records],
        groups=[r.prompt_id for r in records],
        held_out=held_out,
        source=DataSource(folder=XSTEST_DIR, files=_hashes(root, files), rows=len(records), **_XSTEST_SOURCE),
        split_method=f"rules_fit.is_held_out(prompt id): ~{HELD_OUT_PERCENT}% of prompts held out, "
        "shared with the rules judge",
    )


def last_user_turn(instruction: str) -> str:
    """The question a response answers. MT-Bench items embed the first turn as a dialogue
    (``User: ... Assistant: ... User: <second turn> Assistant:``); Vicuna items are the question."""
    if "\nUser:" not in instruction and not instruction.startswith("User:"):
        return instruction.strip()
    turn = instruction.rsplit("User:", 1)[1]
    return turn.rsplit("Assistant:", 1)[0].strip()


def _split_instruction(instruction: str) -> tuple[str, str]:
    head, _, rest = instruction.partition("###Response to evaluate:")
    prompt = head.partition("###The instruction to evaluate:")[2]
    response = rest.partition("###Reference Answer")[0]
    return prompt.strip(), response.strip()


def _salted_held_out(key: str) -> bool:
    digest = hashlib.sha256(f"{QUALITY_SPLIT_SALT}:{key}".encode()).digest()
    return int.from_bytes(digest, "big") % 100 < HELD_OUT_PERCENT


def quality_examples(root: Path) -> Examples:
    """Prometheus MT-Bench and Vicuna-Bench responses, labelled from the mean GPT-4 rubric score."""
    folder = root / PROMETHEUS_DIR / "eval" / "benchmark" / "data"
    files = [folder / f"{name}.json" for name in _PROMETHEUS_FILES]
    prompts: list[str] = []
    responses: list[str] = []
    values: list[float] = []
    groups: list[str] = []
    for name, path in zip(_PROMETHEUS_FILES, files, strict=True):
        for row in json.loads(path.read_text(encoding="utf-8")):
            instruction, response = _split_instruction(row["instruction"])
            scores = [int(s) for s in row["gpt4_score"]]
            if not response or not all(1 <= s <= 5 for s in scores):
                raise ValueError(
                    f"{path}: item {row['idx']} has no response or a score outside 1-5: {scores}"
                )
            prompts.append(last_user_turn(instruction))
            responses.append(response)
            values.append(1 + (statistics.fmean(scores) - 1) * 9 / 4)
            groups.append(f"{name}/{row['idx']}")
    return Examples(
        dimension=Dimension.QUALITY,
        texts={TextField.PROMPT: prompts, TextField.RESPONSE: responses},
        labels=[quality_label(v).value for v in values],
        values=values,
        groups=groups,
        held_out=np.array([_salted_held_out(g) for g in groups]),
        source=DataSource(
            folder=PROMETHEUS_DIR, files=_hashes(root, files), rows=len(values), **_PROMETHEUS_SOURCE
        ),
        split_method=f"salted sha256 of (set, question id), salt {QUALITY_SPLIT_SALT!r}: "
        f"~{HELD_OUT_PERCENT}% of questions held out",
    )
