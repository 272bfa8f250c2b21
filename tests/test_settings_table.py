"""One settings source: every ``EVALSTREAM_*`` variable is a field of one settings class, its flag is
derived from that field, and docs/configuration.md lists them as the classes say."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_ROOTS = ("src", "pipelines", "services")


def _generator():
    spec = importlib.util.spec_from_file_location("settings_table", ROOT / "docs" / "settings_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _sources() -> list[Path]:
    return [
        p for root in SOURCE_ROOTS for p in (ROOT / root / "evalstream").rglob("*.py") if "_pb2" not in p.name
    ]


def test_the_docs_table_is_what_the_classes_generate():
    generator = _generator()
    page = generator.PAGE.read_text(encoding="utf-8")
    assert generator.render(page) == page, (
        "docs/configuration.md is out of date: run python docs/settings_table.py"
    )


def test_the_table_covers_every_settings_class_and_names_each_variable_once():
    generator = _generator()
    listed = {section.cls.__name__ for section in generator.SECTIONS}
    defined = {
        node.name
        for path in _sources()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
        and any(getattr(b, "id", None) == "BaseSettings" for b in node.bases)
    }
    assert defined == listed
    names = [
        generator.env_name(section.cls, field)
        for section in generator.SECTIONS
        for field in section.cls.model_fields
    ]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    for section in generator.SECTIONS:
        undocumented = [f for f, info in section.cls.model_fields.items() if not info.description]
        assert not undocumented, f"{section.cls.__name__} fields without a docstring: {undocumented}"


def _environment_reads(tree: ast.AST) -> list[str]:
    """String constants ``EVALSTREAM_*`` read from ``os.environ``/``os.getenv`` in one module."""
    found = []
    for node in ast.walk(tree):
        target: ast.expr | None = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ":
            target = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.environ.get", "os.getenv"):
            target = node.args[0] if node.args else None
        if target is not None and not (
            isinstance(target, ast.Constant) and not str(target.value).startswith("EVALSTREAM_")
        ):
            found.append(ast.unparse(target))
    return found


def test_no_module_reads_an_evalstream_variable_itself():
    """Only pydantic-settings reads EVALSTREAM_* (constants or names of them count as reads)."""
    offenders = {}
    for path in _sources():
        reads = _environment_reads(ast.parse(path.read_text(encoding="utf-8")))
        if reads:
            offenders[str(path.relative_to(ROOT))] = reads
    assert offenders == {}


def test_the_check_finds_a_direct_read():
    assert _environment_reads(ast.parse('import os\nx = os.environ.get("EVALSTREAM_X")')) == [
        "'EVALSTREAM_X'"
    ]
    assert _environment_reads(ast.parse("import os\nx = os.environ[DATA_DIR_ENV]")) == ["DATA_DIR_ENV"]
    assert _environment_reads(ast.parse('import os\nx = os.environ.get("HOME")')) == []


def test_flag_then_environment_then_default(monkeypatch: pytest.MonkeyPatch):
    from evalstream.exporter.server import _parse as exporter_args
    from evalstream.judges.server import _parse as judge_args
    from evalstream.judges.settings import JudgeServerSettings
    from evalstream.pipeline.run import flags as pipeline_flags
    from evalstream.pipeline.settings import PipelineSettings

    for key in [k for k in os.environ if k.startswith("EVALSTREAM_")]:
        monkeypatch.delenv(key)
    assert JudgeServerSettings(**judge_args([])).max_batch == 1000
    monkeypatch.setenv("EVALSTREAM_JUDGE_MAX_BATCH", "7")
    assert JudgeServerSettings(**judge_args([])).max_batch == 7
    assert JudgeServerSettings(
        **judge_args(["--max-batch", "9", "--judge", "x:y", "--grace", "1.5"])
    ).model_dump(include={"max_batch", "name", "grace_s"}) == {"max_batch": 9, "name": "x:y", "grace_s": 1.5}

    parser, pipeline, kafka = pipeline_flags()
    args, beam = parser.parse_known_args(["--no-transactions", "--bootstrap", "h:1", "--streaming_thing=1"])
    assert PipelineSettings(**pipeline.explicit(args)).transactional is False
    assert kafka.explicit(args) == {"bootstrap": "h:1"}
    assert beam == ["--streaming_thing=1"]

    exporter, kafka_settings = exporter_args(
        [
            "--label-cap",
            "model=3",
            "--allow-label",
            "route=chat",
            "--allow-label",
            "route=search",
            "--drift-bucket",
            "120",
        ]
    )
    assert exporter.label_caps == {"model": 3}
    assert exporter.label_allow == {"route": ["chat", "search"]}
    assert exporter.drift_bucket_s == 120
    assert kafka_settings.bootstrap == "127.0.0.1:9092"
    with pytest.raises(SystemExit):  # argparse: a bad value names the flag
        judge_args(["--port", "eighty"])


def test_every_flag_help_names_its_variable():
    from evalstream.judges.server import flags

    parser, judge = flags()
    text = parser.format_help()
    for field in judge.names:
        assert re.search(rf"EVALSTREAM_JUDGE_{field.upper()}\b", text), field
