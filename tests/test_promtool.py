"""deploy/prometheus: the config, the rules and their promtool tests, checked by the real promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from evalstream.local.prometheus import DEFAULT_TARGETS, PROMETHEUS_DIR, render_config, rule_files

from .exported import exported_names

TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: apt-get install prometheus (bash .ci/run does it)")
    return path


def _run(*cmd: str | Path) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_committed_config_is_the_generated_one_and_valid(promtool):
    committed = PROMETHEUS_DIR / "prometheus.yml"
    assert committed.read_text() == render_config(DEFAULT_TARGETS), (
        "deploy/prometheus/prometheus.yml differs from "
        "evalstream.local.prometheus.render_config(DEFAULT_TARGETS); "
        "regenerate it"
    )
    out = _run(promtool, "check", "config", committed)
    assert f"{len(rule_files())} rule files found" in out


def test_generated_config_for_other_targets_is_valid(promtool, tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(
        render_config(
            {
                "evalstream-exporter": ["127.0.0.1:40001"],
                "evalstream-judges": ["127.0.0.1:40002", "127.0.0.1:40003"],
            },
            rules=[str(p) for p in rule_files()],
            scrape_interval_s=1,
            evaluation_interval_s=1,
        )
    )
    _run(promtool, "check", "config", config)


def test_rules_are_valid(promtool):
    assert [p.name for p in rule_files()] == ["evalstream-alerts.yml", "evalstream-recording.yml"]
    _run(promtool, "check", "rules", *rule_files())


def test_promtool_rule_tests_pass(promtool):
    assert TESTS, "no promtool tests in deploy/prometheus/tests"
    out = _run(promtool, "test", "rules", *TESTS)
    assert out.count("SUCCESS") == len(TESTS)


def _rules() -> list[dict]:
    return [
        rule
        for path in rule_files()
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def test_every_rule_has_a_promtool_case():
    tested_alerts: set[str] = set()
    tested_exprs: list[str] = []
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            tested_alerts |= {t["alertname"] for t in case.get("alert_rule_test", [])}
            tested_exprs += [t["expr"] for t in case.get("promql_expr_test", [])]
    rules = _rules()
    alerts = {r["alert"] for r in rules if "alert" in r}
    records = {r["record"] for r in rules if "record" in r}
    assert alerts - tested_alerts == set(), "alerts without an alert_rule_test"
    untested = {
        name for name in records if not any(re.search(rf"{re.escape(name)}\b", e) for e in tested_exprs)
    }
    assert untested == set(), "recording rules without a promql_expr_test"


def test_rules_only_use_metrics_someone_exports():
    exported = exported_names()
    used = {name for rule in _rules() for name in re.findall(r"\b(evalstream_[a-z_]+)", rule["expr"])}
    assert used - exported == set(), "rules name metrics no exporter or judge server exports"
