"""Readers of the recorded verdicts in ``../shared/data`` into labelled items.

So that calibration and reports run today, before our live judges do, each recorded data set is read
into the labelled-items records of a user's file (``evalstream.evaluation.labelled_items``: the prompt,
the response(s), the human labels, the recorded judgements and the split), and from there into the
same labelled set as a file (one path through ``calibrate`` and ``report``):

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

The package: ``common`` (set names, prices, the split, pairwise votes, the records), one reader per set
(``xstest``, ``llmbar``, ``judgebench``) and ``load`` (``read_items``, ``build`` and
``load_labelled_set``).
"""

from evalstream.evaluation.judgements import assign_split

from .common import PRICES, RecordedData
from .judgebench import build_judgebench
from .llmbar import build_llmbar
from .load import build, load_labelled_set, read_items
from .xstest import build_xstest

__all__ = [
    "PRICES",
    "RecordedData",
    "assign_split",
    "build",
    "build_judgebench",
    "build_llmbar",
    "build_xstest",
    "load_labelled_set",
    "read_items",
]
