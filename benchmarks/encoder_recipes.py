"""Tier-1 encoder recipes: encoder depth and word-piece budgets against accuracy and speed, one run.

    .venv/bin/python benchmarks/encoder_recipes.py [--layers 6,4,3] [--shuffles 5] [--data DIR]

For each encoder depth (``encoder_onnx.prepare(layers=k)``: the int8 all-MiniLM-L6-v2 cut after its
k-th transformer layer, as ``encoder_train --layers k`` writes it) and each recipe (the views a
dimension's classifier reads, e.g. ``response@48+prompt@16``), on the real shared data:

- **held-out accuracy, ECE, log loss**: the classifier exactly as ``encoder_train`` fits it
  (``train_dimension``: calibrated logistic regression, grouped folds), on the held-out prompts it
  records in the artefact (refusal 615 XSTest completions, quality 216 Prometheus responses);
- **grouped cross-validated accuracy** over every item: the recipe's logistic regression in grouped
  5-fold cross-validation (a prompt's items on one side), repeated over ``--shuffles`` random
  assignments of prompts to folds; mean and spread. The held-out side of quality is 54 questions, so
  its accuracy moves by several points between recipes by chance; this figure uses all 160;
- **texts/s**: one ONNX Runtime call per text on one thread, over the recipe's views of 256 real items
  (short XSTest completions for refusal, long Prometheus responses for quality), as the judge runs
  them.

The default recipes (``encoder_fit.RECIPES``, ``ENCODER_LAYERS``) were chosen on these figures
(docs/ARCHITECTURE.md, "Tier 1 without torch"). Prints a table and writes JSON to
benchmarks/results/encoder_recipes.json with the load average before and after (the machine may be
shared: texts/s are comparable within one run only).

Data: XSTest v2 (Röttger et al., NAACL 2024), https://github.com/paul-rottger/exaggerated-safety,
CC-BY-4.0, completions under the Meta, Mistral and OpenAI terms; Prometheus absolute-grading eval
sets (Kim et al., ICLR 2024), https://github.com/prometheus-eval/prometheus-eval, Apache-2.0.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from evalstream.evaluation.datasets import data_root
from evalstream.judges.embedding import TextEncoder, View, embed_views, features
from evalstream.judges.encoder_examples import Examples, quality_examples, refusal_examples
from evalstream.judges.encoder_fit import ENCODER_LAYERS, RECIPES, Recipe, train_dimension
from evalstream.judges.encoder_onnx import MODEL_LAYERS, Quantisation, prepare
from evalstream.judges.encoder_train import parse_views
from evalstream.runtime.tables import print_table
from evalstream.wire.dimensions import Dimension

RESULTS = Path(__file__).resolve().parent / "results"
#: Per dimension, the recipes compared (the default first).
CANDIDATES: dict[Dimension, tuple[str, ...]] = {
    Dimension.REFUSAL: ("response@64", "response@48", "response@32"),
    Dimension.QUALITY: (
        "response@64,prompt@64",
        "response@48,prompt@16",
        "response@32,prompt@16",
        "response@32,prompt@32",
    ),
}
SPEED_ITEMS = 256


def cross_validated(
    examples: Examples, x: np.ndarray, class_weight: str, shuffles: int
) -> tuple[float, float]:
    """Mean and standard deviation over ``shuffles`` of grouped 5-fold cross-validated accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict

    y, groups = np.array(examples.labels), np.array(examples.groups)
    names = np.unique(groups)
    accuracies = []
    for seed in range(shuffles):
        order = dict(zip(names, np.random.default_rng(seed).permutation(len(names)), strict=True))
        shuffled = np.array([order[g] for g in groups])
        model = LogisticRegression(
            max_iter=2000, class_weight=None if class_weight == "none" else class_weight
        )
        predicted = cross_val_predict(model, x, y, groups=shuffled, cv=GroupKFold(n_splits=5))
        accuracies.append(float((predicted == y).mean()))
    return float(np.mean(accuracies)), float(np.std(accuracies))


def texts_per_second(encoder: TextEncoder, examples: Examples, views: tuple[View, ...]) -> float:
    """Items/s over the views of ``SPEED_ITEMS`` items, one text per call (the judge's way)."""
    step = max(1, len(examples.labels) // SPEED_ITEMS)
    texts = {f: column[::step][:SPEED_ITEMS] for f, column in examples.texts.items()}
    embed_views(encoder, texts, views)  # warm-up
    started = time.perf_counter()
    embed_views(encoder, texts, views)
    return len(texts[views[0].field]) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", default="6,4,3", help="encoder depths to compare, comma-separated")
    parser.add_argument("--shuffles", type=int, default=5, help="repeats of grouped 5-fold CV")
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: data_root())")
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_recipes.json")
    args = parser.parse_args()
    depths = [int(k) for k in args.layers.split(",")]
    if not all(1 <= k <= MODEL_LAYERS for k in depths):
        parser.error(f"--layers: each between 1 and {MODEL_LAYERS}")
    console = Console()
    load_before = os.getloadavg()
    root = data_root(args.data)
    examples = {Dimension.REFUSAL: refusal_examples(root), Dimension.QUALITY: quality_examples(root)}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="encoder-recipes-") as scratch:
        for layers in depths:
            model, tokenizer = Path(scratch) / f"encoder-{layers}.onnx", Path(scratch) / "tokenizer.json"
            prepare(model, tokenizer, Quantisation.DYNAMIC_INT8, layers=layers)
            encoder = TextEncoder.load(model, tokenizer, num_threads=1)
            for dim, candidates in CANDIDATES.items():
                for text in candidates:
                    views = tuple(parse_views(text))
                    recipe = Recipe(views=views, class_weight=RECIPES[dim].class_weight)
                    with console.status(f"{layers} layers, {dim.value} on {text}"):
                        trained = train_dimension(encoder, examples[dim], recipe)
                        x = features(trained.embeddings, views)
                        mean, spread = cross_validated(examples[dim], x, recipe.class_weight, args.shuffles)
                        speed = texts_per_second(encoder, examples[dim], views)
                    m = trained.metadata.metrics
                    rows.append(
                        {
                            "layers": layers,
                            "dimension": dim.value,
                            "views": text,
                            "default": layers == ENCODER_LAYERS and views == RECIPES[dim].views,
                            "held_out_accuracy": round(m.accuracy, 4),
                            "held_out_ece": round(m.ece, 4),
                            "held_out_log_loss": round(m.log_loss, 4),
                            "held_out_n": m.n,
                            "cv_accuracy_mean": round(mean, 4),
                            "cv_accuracy_sd": round(spread, 4),
                            "cv_shuffles": args.shuffles,
                            "items_per_s_1_thread": round(speed, 1),
                        }
                    )
                    console.print(json.dumps(rows[-1]))
    result = {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    load = f"{result['load_average_before'][0]} -> {result['load_average_after'][0]}"
    table = Table(title=f"tier-1 encoder recipes (load average {load}; * the default)")
    for column in ("layers", "dimension", "views", "held-out acc / ECE", "CV acc (sd)", "items/s, 1 thread"):
        table.add_column(column, justify="right" if column != "views" else "left")
    for r in rows:
        table.add_row(
            str(r["layers"]),
            r["dimension"],
            r["views"] + (" *" if r["default"] else ""),
            f"{r['held_out_accuracy']:.3f} / {r['held_out_ece']:.3f}",
            f"{r['cv_accuracy_mean']:.3f} ({r['cv_accuracy_sd']:.3f})",
            f"{r['items_per_s_1_thread']:.0f}",
        )
    print_table(console, table)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
