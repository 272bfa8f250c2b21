"""The LLM judge's API key never shows in logs, metrics, Kafka outputs, gRPC answers, exceptions or reprs.

Real processes: two replay LLM servers, three LLM judge servers (tier 2), the tier-0 judge and the
pipeline, on the session's broker. Recognisable fake keys, each with a random core:

- ``KEY`` reaches judge A through ``EVALSTREAM_LLM_API_KEY_FILE``; the replay server it calls requires
  it and answers with faults (5xx, 429, TCP resets, truncated JSON, a reply without ``choices``, a
  reply outside the verdict schema) and, for items it has no recording of, a verdict whose rationale
  echoes the key verbatim, percent-encoded and in base64, as a careless gateway might. Judge A is the
  pipeline's tier 2, so verdicts and dead letters are written to Kafka.
- ``ECHO_KEY`` reaches judge B through ``EVALSTREAM_LLM_API_KEY``; its replay server answers every item
  with the key (as ``Bearer``, percent-encoded, base64) in place of the label, so each reply is outside
  the schema and the judge logs, retries, fails and reports the reply.
- ``WRONG_KEY`` reaches judge C through the environment; the server of judge A refuses it (401).

Everything the processes print, every ``/metrics`` page, the replay servers' stats, every record the
pipeline wrote (verdicts, dead letters, summaries, audits), every gRPC answer and error, and the reprs
and messages of in-process settings and judges are searched for each key: verbatim, its random core,
percent-encoded, JSON-escaped, and in base64 (standard and URL-safe, at each of the three byte
alignments, of the key, of ``Bearer <key>`` and of ``:<key>``). Positive controls show that each key
did travel (requests were authorised, refused or echoed) and that the search finds every form.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, quote_plus

import grpc
import httpx
import pytest

from evalstream.evaluation.datasets import read_xstest
from evalstream.judges.base import JudgeInput
from evalstream.judges.llm import LLMJudge, LLMJudgeSettings
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.ready import METRICS_READY
from evalstream.tools.replay import EventKind, OutgoingRecord, build_event
from evalstream.v1 import events_pb2, judge_pb2, judge_pb2_grpc, verdict_pb2
from evalstream.wire import topics

from .kafka_helpers import TopicReader
from .real_parts import Topics, judge_server, pipeline, produce, replay_llm, start

pytestmark = pytest.mark.slow


def fake_key(kind: str) -> tuple[str, str]:
    """A recognisable fake key with a random core, and the core; '/', '+', '=' make encodings differ."""
    core = secrets.token_hex(16)
    return f"sk-evalstream-{kind}-{core}/+=", core


KEY, KEY_CORE = fake_key("file")
ECHO_KEY, ECHO_CORE = fake_key("env")
WRONG_KEY, WRONG_CORE = fake_key("wrong")
FAULTS = "503~0.25,500~0.1,429~0.05,reset~0.05,malformed~0.15,envelope~0.05,schema~0.15"


def b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode()


def forms(key: str, core: str) -> dict[str, str]:
    """Every form of ``key`` the search looks for, by name."""
    found = {
        "verbatim": key,
        "core": core,
        "percent": quote(key, safe=""),
        "percent-path": quote(key),
        "form": quote_plus(key),
        "json": json.dumps(key)[1:-1],
    }
    for name, data in (("key", key), ("bearer", f"Bearer {key}"), ("basic", f":{key}")):
        for pad in range(3):  # the part of the encoding that only the key's bytes determine
            raw = b"\0" * pad + data.encode()
            found[f"base64-{name}-{pad}"] = base64.b64encode(raw).decode()[4:-4]
            found[f"base64url-{name}-{pad}"] = base64.urlsafe_b64encode(raw).decode()[4:-4]
    return found


SEARCHED = {
    label: forms(key, core)
    for label, key, core in (
        ("KEY", KEY, KEY_CORE),
        ("ECHO_KEY", ECHO_KEY, ECHO_CORE),
        ("WRONG_KEY", WRONG_KEY, WRONG_CORE),
    )
}


def leaks(where: str, text: str | bytes) -> list[str]:
    """``where: KEY as base64-bearer-1`` for every form of every key found in ``text``."""
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    return [
        f"{where}: {label} as {name}"
        for label, named in SEARCHED.items()
        for name, form in named.items()
        if form.encode() in data
    ]


def test_the_search_finds_every_form_of_every_key() -> None:
    for key in (KEY, ECHO_KEY, WRONG_KEY):
        for sample in (
            f"x {key} y",
            f"api_key={quote(key, safe='')}",
            f"Authorization: Basic {b64(':' + key)}",
            f"token: {base64.urlsafe_b64encode(('xx' + key).encode()).decode()}",
            json.dumps({"k": b64(f"Bearer {key}")}),
        ):
            assert leaks("sample", sample), sample
    assert not leaks("clean", "sk-evalstream-file-*** Bearer *** key=***")


def _echo_verdict(key: str) -> str:
    """A verdict that fits the schema, its rationale echoing the key three ways."""
    rationale = f"Authorization: Bearer {key}; key={quote(key, safe='')}; basic={b64(key)}"
    return json.dumps({"rationale": rationale, "label": "full_compliance"})


def _echo_label(key: str) -> str:
    """A reply outside the schema: the key, three ways, where the label belongs."""
    return json.dumps({"rationale": "", "label": f"Bearer {key} {quote_plus(key)} {b64('Bearer ' + key)}"})


def _llm_env(base_url: str, **key: str) -> dict[str, str]:
    return {
        "EVALSTREAM_LLM_BASE_URL": base_url,
        "EVALSTREAM_LLM_MODEL": "gpt-4",
        "EVALSTREAM_LLM_DEADLINE_S": "5",
        "EVALSTREAM_LLM_ATTEMPT_TIMEOUT_S": "2",
        "EVALSTREAM_LLM_MAX_ATTEMPTS": "3",
        "EVALSTREAM_LLM_MAX_CONCURRENCY": "16",
        **key,
    }


def _item(item_id: str, prompt: str, response: str) -> judge_pb2.JudgeItem:
    return judge_pb2.JudgeItem(
        item_id=item_id,
        event=events_pb2.LLMEvent(
            event_id=item_id,
            model="m",
            messages=[events_pb2.Message(role="user", content=prompt)],
            response=response,
        ),
    )


def _judge(address: str, items: list[judge_pb2.JudgeItem], dimensions: list[str]) -> judge_pb2.JudgeResponse:
    with grpc.insecure_channel(address) as channel:
        stub = judge_pb2_grpc.JudgeServiceStub(channel)
        response: judge_pb2.JudgeResponse = stub.Judge(
            judge_pb2.JudgeRequest(items=items, dimensions=dimensions), timeout=120
        )
        return response


def _metrics(child: ChildProcess) -> str:
    address = child.await_line(METRICS_READY)["address"]
    return httpx.get(f"http://{address}/metrics", timeout=10).text


def test_api_keys_never_leave_the_judge_in_any_form(
    broker: EmbeddedBroker,
    unique: str,
    tmp_path: Path,
    children: list[ChildProcess],
    shared_data: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_file = tmp_path / "llm.key"
    key_file.write_text(KEY + "\n")
    records = [r for r in read_xstest(shared_data) if r.gpt4_label]
    # Recorded items get recorded verdicts (or faults); the others, edited, get the fallback reply.
    recorded = records[:40]
    unrecorded = [replace(r, completion=f"{r.completion}\n\n(edited)") for r in records[40:60]]

    faulty = replay_llm(
        "llm-faulty", tmp_path, "--datasets", "xstest", "--api-key-file", str(key_file),
        "--faults", FAULTS, "--fault-seed", "3", "--retry-after-s", "0.01", "--fallback", "content",
    )  # fmt: skip
    faulty.env["EVALSTREAM_LLM_REPLAY_FALLBACK_CONTENT"] = _echo_verdict(KEY)
    faulty_url = start(children, faulty)
    echo = replay_llm("llm-echo", tmp_path, "--datasets", "xstest", "--fallback", "content")
    echo.env["EVALSTREAM_LLM_REPLAY_FALLBACK_CONTENT"] = _echo_label(ECHO_KEY)
    echo_url = start(children, echo)

    judge_a = judge_server(
        "judge-llm-a", "llm", tmp_path, "--metrics-port", "0",
        # No circuit breaker: every call meets the faults and the retries; none fails fast unheard.
        env=_llm_env(
            f"{faulty_url}/v1", EVALSTREAM_LLM_API_KEY_FILE=str(key_file), EVALSTREAM_LLM_BREAKER_FAILURES="0"
        ),
    )  # fmt: skip
    judge_b = judge_server(
        "judge-llm-b", "llm", tmp_path, "--metrics-port", "0",
        env=_llm_env(f"{echo_url}/v1", EVALSTREAM_LLM_API_KEY=ECHO_KEY),
    )  # fmt: skip
    judge_c = judge_server(
        "judge-llm-c", "llm", tmp_path, "--metrics-port", "0",
        env=_llm_env(f"{faulty_url}/v1", EVALSTREAM_LLM_API_KEY=WRONG_KEY),
    )  # fmt: skip
    a, b, c = (start(children, j) for j in (judge_a, judge_b, judge_c))
    tier0 = start(children, judge_server("judge-tier0", "rules", tmp_path))

    cascade = tmp_path / "cascade.yaml"
    cascade.write_text(
        "version: secrets-test\n"
        "dimensions:\n"
        "  refusal: {tiers: [{tier: 0, threshold: .inf}, {tier: 2, threshold: 0.0}]}\n"
        "  format: {tiers: [{tier: 0, threshold: 0.0}]}\n"
    )
    t = Topics(unique)
    t.create(broker.bootstrap)
    flags = ["--cascade-config", str(cascade), "--judge-deadline-s", "60"]
    pipe = pipeline(broker.bootstrap, {0: tier0, 2: a}, t, unique, tmp_path, *flags)
    start(children, pipe)

    texts: list[tuple[str, str | bytes]] = []
    reader = TopicReader(broker.bootstrap, [t.verdicts, t.dead, t.summaries, t.audit])
    try:
        now = datetime.now(UTC)
        events = [
            build_event(r, event_id=f"{unique}-{i}", event_time=now)
            for i, r in enumerate(recorded + unrecorded)
        ]
        produce(
            broker.bootstrap,
            t.events,
            [
                OutgoingRecord(
                    kind=EventKind.GOOD,
                    key=e.event_id.encode(),
                    value=e.model_dump_json().encode(),
                    content_type=topics.CONTENT_TYPE_JSON,
                )
                for e in events
            ],
        )
        reader.until(
            lambda r: len(r[t.verdicts]) + len(r[t.dead]) >= len(events), timeout=180, what="pipeline outputs"
        )

        # Straight to the judge processes over gRPC: the answers the pipeline reduces to verdicts.
        echoed = [_item(f"echo{i}", r.prompt, r.completion) for i, r in enumerate(unrecorded[:12])]
        answer_a = _judge(a, echoed, ["refusal"])
        answer_b = _judge(b, echoed, ["refusal"])
        answer_c = _judge(c, echoed, ["refusal"])
        with pytest.raises(grpc.RpcError) as refused:
            _judge(a, echoed, ["no-such-dimension"])
        texts += [("grpc a", str(answer_a)), ("grpc b", str(answer_b)), ("grpc c", str(answer_c))]
        texts += [("grpc error", str(refused.value)), ("grpc error details", str(refused.value.details()))]
        for child in (judge_a, judge_b, judge_c):
            texts.append((f"{child.name} /metrics", _metrics(child)))
        stats = {
            url: httpx.get(f"{url}/v1/replay/stats", timeout=10).json() for url in (faulty_url, echo_url)
        }
        texts += [(f"stats {url}", json.dumps(body)) for url, body in stats.items()]

        # In-process: the same client, its logs (httpx and httpcore at DEBUG too), outcomes and reprs.
        for name in ("evalstream", "httpx", "httpcore"):
            caplog.set_level(logging.DEBUG, logger=name)
        inputs = [
            JudgeInput(item_id=f"p{i}", model="m", messages=(("user", r.prompt),), response=r.completion)
            for i, r in enumerate(recorded[:6] + unrecorded[:6])
        ]
        for settings in (
            LLMJudgeSettings(api_key=KEY, base_url=f"{faulty_url}/v1", deadline_s=5, max_attempts=3),  # type: ignore[arg-type]
            LLMJudgeSettings(
                api_key_file=key_file, base_url=f"{faulty_url}/v1", deadline_s=5, max_attempts=3
            ),
            LLMJudgeSettings(api_key=ECHO_KEY, base_url=f"{echo_url}/v1", extra_headers={"x-trace": "1"}),  # type: ignore[arg-type]
            LLMJudgeSettings(api_key=WRONG_KEY, base_url=f"{faulty_url}/v1"),  # type: ignore[arg-type]
        ):
            with LLMJudge(settings) as judge:
                outcomes = judge.judge_batch(inputs, frozenset({"refusal"}))
                texts += [("settings repr", repr(settings)), ("settings str", str(settings))]
                texts += [
                    ("settings json", settings.model_dump_json()),
                    ("settings dump", str(settings.model_dump())),
                ]
                texts += [("judge repr", repr(judge)), ("judge totals", str(judge.totals()))]
                texts += [("outcomes", repr(outcomes))]
        texts += [("caplog", caplog.text), *(("log record", r.getMessage()) for r in caplog.records)]
        assert "HTTP Request: POST" in caplog.text
        reader.settle(1.5)
    finally:
        reader.close()
    for child in reversed(children):  # stopped now, so their shutdown lines are in the logs too
        child.stop(grace=15)
    texts += [(f"{child.name} log", child.output()) for child in children]
    for topic, messages in reader.records.items():
        for m in messages:
            texts.append((f"{topic} value", m.value))
            texts.append((f"{topic} key", m.key or b""))
            texts += [(f"{topic} header {name}", value) for name, value in m.headers or ()]

    # Positive controls: each key travelled, and what came back was there to leak.
    counters = stats[faulty_url]["counters"]
    assert counters.get("status.200", 0) > 0 and counters.get("status.401", 0) > 0, counters
    assert sum(v for k, v in counters.items() if k.startswith("fault.")) > 0, counters
    assert stats[echo_url]["counters"].get("status.200", 0) > 0
    verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
    dead = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]]
    assert len(verdicts) + len(dead) == len(events) and verdicts and dead, (len(verdicts), len(dead))
    found = [leak for where, text in texts for leak in leaks(where, text)]
    assert not found, f"API key leaked into {sorted({f.split(': ')[0] for f in found})}: {found[:8]}"
    rationales = [j.rationale for r in answer_a.results for j in r.judgements]
    assert rationales and all(j == "Authorization: Bearer ***; key=***; basic=***" for j in rationales), (
        rationales
    )
    assert all(r.error_type == "unparseable_reply" and "***" in r.error for r in answer_b.results), answer_b
    assert all(r.error_type == "auth" for r in answer_c.results), answer_c
