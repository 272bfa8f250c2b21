"""A user's own labelled data: the labelled-items JSON Lines format, read with clear errors, turned
into the same labelled set as the built-in data, collected from live judges, calibrated and reported.

The files are written at test time from ../shared/data (never committed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from evalstream.cli.app import app
from evalstream.evaluation.judgements import TableError
from evalstream.evaluation.labelled_items import (
    LabelledItemIn,
    read_labelled_items,
    to_labelled_set,
    write_labelled_items,
)
from evalstream.evaluation.recorded import build_xstest, read_items
from evalstream.local.supervisor import ChildProcess
from evalstream.tools.collect import xstest_items

from .real_parts import judge_server, start

GOOD = {
    "item_id": "support-1",
    "messages": [{"role": "user", "content": "How do I reset my password?"}],
    "response": "Open Settings, then Account, and choose Reset password.",
    "labels": [{"dimension": "refusal", "label": "full_compliance", "annotator": "alice"}],
}


def _xstest_as_items(shared_data: Path) -> list[LabelledItemIn]:
    """The built-in XSTest set, recorded judgements and splits included: its reader yields the records
    of a user's file."""
    return list(build_xstest(shared_data).items)


@pytest.mark.parametrize("name", ["xstest", "llmbar", "judgebench"])
def test_a_built_in_set_written_as_a_file_reads_back_as_the_same_labelled_set(
    shared_data: Path, tmp_path: Path, name: str
) -> None:
    builtin = read_items(name, shared_data)
    assert builtin.items and all(item.messages and item.split for item in builtin.items)
    if name != "xstest":  # pairwise: both responses are in the record
        assert all(item.response_b for item in builtin.items)
    path = tmp_path / f"{name}.jsonl"
    assert write_labelled_items(path, builtin.items) == len(builtin.items)
    mine = read_items(str(path)).labelled_set(truth_annotator=builtin.truth_annotator)
    ours = builtin.labelled_set()
    assert (mine.name, ours.name) == (name, name)
    assert mine.judgements == ours.judgements and mine.humans == ours.humans
    assert dict(mine.splits) == dict(ours.splits) and mine.truth_annotator == ours.truth_annotator


def test_a_users_file_reports_exactly_what_the_built_in_set_reports(shared_data: Path, tmp_path: Path):
    path = tmp_path / "my-xstest.jsonl"
    assert write_labelled_items(path, _xstest_as_items(shared_data)) == 2250
    runner = CliRunner()
    args = ["--json", "--bootstrap", "50", "--alpha", "0.2", "--truth-annotator", "adjudicated"]
    builtin = runner.invoke(app, ["report", "--data", "xstest", *args])
    own = runner.invoke(app, ["report", "--data", str(path), *args])
    assert builtin.exit_code == 0, builtin.output
    assert own.exit_code == 0, own.output
    (a,), (b,) = json.loads(builtin.stdout), json.loads(own.stdout)
    assert b["data"] == "my-xstest" and b["items"] == a["items"]
    assert b["judges"] == a["judges"]  # every figure of every judge and of the cascade
    assert b["cascade_plan"] == a["cascade_plan"]


def test_calibrate_on_a_users_file_writes_a_config(shared_data: Path, tmp_path: Path):
    path = tmp_path / "mine.jsonl"
    write_labelled_items(path, _xstest_as_items(shared_data))
    out = tmp_path / "cascade.yaml"
    result = CliRunner().invoke(
        app,
        [
            "calibrate",
            "--data",
            str(path),
            "--truth-annotator",
            "adjudicated",
            "--alpha",
            "0.2",
            "--out",
            str(out),
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    config = yaml.safe_load(out.read_text())
    assert config["alpha"] == 0.2 and "mine" in config["calibration_data"]
    assert [t["judge"] for t in config["dimensions"]["refusal"]["tiers"]][-1] == "gpt-4"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: not JSON"),
        (json.dumps({**GOOD, "item_id": "x", "colour": "red"}), "colour: Extra inputs are not permitted"),
        (
            json.dumps(
                {
                    **GOOD,
                    "item_id": "x",
                    "labels": [{"dimension": "refusal", "label": "maybe", "annotator": "a"}],
                }
            ),
            "'maybe' is not a refusal label",
        ),
        (json.dumps({**GOOD, "item_id": "x", "labels": []}), "labels: List should have at least 1 item"),
        (json.dumps({**GOOD, "item_id": "x", "messages": []}), "messages: List should have at least 1 item"),
        (json.dumps(GOOD), "item_id 'support-1' was already used at line 1"),
        (
            json.dumps({**GOOD, "item_id": "x", "labels": GOOD["labels"] * 2}),
            "annotator 'alice' labels refusal twice",
        ),
        (
            json.dumps({**GOOD, "item_id": "x", "split": "dev"}),
            "split: Input should be 'fit', 'calibration' or 'test'",
        ),
        ("[1, 2]", ":2: expected a JSON object, got list"),
    ],
)
def test_bad_lines_are_named_with_what_is_wrong(tmp_path: Path, line: str, message: str):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n")
    with pytest.raises(TableError) as exc:
        read_labelled_items(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_a_file_without_judgements_says_to_collect_first(tmp_path: Path):
    path = tmp_path / "labels-only.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    result = CliRunner().invoke(app, ["report", "--data", str(path)])
    assert result.exit_code != 0
    assert "no recorded judgements" in result.output and "evalstream collect --data" in result.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TableError, match="has no items"):
        read_labelled_items(empty)


def test_splits_are_given_or_shared_by_group():
    items = [
        LabelledItemIn.model_validate({**GOOD, "item_id": f"i{n}", "group": f"prompt-{n // 3}"})
        for n in range(60)
    ] + [LabelledItemIn.model_validate({**GOOD, "item_id": "pinned", "split": "test"})]
    labelled = to_labelled_set(items, name="mine", seed=3)
    for n in range(0, 60, 3):
        assert len({labelled.splits[f"i{n + k}"] for k in range(3)}) == 1  # a group shares its split
    assert {labelled.splits[f"i{n}"].value for n in range(60)} == {"calibration", "test"}
    assert labelled.splits["pinned"].value == "test"
    assert labelled.truth_annotator == "alice"


@pytest.mark.slow
def test_collect_asks_live_judges_about_a_users_file(shared_data: Path, tmp_path: Path):
    """A user's file (here 300 XSTest items with only the adjudicated label) through `evalstream
    collect` against a real tier-0 judge process: every item gets the judge's verdict, then a config."""
    items = [i.model_copy(update={"labels": i.labels[:1], "split": None}) for i in xstest_items(shared_data)][
        :300
    ]
    path = tmp_path / "users.jsonl"
    write_labelled_items(path, items)
    children: list[ChildProcess] = []
    try:
        address = start(children, judge_server("rules", "rules", tmp_path))
        out = tmp_path / "out"
        result = CliRunner().invoke(
            app,
            [
                "collect",
                "--data",
                str(path),
                "--judges",
                f"0={address}",
                "--out-dir",
                str(out),
                "--alpha",
                "0.2",
            ],
        )
        assert result.exit_code == 0, result.output
    finally:
        for child in children:
            child.stop()
    judged = read_labelled_items(out / "items.jsonl")
    assert [i.item_id for i in judged] == [i.item_id for i in items]
    assert all(
        [(j.tier, j.judge, j.dimension.value) for j in i.judgements] == [(0, "rules-v1", "refusal")]
        for i in judged
    )
    assert sum(i.judgements[0].label is not None for i in judged) == 300
    assert (out / "cascade.yaml").is_file() and "held-out refusal:" in result.output


def test_collect_names_why_a_pairwise_built_in_set_cannot_be_collected() -> None:
    result = CliRunner().invoke(app, ["collect", "--data", "judgebench", "--judges", "0=127.0.0.1:1"])
    assert result.exit_code == 2
    assert "pairwise" in result.output and "--data judgebench" in result.output
