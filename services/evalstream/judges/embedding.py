"""What the encoder judge embeds, and how: text views, the ONNX sentence encoder, features.

``TextEncoder`` runs all-MiniLM-L6-v2 as an ONNX file in ONNX Runtime on word pieces cut by the
``tokenizers`` library, then mean pooling over the real tokens and L2 normalisation (what
sentence-transformers does for this model); ``embed_views`` embeds each ``View`` of a batch of items
once, and ``features`` joins the views' embeddings into a classifier's input. The constants below
say why one text per run and two sleeping threads.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from tokenizers import Tokenizer

from .base import JudgeInput

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_THREADS",
    "EMBEDDING_DIMENSION",
    "ENCODER_MODEL",
    "PROFILE_VIEW",
    "Embeddings",
    "Encoder",
    "TextEncoder",
    "TextField",
    "View",
    "embed_views",
    "features",
    "field_text",
]

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
#: ONNX Runtime intra-op threads, that sleep when idle (no spinning). One: with one text per call, a
#: second thread was 5-10% slower in every cell of benchmarks/encoder_judge.py on quiet 2-core runs;
#: more judge processes use more cores.
DEFAULT_THREADS: Final = 1

Embeddings = npt.NDArray[np.float32]


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
PROFILE_VIEW: Final = View(field=TextField.RESPONSE, max_tokens=48)


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
