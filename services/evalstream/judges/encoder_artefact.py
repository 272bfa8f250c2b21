"""The encoder judge's artefact: its metadata records, the fitted models, and loading them checked.

``encoder.py`` describes the artefact directory; ``load_artefact`` reads it, checking every file's
sha256 against the metadata and the scikit-learn version it was made with, and raises
``EncoderArtefactError`` naming the train command when it cannot be served. Where it is: the
explicit argument, then ``EVALSTREAM_ENCODER_MODEL_DIR`` (``resolve_model_dir``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from evalstream.runtime.settings import env_name
from evalstream.wire.dimensions import LABELS, Dimension, EmbeddingStat

from .embedding import (
    PROFILE_VIEW,
    TextField,
    View,
)
from .encoder_onnx import MODEL_LAYERS
from .settings import EncoderSettings

__all__ = [
    "ARTEFACT_SCHEMA",
    "ENCODER_FILE",
    "ENCODER_MODEL_DIR_ENV",
    "METADATA_FILE",
    "ONNX_RUNTIME",
    "PROFILE_COMPONENTS",
    "PROFILE_FILE",
    "TOKENIZER_FILE",
    "TRAIN_COMMAND",
    "Artefact",
    "ArtefactMetadata",
    "ClassMetrics",
    "Classifier",
    "DataSource",
    "DimensionMetadata",
    "DimensionModel",
    "EmbeddingProfile",
    "EmbeddingProfileMetadata",
    "EncoderArtefactError",
    "EncoderInfo",
    "HeldOutMetrics",
    "Projection",
    "SplitInfo",
    "load_artefact",
    "resolve_model_dir",
    "sha256_file",
]

#: The environment variable of ``EncoderSettings.model_dir``: a trained artefact's directory.
ENCODER_MODEL_DIR_ENV: Final = env_name(EncoderSettings, "model_dir")
TRAIN_COMMAND: Final = "python -m evalstream.judges.encoder_train --out DIR"
#: 3: the encoder (ONNX file and tokenizer) is part of the artefact; 2 added the embedding profile.
ARTEFACT_SCHEMA: Final = 3
METADATA_FILE: Final = "metadata.json"
PROFILE_FILE: Final = "embedding_profile.pkl"
ENCODER_FILE: Final = "encoder.onnx"
TOKENIZER_FILE: Final = "tokenizer.json"
#: ``EncoderInfo.runtime`` of an artefact a judge can serve.
ONNX_RUNTIME: Final = "onnxruntime"
#: Principal axes kept in the reference embedding profile (``EmbeddingStat.PC1``, ``PC2``).
PROFILE_COMPONENTS: Final = 2


class EncoderArtefactError(RuntimeError):
    """The encoder judge's artefact is missing, unreadable, altered or made by another scikit-learn."""


# --- the artefact ----------------------------------------------------------------------------------


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EncoderInfo(_Record):
    """The encoder the classifiers were fitted on."""

    model: str  # ENCODER_MODEL
    source: str  # where its weights came from: package, version, file and sha256
    runtime: str  # ONNX_RUNTIME for a servable artefact ("torch": the benchmark's old path only)
    quantisation: str
    dimension: int
    layers: int = MODEL_LAYERS  # transformer layers kept (encoder_onnx.prepare); before the option: all
    files: dict[str, str]  # artefact file -> sha256: ENCODER_FILE and TOKENIZER_FILE
    pooling: str = "mean over the attention mask, then L2 normalisation"


class DataSource(_Record):
    """Where the training data came from (the data folder's SOURCE.md) and the bytes that were read."""

    name: str
    folder: str
    target: str
    repository: str
    commit: str
    paper: str
    licence: str
    files: dict[str, str]  # path under the data root -> sha256
    rows: int


class SplitInfo(_Record):
    method: str
    group: str
    train_rows: int
    test_rows: int
    train_groups: int
    test_groups: int


class ClassMetrics(_Record):
    precision: float
    recall: float
    f1: float
    support: int


class HeldOutMetrics(_Record):
    n: int
    accuracy: float
    macro_f1: float
    ece: float  # top-label expected calibration error, 10 equal-width bins
    log_loss: float
    per_class: dict[str, ClassMetrics]


class DimensionMetadata(_Record):
    file: str
    sha256: str
    labels: list[str]  # the classifier's columns, in order
    views: list[View]
    label_scores: dict[str, float]  # score = sum over labels of P(label) * label_scores[label]
    classifier: str
    calibration: str
    data: DataSource
    split: SplitInfo
    metrics: HeldOutMetrics


class EmbeddingProfileMetadata(_Record):
    file: str
    sha256: str
    view: View  # the response view the profile (and every statistic) is on
    statistics: list[str]  # EmbeddingStat values, in order
    method: str
    sources: list[str]  # dimensions whose training-side responses were used
    rows: int  # responses fitted
    explained_variance_ratio: list[float]  # of the principal axes, in order
    centroid_norm: float  # length of the mean unit embedding (1: all training responses alike)


class ArtefactMetadata(_Record):
    schema_version: int
    version: str
    created: str
    encoder: EncoderInfo
    libraries: dict[str, str]
    dimensions: dict[str, DimensionMetadata]
    embedding_profile: EmbeddingProfileMetadata


class Classifier(Protocol):
    """What the judge needs of a fitted scikit-learn classifier."""

    classes_: npt.NDArray[Any]

    def predict_proba(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DimensionModel:
    dimension: str
    labels: tuple[str, ...]
    views: tuple[View, ...]
    label_scores: npt.NDArray[np.float64]  # aligned with labels
    classifier: Classifier

    def probabilities(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Calibrated P(label), one row per item, columns in ``labels`` order; rows sum to 1."""
        return np.asarray(self.classifier.predict_proba(x), dtype=np.float64)

    def scores(self, probabilities: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return probabilities @ self.label_scores


class Projection(Protocol):
    """What the profile needs of a fitted scikit-learn PCA."""

    mean_: npt.NDArray[np.float64]
    components_: npt.NDArray[np.float64]
    explained_variance_ratio_: npt.NDArray[np.float64]
    n_features_in_: int

    def transform(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EmbeddingProfile:
    """The reference embedding profile: a fitted PCA whose ``mean_`` is the training centroid."""

    view: View
    pca: Projection

    @classmethod
    def fit(cls, embeddings: npt.ArrayLike, *, view: View = PROFILE_VIEW) -> EmbeddingProfile:
        """Fit on the training responses' embeddings (one row each) at ``view``."""
        from sklearn.decomposition import PCA

        x = np.asarray(embeddings, dtype=np.float64)
        if x.ndim != 2 or len(x) <= PROFILE_COMPONENTS:
            raise ValueError(
                f"an embedding profile needs more than {PROFILE_COMPONENTS} embeddings as rows, "
                f"got shape {x.shape}"
            )
        return cls(view=view, pca=PCA(n_components=PROFILE_COMPONENTS, svd_solver="full").fit(x))

    @property
    def centroid(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.pca.mean_, dtype=np.float64)

    def statistics(self, embeddings: npt.ArrayLike) -> dict[EmbeddingStat, npt.NDArray[np.float64]]:
        """Every ``EmbeddingStat`` of each row of ``embeddings`` (taken at ``view``)."""
        from sklearn.metrics.pairwise import cosine_similarity

        x = np.asarray(embeddings, dtype=np.float64).reshape(-1, self.centroid.shape[0])
        if not len(x):
            return {stat: np.zeros(0) for stat in EmbeddingStat}
        coordinates = np.asarray(self.pca.transform(x), dtype=np.float64)
        return {
            EmbeddingStat.CENTROID_COSINE: np.asarray(
                cosine_similarity(x, self.centroid[np.newaxis, :])[:, 0], dtype=np.float64
            ),
            EmbeddingStat.PC1: coordinates[:, 0],
            EmbeddingStat.PC2: coordinates[:, 1],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Artefact:
    path: Path
    metadata: ArtefactMetadata
    models: Mapping[str, DimensionModel]
    profile: EmbeddingProfile


def resolve_model_dir(explicit: Path | None = None) -> Path:
    """The explicit directory, then ``EVALSTREAM_ENCODER_MODEL_DIR``; no default (it is trained)."""
    if explicit is not None:
        return explicit
    if (configured := EncoderSettings().model_dir) is not None:
        return configured
    raise EncoderArtefactError(
        f"no encoder judge artefact given: pass its directory or set {ENCODER_MODEL_DIR_ENV}; "
        f"make one with `{TRAIN_COMMAND}`"
    )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_artefact(path: Path) -> Artefact:
    """Read and check ``metadata.json`` and every classifier it names."""
    meta_path = path / METADATA_FILE
    if not meta_path.is_file():
        raise EncoderArtefactError(
            f"encoder judge artefact not found: {meta_path} does not exist; train one with `{TRAIN_COMMAND}` "
            f"and point {ENCODER_MODEL_DIR_ENV} (or the explicit model_dir) at DIR"
        )
    try:
        metadata = ArtefactMetadata.model_validate_json(meta_path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise EncoderArtefactError(f"cannot read {meta_path}: {exc}; retrain with `{TRAIN_COMMAND}`") from exc
    if metadata.schema_version != ARTEFACT_SCHEMA:
        raise EncoderArtefactError(
            f"{meta_path}: artefact schema {metadata.schema_version}, this code reads {ARTEFACT_SCHEMA}; "
            f"retrain with `{TRAIN_COMMAND}`"
        )
    made_with = metadata.libraries.get("scikit-learn")
    installed = importlib.metadata.version("scikit-learn")
    if made_with != installed:
        raise EncoderArtefactError(
            f"{path}: classifiers pickled with scikit-learn {made_with}, {installed} is installed; "
            f"retrain with `{TRAIN_COMMAND}`"
        )
    for file, sha256 in metadata.encoder.files.items():
        _checked_bytes(path, file, sha256)
    models = {name: _load_dimension(path, name, dim) for name, dim in metadata.dimensions.items()}
    profile = _load_profile(path, metadata)
    return Artefact(path=path, metadata=metadata, models=models, profile=profile)


def _checked_bytes(path: Path, file: str, sha256: str) -> bytes:
    try:
        blob = (path / file).read_bytes()
    except OSError as exc:
        raise EncoderArtefactError(
            f"{path}: cannot read {file}: {exc}; retrain with `{TRAIN_COMMAND}`"
        ) from exc
    if hashlib.sha256(blob).hexdigest() != sha256:
        raise EncoderArtefactError(
            f"{path / file}: sha256 differs from {METADATA_FILE}; the artefact was altered, "
            f"retrain with `{TRAIN_COMMAND}`"
        )
    return blob


def _checked_pickle(path: Path, file: str, sha256: str) -> Any:
    return pickle.loads(_checked_bytes(path, file, sha256))  # our own artefact, checked by sha256


def _load_profile(path: Path, metadata: ArtefactMetadata) -> EmbeddingProfile:
    meta = metadata.embedding_profile
    pca: Projection = _checked_pickle(path, meta.file, meta.sha256)
    expected = [s.value for s in EmbeddingStat]
    problems = []
    if meta.view.field is not TextField.RESPONSE:
        problems.append(f"view {meta.view.key()} is not a response view")
    if meta.statistics != expected:
        problems.append(f"statistics {meta.statistics}, this code computes {expected}")
    shape = tuple(np.shape(pca.components_))
    if shape != (PROFILE_COMPONENTS, metadata.encoder.dimension):
        problems.append(
            f"principal axes of shape {shape}, expected {(PROFILE_COMPONENTS, metadata.encoder.dimension)}"
        )
    if problems:
        raise EncoderArtefactError(
            f"{path / meta.file}: embedding profile does not fit: {'; '.join(problems)}; "
            f"retrain with `{TRAIN_COMMAND}`"
        )
    return EmbeddingProfile(view=meta.view, pca=pca)


def _load_dimension(path: Path, name: str, meta: DimensionMetadata) -> DimensionModel:
    if name not in {d.value for d in Dimension}:
        raise EncoderArtefactError(f"{path}: unknown dimension {name!r} in {METADATA_FILE}")
    file = path / meta.file
    classifier: Classifier = _checked_pickle(path, meta.file, meta.sha256)
    classes = [str(c) for c in classifier.classes_]
    if classes != meta.labels or not set(classes) <= LABELS[Dimension(name)]:
        raise EncoderArtefactError(
            f"{file}: classifier labels {classes} do not match {METADATA_FILE} {meta.labels} "
            f"or the {name} vocabulary {sorted(LABELS[Dimension(name)])}"
        )
    return DimensionModel(
        dimension=name,
        labels=tuple(classes),
        views=tuple(meta.views),
        label_scores=np.array([meta.label_scores[c] for c in classes], dtype=np.float64),
        classifier=classifier,
    )
