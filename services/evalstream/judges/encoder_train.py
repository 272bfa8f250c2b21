"""Train the encoder judge (tier 1) on the shared labelled data and write a versioned artefact.

    python -m evalstream.judges.encoder_train --out DIR [--data DIR] [--threads N] [--layers K]
        [--quantisation Q]

The encoder is the pinned all-MiniLM-L6-v2 ONNX file, prepared by ``encoder_onnx`` (dynamic int8 by
default) and written into the artefact first; every embedding below comes from that very file on ONNX
Runtime, so the judge serves what was measured here. No torch: training needs the ``encoder`` extra.

Two dimensions, each a logistic regression over those embeddings whose probabilities are
calibrated by ``CalibratedClassifierCV`` on grouped folds of the training side:

- refusal: XSTest v2, 2,250 completions (5 models x 450 prompts), target the adjudicated human
  ``final_label`` (3 classes). Input: the response alone, first 48 word pieces. In grouped 5-fold
  cross-validation, adding the prompt's embedding changed accuracy and ECE by less than their
  fold-to-fold spread, "prompt + response" embedded as one text lost 5 points of accuracy, and 64
  word pieces did as well as 128 at about half the cost.
- quality: Prometheus MT-Bench and Vicuna-Bench, 640 responses with three GPT-4 1-5 rubric scores.
  Target: their mean mapped to our 1-10 rubric by ``1 + (s - 1) * 9 / 4`` (as the LLM replay server
  maps single scores), then ``evalstream.wire.dimensions.quality_label``. The only pointwise quality set
  with response text and three gradings per item, so the label is less noisy than one grading.
  Input: the response (48 word pieces) and the last user turn (16), embedded apart, side by side.
  The response view is the refusal recipe's, so it is embedded once for both dimensions.

Word-piece budgets and encoder depth (``--layers``), from ``benchmarks/encoder_recipes.py`` (held-out
accuracy; grouped 5-fold cross-validated accuracy over every item, mean of 5 shuffles of prompts to
folds; items/s of the views on one thread):

| encoder | refusal views: held-out / CV acc, items/s | quality views: held-out / CV acc, items/s |
|---|---|---|
| 6 layers | response@64: 0.857 / 0.870, 148 | response@64 + prompt@64: 0.787 / 0.690, 112 |
| 6 layers (default) | **response@48: 0.850 / 0.867, 190** | **response@48 + prompt@16: 0.796 / 0.694, 140** |
| 6 layers | response@32: 0.841 / 0.855, 268 | response@32 + prompt@16: 0.801 / 0.699, 184 |
| 4 layers | response@48: 0.873 / 0.888, 277 | response@48 + prompt@16: 0.727 / 0.678, 212 |
| 3 layers | response@32: 0.865 / 0.877, 489 | response@32 + prompt@16: 0.732 / 0.673, 346 |

The defaults keep both dimensions within a point of the 64-piece recipes on both measures (the torch
judge before them read 128 response pieces for quality). Cutting the encoder after 3 or 4 of its 6
layers makes refusal *better* (+2 points) and faster, but costs quality 1-2 points in cross-validation
and 5-6 on its held-out questions, and the two dimensions share the response's encoder pass, so one
depth serves both: ``--layers 3`` with ``--refusal-views response@32 --quality-views
response@32,prompt@16`` is 2.5x faster than the defaults for a deployment that can give up that much
quality accuracy (or judges refusal alone at tier 1).

Calibration is temperature scaling: one parameter that keeps the classifier's decisions and fixes
its confidence. For refusal, unweighted logistic regression beat balanced class weights and
one-vs-rest Platt or isotonic calibration on log loss and ECE (grouped 5-fold cross-validation) and on
the share of held-out items a cascade could accept at 95% agreement; the price is that partial
refusals (8% of items) are seldom predicted, so they get low confidence and escalate. For quality,
unweighted regression only ever says "good" (72% of items), so quality uses balanced class weights.
``--calibration`` and ``--class-weight`` override both dimensions' defaults (``encoder_fit.RECIPES``).

Split by prompt: a prompt's completions are all on one side. Refusal uses the rules judge's split
(``rules_fit.is_held_out``, ~30% of prompts held out) so tiers 0 and 1 are measured on the same
held-out prompts; quality holds out ~30% of questions by a salted hash of (set, question id). The
held-out side only measures: per-class precision and recall, top-label expected calibration error
(the same function as the rules judge's), log loss. Figures go into the artefact's metadata.

Reference embedding profile (``encoder.EmbeddingProfile``, for drift on embedding statistics): a
2-component PCA of the ``PROFILE_VIEW`` embeddings of every training-side response of every dimension
(XSTest and Prometheus; the recipes' embeddings at that view are reused). Its centroid and axes,
explained variance and row count go into the metadata.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evalstream.wire.dimensions import Dimension

from .embedding import (
    DEFAULT_THREADS,
    TextField,
    View,
)
from .encoder_artefact import (
    ArtefactMetadata,
)
from .encoder_fit import CALIBRATIONS, CLASS_WEIGHTS, ENCODER_LAYERS, RECIPES, Recipe, train
from .encoder_onnx import MODEL_LAYERS, Quantisation, SourceFileError

__all__ = ["main", "parse_views"]

# --- command line --------------------------------------------------------------------------------


def parse_views(spec: str) -> tuple[View, ...]:
    """``"response@64,prompt@32"`` -> views."""
    views: list[View] = []
    for part in spec.split(","):
        field, sep, tokens = part.strip().partition("@")
        if not sep or field not in {f.value for f in TextField} or not tokens.isdigit():
            raise argparse.ArgumentTypeError(
                f"view {part!r}: expected FIELD@TOKENS with FIELD one of "
                f"{', '.join(f.value for f in TextField)}, e.g. response@64"
            )
        views.append(View(field=TextField(field), max_tokens=int(tokens)))
    return tuple(views)


def _tables(metadata: ArtefactMetadata) -> list[Any]:
    """Per-class figures and one row of summary figures per dimension, each table within 80 columns."""
    from rich.table import Table

    classes = Table(title=f"encoder judge {metadata.version}: held-out split (grouped by prompt)")
    for column in ("dimension", "label", "precision", "recall", "f1", "support"):
        classes.add_column(column, justify="left" if column in ("dimension", "label") else "right")
    summary = Table(title=f"encoder judge {metadata.version}: held-out summary")
    for column in ("dimension", "accuracy", "macro-F1", "ECE", "log loss", "items"):
        summary.add_column(column, justify="left" if column == "dimension" else "right")
    for name, dim in metadata.dimensions.items():
        m = dim.metrics
        for lab, c in m.per_class.items():
            classes.add_row(name, lab, f"{c.precision:.3f}", f"{c.recall:.3f}", f"{c.f1:.3f}", str(c.support))
        classes.add_section()
        summary.add_row(
            name, f"{m.accuracy:.3f}", f"{m.macro_f1:.3f}", f"{m.ece:.3f}", f"{m.log_loss:.3f}", str(m.n)
        )
    return [classes, summary]


def _recipes(args: argparse.Namespace) -> dict[Dimension, Recipe]:
    recipes: dict[Dimension, Recipe] = {}
    for dim, default in RECIPES.items():
        recipes[dim] = Recipe(
            views=getattr(args, f"{dim.value}_views") or default.views,
            class_weight=args.class_weight or default.class_weight,
            calibration=args.calibration or default.calibration,
        )
    return recipes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evalstream.judges.encoder_train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="artefact directory to write")
    parser.add_argument("--data", type=Path, default=None, help="shared data root (default: data_root())")
    parser.add_argument("--calibration", choices=CALIBRATIONS, help="override every dimension's default")
    parser.add_argument("--class-weight", choices=CLASS_WEIGHTS, help="override every dimension's default")
    for dim in RECIPES:
        default = ",".join(v.key() for v in RECIPES[dim].views)
        parser.add_argument(f"--{dim.value}-views", type=parse_views, help=f"default {default}")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_THREADS,
        help=f"ONNX Runtime intra-op threads (default {DEFAULT_THREADS})",
    )
    parser.add_argument(
        "--layers",
        type=int,
        default=ENCODER_LAYERS,
        help=f"transformer layers of the encoder to keep, 1 to {MODEL_LAYERS} (default {ENCODER_LAYERS})",
    )
    parser.add_argument(
        "--quantisation",
        choices=[q.value for q in Quantisation],
        default=Quantisation.DYNAMIC_INT8.value,
        help="how the encoder's ONNX file is prepared (default dynamic-int8; see encoder_onnx)",
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)

    from rich.console import Console

    from evalstream.runtime.tables import print_table

    console = Console()
    started = time.perf_counter()
    try:
        metadata = train(
            args.out,
            root=args.data,
            recipes=_recipes(args),
            num_threads=args.threads,
            force=args.force,
            quantisation=Quantisation(args.quantisation),
            layers=args.layers,
        )
    except (FileExistsError, FileNotFoundError, ValueError, SourceFileError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    for table in _tables(metadata):
        print_table(console, table)
    console.print(f"wrote {args.out} ({metadata.version}) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
