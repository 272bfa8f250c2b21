"""Acceptance: a refusal spike in real traffic pages, as Prometheus and Alertmanager themselves say.

A deployment ``chat-assistant`` (one model, version and route) first serves XSTest v2's completions of
Mistral-7B-Instruct (17% refusals by the human labels), then those of Llama-2-70b-chat with its
original system prompt (78%): a system-prompt change that makes the model refuse. Real processes
judge the traffic (broker, tier-0 rules and tier-1 encoder judges, pipeline, exporter); a real
Prometheus scrapes the exporter with the production rules and sends alerts to a real Alertmanager,
whose webhook receiver is a loopback HTTP server here. The test reads Prometheus's and
Alertmanager's HTTP APIs, never our own code's state.

Time is scaled, the rules are not weakened. The production rules in ``deploy/prometheus/rules/`` are
rendered by ``scale_rules`` with every range selector, offset and ``for:`` multiplied by
``SCALE = 1/120``, and the "per hour" conversion (``* 3600``) by the same factor. So one production
hour lasts 30 s here:

| production (deploy/prometheus/rules)       | this test            |
|--------------------------------------------|----------------------|
| refusal rate over the last hour ``[1h]``   | last 30 s            |
| trailing-day baseline ``[1d] offset 1h``   | last 12 min, offset 30 s |
| at least 50 refusal verdicts an hour       | at least 50 in 30 s  |
| ``for: 15m``                               | 7.5 s                |

Thresholds (twice the baseline, over 5%, 50 verdicts) are unchanged, and so are absolute times that
are not windows (the 60 s lag target, the 120 s stall limits). The alert must be firing within one
scaled hour plus its ``for`` plus ``PIPELINE_ALLOWANCE_S`` (pipeline, exporter, scrape and rule
evaluation) of the switch; in production the same rules page within 1h15m of such a switch, and
sooner the steeper the jump.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kafka import KafkaProducer

from evalstream.evaluation.datasets import XSTestRecord, read_xstest
from evalstream.local import alertmanager
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.prometheus import PrometheusServer, render_config, rule_files
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import wait_until
from evalstream.tools.replay import RateLimiter, build_event
from evalstream.wire import topics
from evalstream.wire.contract import now_utc
from evalstream.wire.dimensions import RefusalLabel

from .observed_stack import ObservedStack, start_observed_stack

ALERT = "EvalstreamRefusalSpike"
DEPLOYMENT = {"model": "chat-assistant", "model_version": "prod", "route": "chat"}
BEFORE, AFTER = "mistralinstruct", "llama2orig"

#: Test time per production time: one production hour lasts 30 s.
SCALE = 1 / 120
HOUR_S = 3600 * SCALE
FOR_S = 15 * 60 * SCALE
#: Pipeline micro-batch, exporter flush, scrape and rule evaluation between an event and its alert.
PIPELINE_ALLOWANCE_S = 20.0
RATE = 6.0  # events per second: 50 refusal verdicts within a scaled hour need more than 1.7/s
BEFORE_S = 45.0  # a scaled hour and a half of the old behaviour: the baseline's history

_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
_DURATION = r"(?:\d+(?:ms|[smhdwy]))+"


def duration_ms(text: str) -> int:
    """A Prometheus duration (``1h30m``, ``500ms``) in milliseconds."""
    assert re.fullmatch(_DURATION, text), f"not a Prometheus duration: {text!r}"
    return sum(int(n) * _UNITS_MS[unit] for n, unit in re.findall(r"(\d+)(ms|[smhdwy])", text))


def _scaled(text: str, factor: float) -> str:
    return f"{max(1, round(duration_ms(text) * factor))}ms"


def scale_expr(expr: str, factor: float) -> str:
    """PromQL with every range (``[1h]``, ``[1h:1m]``) and ``offset`` scaled, and ``* 3600`` too."""
    expr = re.sub(
        rf"\[({_DURATION})(?::({_DURATION})?)?\]",
        lambda m: (
            "["
            + _scaled(m.group(1), factor)
            + (f":{_scaled(m.group(2), factor)}" if m.group(2) else (":" if ":" in m.group(0) else ""))
            + "]"
        ),
        expr,
    )
    expr = re.sub(rf"\boffset\s+({_DURATION})", lambda m: f"offset {_scaled(m.group(1), factor)}", expr)
    return re.sub(r"\*\s*3600\b", f"* {3600 * factor:g}", expr)


def scale_rules(text: str, factor: float) -> str:
    """A rule file with its time windows multiplied by ``factor`` (see the module docstring)."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["expr"] = scale_expr(rule["expr"], factor)
            if "for" in rule:
                rule["for"] = _scaled(rule["for"], factor)
    return (
        f"# {factor:g} x the time windows of the production rules; generated by tests/test_alerts_e2e.py\n"
        + (yaml.safe_dump(doc, sort_keys=False))
    )


def scaled_rule_files(out: Path, factor: float = SCALE) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in rule_files():
        target = out / path.name
        target.write_text(scale_rules(path.read_text(), factor))
        written.append(target)
    return written


# --- the scaled rules are the production rules, scaled --------------------------------------------


def test_scaled_rules_are_valid_and_every_window_is_scaled(tmp_path: Path) -> None:
    scaled = scaled_rule_files(tmp_path)
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install Debian's prometheus package"
    command = [promtool, "check", "rules", *map(str, scaled)]
    check = subprocess.run(command, check=False, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    for original, rendered in zip(rule_files(), scaled, strict=True):
        before = yaml.safe_load(original.read_text())["groups"]
        after = yaml.safe_load(rendered.read_text())["groups"]
        for group_before, group_after in zip(before, after, strict=True):
            for a, b in zip(group_before["rules"], group_after["rules"], strict=True):
                name = a.get("alert") or a.get("record")
                assert (b.get("alert") or b.get("record")) == name
                assert b.get("labels") == a.get("labels") and b.get("annotations") == a.get("annotations")
                ranges_a = re.findall(rf"\[({_DURATION})\]|offset ({_DURATION})", a["expr"])
                ranges_b = re.findall(rf"\[({_DURATION})\]|offset ({_DURATION})", b["expr"])
                assert [duration_ms(x or y) * SCALE for x, y in ranges_a] == pytest.approx(
                    [duration_ms(x or y) for x, y in ranges_b], abs=1
                ), name
                if "for" in a:
                    assert duration_ms(b["for"]) == pytest.approx(duration_ms(a["for"]) * SCALE, abs=1)
                # Everything else in the expression (thresholds, names, matchers) is unchanged.
                windows = rf"\[{_DURATION}\]|offset {_DURATION}"
                same_a = re.sub(r"\*\s*3600\b", "* HOUR", re.sub(windows, "W", a["expr"]))
                same_b = re.sub(rf"\*\s*{HOUR_S:g}\b", "* HOUR", re.sub(windows, "W", b["expr"]))
                assert same_a == same_b, name
    spike = next(
        r
        for g in yaml.safe_load((tmp_path / "evalstream-alerts.yml").read_text())["groups"]
        for r in g["rules"]
        if r.get("alert") == ALERT
    )
    assert "* 30 >= 50" in spike["expr"] and spike["for"] == "7500ms"


def test_alertmanager_and_prometheus_configs_are_valid(tmp_path: Path) -> None:
    amtool, promtool = shutil.which("amtool"), shutil.which("promtool")
    assert amtool, "amtool missing: install Debian's prometheus-alertmanager package"
    assert promtool, "promtool missing: install Debian's prometheus package"
    for name, config in {
        "keep.yml": alertmanager.render_config(),
        "webhook.yml": alertmanager.render_config(webhook_url="http://127.0.0.1:9/hook", group_wait_s=0.5),
    }.items():
        (tmp_path / name).write_text(config)
        check = subprocess.run(
            [amtool, "check-config", str(tmp_path / name)], check=False, capture_output=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    assert "group_wait: 500ms" in (tmp_path / "webhook.yml").read_text()
    prometheus_yml = tmp_path / "prometheus.yml"
    prometheus_yml.write_text(
        render_config({"evalstream-exporter": ["127.0.0.1:9464"]}, rules=[], alertmanagers=["127.0.0.1:9093"])
    )
    check = subprocess.run(
        [promtool, "check", "config", str(prometheus_yml)], check=False, capture_output=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    alerting = yaml.safe_load(prometheus_yml.read_text())["alerting"]
    assert alerting == {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]}


# --- traffic -------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """XSTest completions of one model tag, sent as the one deployment, at ``RATE`` per second."""

    bootstrap: str
    topic: str
    run_id: str
    sent: dict[str, list[XSTestRecord]] = field(default_factory=dict)

    def send(self, tag: str, *, seconds: float, stop: threading.Event | None = None) -> None:
        records = read_xstest(models=(tag,))
        random.Random(tag).shuffle(records)
        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        limiter = RateLimiter(rate=RATE)
        started = time.monotonic()
        self.sent[tag] = []
        try:
            for record in records:
                if time.monotonic() - started >= seconds or (stop is not None and stop.is_set()):
                    break
                limiter.wait()
                event = build_event(
                    record, event_id=f"{self.run_id}-{tag}-{record.prompt_id}", event_time=now_utc()
                ).model_copy(update=DEPLOYMENT)
                producer.send(
                    self.topic,
                    key=event.event_id.encode(),
                    value=event.model_dump_json(exclude_none=True).encode(),
                    headers=[(topics.CONTENT_TYPE_HEADER, topics.CONTENT_TYPE_JSON.encode())],
                )
                self.sent[tag].append(record)
            producer.flush(timeout=30)
        finally:
            producer.close(timeout=10)

    def human_refusal_rate(self, tag: str) -> float:
        sent = self.sent[tag]
        return sum(r.final_label is not RefusalLabel.FULL_COMPLIANCE for r in sent) / len(sent)


class Webhook:
    """A loopback HTTP server that keeps every notification Alertmanager posts to it."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        received = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/alerts"

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# --- reading Prometheus and Alertmanager --------------------------------------------------------


def spike_alerts(prom: PrometheusServer) -> list[dict[str, Any]]:
    return [
        a
        for a in prom.alerts()
        if a["labels"].get("alertname") == ALERT and a["labels"].get("model") == DEPLOYMENT["model"]
    ]


def one(prom: PrometheusServer, expr: str, *, at: float | None = None) -> float:
    result = prom.query(expr, time=at)
    assert len(result) == 1, f"{expr} at {at}: {result}"
    return float(result[0]["value"][1])


@pytest.fixture
def stack(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, encoder_artefact: Path, children: list[ChildProcess]
) -> Iterator[tuple[ObservedStack, Webhook]]:
    with ExitStack() as exits:
        webhook = exits.enter_context(Webhook())
        observed = start_observed_stack(
            bootstrap=broker.bootstrap,
            unique=unique,
            log_dir=tmp_path,
            encoder_artefact=encoder_artefact,
            children=children,
            exits=exits,
            rules=scaled_rule_files(tmp_path / "scaled-rules"),
            webhook_url=webhook.url,
        )
        yield observed, webhook


@pytest.mark.slow
@pytest.mark.broker
def test_refusal_spike_fires_in_prometheus_and_reaches_alertmanager(
    stack: tuple[ObservedStack, Webhook], unique: str
) -> None:
    observed, webhook = stack
    prom, am = observed.prometheus, observed.alertmanager
    traffic = Traffic(observed.bootstrap, observed.topics.events, run_id=unique)
    key = ", ".join(f'{k}="{v}"' for k, v in DEPLOYMENT.items())

    # Before: the old behaviour for a scaled hour and a half. No spike, whatever the baseline says.
    traffic.send(BEFORE, seconds=BEFORE_S)
    wait_until(
        lambda: bool(prom.query(f"evalstream:refusal:ratio_rate1h_baseline1d{{{key}}}")),
        timeout=PIPELINE_ALLOWANCE_S + HOUR_S,
        what="the trailing-day refusal baseline of the old behaviour",
    )
    switched_at = time.time()
    baseline = one(prom, f"evalstream:refusal:ratio_rate1h_baseline1d{{{key}}}")
    before_rate = one(prom, f"evalstream:refusal:ratio_rate1h{{{key}}}")
    assert spike_alerts(prom) == []
    assert traffic.human_refusal_rate(BEFORE) < 0.3  # XSTest's labels: about 17%
    assert 0.05 < baseline < 0.35, baseline  # the judges see the same, roughly

    # After: the new system prompt. Prometheus's own alerts API must show the alert pending, then firing.
    stop = threading.Event()
    sender = threading.Thread(target=traffic.send, args=(AFTER,), kwargs={"seconds": 150.0, "stop": stop})
    sender.start()
    states: dict[str, float] = {}
    try:

        def fired() -> bool:
            for alert in spike_alerts(prom):
                states.setdefault(alert["state"], time.time() - switched_at)
            return "firing" in states

        deadline = HOUR_S + FOR_S + PIPELINE_ALLOWANCE_S
        wait_until(fired, timeout=deadline, interval=0.5, what=f"{ALERT} firing in Prometheus")

        # Alertmanager has it (its API), and its receiver was notified (the webhook).
        def in_alertmanager() -> list[dict[str, Any]]:
            return [
                a
                for a in am.alerts()
                if a["labels"].get("alertname") == ALERT and a["labels"].get("model") == DEPLOYMENT["model"]
            ]

        wait_until(lambda: bool(in_alertmanager()), timeout=15, what=f"{ALERT} in Alertmanager's API")
        wait_until(
            lambda: any(
                a["labels"].get("alertname") == ALERT for n in webhook.notifications for a in n["alerts"]
            ),
            timeout=15,
            what=f"{ALERT} posted to the webhook receiver",
        )
    finally:
        stop.set()
        sender.join(30)
    fired_at = switched_at + states["firing"]

    managed = in_alertmanager()[0]
    assert managed["status"]["state"] == "active"
    assert managed["labels"]["severity"] == "page"
    assert {k: managed["labels"][k] for k in DEPLOYMENT} == DEPLOYMENT
    notified = next(
        n for n in webhook.notifications if any(a["labels"]["alertname"] == ALERT for a in n["alerts"])
    )
    assert notified["status"] == "firing" and notified["receiver"] == "evalstream"

    # The refusal series moved: the last (scaled) hour is over twice the old baseline, as humans agree.
    after_rate = one(prom, f"evalstream:refusal:ratio_rate1h{{{key}}}", at=fired_at)
    assert after_rate > 2 * baseline and after_rate > before_rate
    assert traffic.human_refusal_rate(AFTER) > 2 * traffic.human_refusal_rate(BEFORE)  # about 78% vs 17%

    # The quality series moved too: new quality verdicts after the switch, and a different mean score.
    before_window, after_window = f"{round(BEFORE_S)}s", f"{max(1, round(fired_at - switched_at))}s"

    def quality(window: str, at: float) -> tuple[float, float]:
        count = one(prom, f"sum(increase(evalstream_quality_score_count{{{key}}}[{window}]))", at=at)
        total = one(prom, f"sum(increase(evalstream_quality_score_sum{{{key}}}[{window}]))", at=at)
        return count, total / count

    count_before, mean_before = quality(before_window, switched_at)
    count_after, mean_after = quality(after_window, fired_at)
    assert count_before > 50 and count_after > 20, (count_before, count_after)
    print(
        f"\nrefusal rate (judges) {before_rate:.2f} -> {after_rate:.2f}, baseline {baseline:.2f}; "
        f"humans {traffic.human_refusal_rate(BEFORE):.2f} -> {traffic.human_refusal_rate(AFTER):.2f}; "
        f"mean quality {mean_before:.2f} -> {mean_after:.2f}; {ALERT} states {states}"
    )
    assert mean_after != pytest.approx(mean_before, abs=0.05)
    assert states.get("pending", states["firing"]) <= states["firing"] <= deadline
