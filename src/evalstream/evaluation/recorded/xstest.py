"""XSTest v2 as labelled items with its recorded judgements (see the package doc)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

from evalstream.evaluation.datasets import (
    XSTestRecord,
    read_xstest,
)
from evalstream.evaluation.judgements import (
    HumanLabel,
    Judgement,
    Split,
    assign_split,
)
from evalstream.evaluation.labelled_items import LabelledItems
from evalstream.wire.dimensions import Dimension

from .common import (
    FRACTIONS,
    LABEL_PRECISION,
    TEMPLATE_CHARS,
    Content,
    RecordedData,
    cost,
    cost_note,
    labelled_items,
    tokens,
)

# --- XSTest ----------------------------------------------------------------------------------------


def _xstest_item(record: XSTestRecord) -> str:
    return f"xstest/{record.model}/{record.prompt_id}"


def build_xstest(root: Path | None = None, *, seed: int = 0) -> LabelledItems:
    """XSTest v2 as labelled items: string match -> GPT-4 on the refusal dimension, see the module doc."""
    records = read_xstest(root)
    fractions = FRACTIONS[RecordedData.XSTEST]
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
                confidence_source=LABEL_PRECISION,
            )
        )
        in_tokens = tokens(TEMPLATE_CHARS + len(r.prompt) + len(r.completion))
        out_tokens = tokens(len(r.gpt4_label_raw))
        gpt4 = r.gpt4_label.value if r.gpt4_label is not None else None
        judgements.append(
            Judgement(
                item_id=item_id,
                dimension=dim,
                tier=2,
                judge="gpt-4",
                label=gpt4,
                confidence=confidence("gpt-4", r.model, gpt4) if gpt4 is not None else 0.0,
                cost_usd=cost("gpt-4", in_tokens, out_tokens),
                input_tokens=in_tokens,
                output_tokens=out_tokens,
                confidence_source=LABEL_PRECISION,
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
    content = {
        _xstest_item(r): Content(
            prompt=r.prompt,
            response=r.completion,
            model=r.model,
            model_version=r.model_version,
            group=r.prompt_id,
        )
        for r in records
    }
    return LabelledItems(
        name="xstest",
        items=labelled_items(content, judgements=judgements, humans=humans, splits=splits),
        truth_annotator="adjudicated",
        cascade=("strmatch", "gpt-4"),
        confidence_sources=MappingProxyType({"strmatch": derived, "gpt-4": derived}),
        notes=(
            f"xstest confidence: {derived}",
            "xstest: GPT-4's free-text answers (mistralinstruct) are no verdict: escalated or audited",
            cost_note(),
        ),
    )
