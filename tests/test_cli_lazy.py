"""``evalstream --help`` lists every command without importing what the commands use."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

from typer.testing import CliRunner

from evalstream.cli.app import LAZY_COMMANDS, app

HEAVY = ("evalstream.evaluation.calibration", "kafka", "apache_beam", "numpy", "pydantic", "grpc")


def test_each_lazy_summary_is_the_first_line_of_its_shells_docstring():
    for name, lazy in LAZY_COMMANDS.items():
        module, _, attr = lazy.target.partition(":")
        doc = inspect.getdoc(getattr(importlib.import_module(module), attr)) or ""
        assert lazy.summary == doc.splitlines()[0], f"evalstream {name}: the summary in cli/app.py differs"


def test_help_imports_no_command_module():
    code = (
        "import sys, json\n"
        "from evalstream.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(done.stderr.strip().splitlines()[-1])
    assert "replay" in done.stdout and "report" in done.stdout
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY)
    assert heavy == []


def test_a_lazy_command_loads_when_asked_for_its_help():
    result = CliRunner().invoke(app, ["report", "--help"])
    assert result.exit_code == 0, result.output
    assert "--judgements" in result.output
    result = CliRunner().invoke(app, ["redrive", "--no-such-flag"])
    assert result.exit_code == 2
    assert "No such option" in result.output
