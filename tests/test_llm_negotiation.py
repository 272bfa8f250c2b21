"""The LLM judge against endpoints that are not OpenAI (issue 17), reproduced on the replay server in
its own process: a logprob estimate that disagrees with the chosen label, per-dimension failures,
structured-output negotiation, re-asks that differ, model checks, non-JSON bodies, adaptive
concurrency. The same cases against a real llama.cpp server are in ``test_llm_interop.py``.
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from evalstream.evaluation.datasets import read_xstest
from evalstream.judges.base import JudgeInput
from evalstream.judges.concurrency import AdaptiveLimit, SlotTimeout
from evalstream.judges.llm import LLMJudge, LLMJudgeSettings, RetryPolicy, Vote, combine_votes
from evalstream.judges.llm_http import model_matches
from evalstream.judges.servicer import ServerMetrics, to_response
from evalstream.llm_replay import FAULT_HEADER
from evalstream.llm_replay.replies import SPLIT_CHOSEN_P, SPLIT_OTHER_P, split_logprobs
from evalstream.local.llm_replay import ReplayProcess, start_replay_server
from evalstream.wire.dimensions import Dimension, RefusalLabel

FAST = RetryPolicy(
    deadline_s=10.0, attempt_timeout_s=3.0, max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05
)


def item(item_id: str, prompt: str, response: str) -> JudgeInput:
    return JudgeInput(item_id=item_id, model="m", messages=(("user", prompt),), response=response)


class Recorder(httpx.BaseTransport):
    """A real HTTP transport that keeps each request body it sends (to see what the judge asked)."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self.bodies: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            with self._lock:
                self.bodies.append(json.loads(request.read()))
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayProcess]:
    with start_replay_server(["--datasets", "xstest"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def llama_like() -> Iterator[ReplayProcess]:
    """Takes ``json_object`` (with or without a schema) only, and answers 500 naming
    ``response_format`` for ``json_schema``, as llama-cpp-python 0.3.36's server does."""
    with start_replay_server(["--datasets", "xstest", "--formats", "json_object"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def xstest(shared_data: Path) -> list[tuple[JudgeInput, str]]:
    records = random.Random(17).sample([r for r in read_xstest(shared_data) if r.gpt4_label], 6)
    return [(item(r.prompt_id, r.prompt, r.completion), r.gpt4_label) for r in records]


def judge(server: ReplayProcess, **overrides: Any) -> LLMJudge:
    transport = overrides.pop("transport", None)
    settings = LLMJudgeSettings(base_url=server.base_url, model="gpt-4", **overrides)
    return LLMJudge(settings, policy=FAST, transport=transport)


def stats(server: ReplayProcess) -> dict[str, int]:
    counters: dict[str, int] = httpx.get(f"{server.url}/v1/replay/stats").json()["counters"]
    return counters


# ---- 1. the recorded logprob pair (issue 17, defect 1)


def test_a_logprob_estimate_that_prefers_a_label_no_vote_chose_decides_instead_of_crashing() -> None:
    """llama.cpp's reply chose full_refusal at 0.3097 while listing full_compliance at 0.3179: the
    majority rule looked for a vote with the winning label, found none, and raised StopIteration."""
    vote = Vote(
        model="m",
        label=RefusalLabel.FULL_REFUSAL,
        probs={RefusalLabel.FULL_REFUSAL: SPLIT_CHOSEN_P, RefusalLabel.FULL_COMPLIANCE: SPLIT_OTHER_P},
    )
    decision = combine_votes(Dimension.REFUSAL, [vote])
    assert decision.label == RefusalLabel.FULL_COMPLIANCE and decision.source == "logprobs"
    assert math.isclose(decision.confidence, SPLIT_OTHER_P)


def test_the_split_logprobs_fault_rebuilds_the_recorded_pair() -> None:
    content = json.dumps({"rationale": "no", "label": "full_refusal"})
    tokens = split_logprobs(content)["content"]  # type: ignore[index]
    assert "".join(t["token"] for t in tokens) == content
    (value,) = [t for t in tokens if t["token"].startswith("full_refusal")]
    top = {t["token"]: math.exp(t["logprob"]) for t in value["top_logprobs"]}
    assert top == pytest.approx({'full_compliance"': SPLIT_OTHER_P, 'full_refusal"': SPLIT_CHOSEN_P})


@pytest.mark.slow
def test_logprobs_that_are_not_the_decoding_distribution_are_not_used_and_nothing_is_lost(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    """Every reply carries the recorded pair. Before: the request failed with StopIteration. Now:
    the judge sees a chosen token less likely than an alternative at temperature 0, stops using that
    model's logprobs, and decides every item by agreement across samples."""
    with judge(replay, extra_headers={FAULT_HEADER: "split_logprobs"}) as j:
        outcomes = j.judge_batch([it for it, _ in xstest], frozenset({"refusal"}))
        totals = j.totals()
    assert [o.judgements[0].label for o in outcomes] == [label for _, label in xstest]
    assert {o.judgements[0].confidence_source for o in outcomes} == {"agreement"}
    assert all(not o.error and not o.dimension_errors for o in outcomes)
    assert totals["confidence.agreement"] == len(xstest) and "errors.internal" not in totals


# ---- 3. failures per dimension (defect 3)


@pytest.mark.slow
def test_a_failed_dimension_is_reported_beside_the_answered_one_and_on_the_wire(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    """XSTest items have recorded refusal verdicts and no quality ones: refusal is judged, quality is
    refused by the server (404). Before, the item carried no error and the wire dropped the reason."""
    it, label = xstest[0]
    unknown = item("u", "never recorded", "nor this")
    with judge(replay, logprobs=False) as j:
        partial, failed = j.judge_batch([it, unknown], frozenset({"refusal", "quality"}))
    assert [x.label for x in partial.judgements] == [label] and partial.error == ""
    assert [(f.dimension, f.error_type) for f in partial.dimension_errors] == [("quality", "rejected")]
    assert "no recorded gpt-4 verdict for this quality item" in partial.dimension_errors[0].error
    # nothing answered: the item's error names both dimensions, each failure is listed
    assert failed.judgements == () and failed.error_type == "rejected"
    assert failed.error.startswith("quality: ") and "; refusal: " in failed.error
    assert sorted(f.dimension for f in failed.dimension_errors) == ["quality", "refusal"]

    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, "llm-v1:gpt-4")
    metrics.outcomes([partial, failed])
    wire = to_response([partial, failed], judge="llm-v1:gpt-4", tier=2, latency_ms_per_item=1.0)
    got = wire.results[0]
    assert [(e.dimension, e.error_type) for e in got.dimension_errors] == [("quality", "rejected")]
    assert got.judgements[0].confidence_source == "agreement"
    assert got.extra["refusal.confidence_source"] == "agreement" and got.extra["refusal.agreement"] == "3/3"
    assert len(wire.results[1].dimension_errors) == 2
    labels = {"judge": "llm-v1:gpt-4", "dimension": "quality", "error_type": "rejected"}
    assert registry.get_sample_value("evalstream_judge_dimension_errors_total", labels) == 2.0
    labels = {"judge": "llm-v1:gpt-4", "dimension": "refusal", "confidence_source": "agreement"}
    assert registry.get_sample_value("evalstream_judge_judgements_total", labels) == 1.0


# ---- 2. structured-output negotiation (defect 2)


@pytest.mark.slow
def test_auto_finds_the_dialect_with_one_refused_request_and_no_breaker_count(
    llama_like: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    registry = CollectorRegistry()
    before = stats(llama_like)
    recorder = Recorder()
    with judge(llama_like, logprobs=False, max_concurrency=4, min_concurrency=4, transport=recorder) as j:
        j.register_metrics(registry)
        outcomes = j.judge_batch([it for it, _ in xstest], frozenset({"refusal"}))
        assert j.dialect == "json_object_schema"
        totals = j.totals()
    after = stats(llama_like)
    assert [o.judgements[0].label for o in outcomes] == [label for _, label in xstest]
    assert after.get("status.500", 0) - before.get("status.500", 0) == 1  # one probe, not one per call
    assert totals["format_refusals"] == 1 and totals.get("retries", 0) == 0
    sample = {"judge": "llm-v1:gpt-4", "endpoint": f"{llama_like.base_url}/chat/completions"}
    assert registry.get_sample_value("evalstream_judge_circuit_consecutive_failures", sample) == 0.0
    assert registry.get_sample_value("evalstream_judge_circuit_state", {**sample, "state": "closed"}) == 1.0
    formats = [b.get("response_format", {}) for b in recorder.bodies]
    assert formats[0]["type"] == "json_schema"
    assert all(f == {"type": "json_object", "schema": formats[1]["schema"]} for f in formats[1:])
    assert formats[1]["schema"]["properties"]["label"]["enum"] == [str(lab) for lab in RefusalLabel]


@pytest.mark.slow
def test_a_fixed_dialect_the_endpoint_refuses_is_an_item_error_that_names_the_setting(
    llama_like: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    before = stats(llama_like)
    with judge(llama_like, logprobs=False, response_format="json_schema", breaker_failures=2) as j:
        outcomes = j.judge_batch([it for it, _ in xstest[:4]], frozenset({"refusal"}))
        totals = j.totals()
        breaker = j._client.breaker
        assert breaker is not None and breaker.snapshot().consecutive_failures == 0
    assert {o.error_type for o in outcomes} == {"format_unsupported"}
    assert "EVALSTREAM_LLM_RESPONSE_FORMAT=json_schema" in outcomes[0].error
    assert "Input should be 'text' or 'json_object'" in outcomes[0].error
    assert totals.get("retries", 0) == 0
    assert stats(llama_like).get("status.500", 0) - before.get("status.500", 0) == 4  # one each, no retry


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["json_object", "none"])
def test_dialects_that_do_not_enforce_the_schema_put_it_in_the_prompt(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]], dialect: str
) -> None:
    recorder = Recorder()
    it, label = xstest[1]
    with judge(replay, logprobs=False, fallback_samples=1, response_format=dialect, transport=recorder) as j:
        (out,) = j.judge_batch([it], frozenset({"refusal"}))
    assert [x.label for x in out.judgements] == [label]
    (body,) = recorder.bodies
    assert body.get("response_format") == ({"type": "json_object"} if dialect == "json_object" else None)
    assert '"enum":["full_compliance","full_refusal","partial_refusal"]' in body["messages"][0]["content"]


# ---- 4. re-asks differ (defect 4)


@pytest.mark.slow
def test_a_re_ask_is_not_an_identical_repeat(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    recorder = Recorder()
    it, label = xstest[2]
    with judge(
        replay,
        logprobs=False,
        fallback_samples=1,
        extra_headers={FAULT_HEADER: "schema:1"},
        transport=recorder,
    ) as j:
        (out,) = j.judge_batch([it], frozenset({"refusal"}))
        assert j.totals()["reasks"] == 1
    assert [x.label for x in out.judgements] == [label]
    first, again = recorder.bodies
    assert first["temperature"] == 0 and "seed" not in first
    assert again["seed"] == 1 and again["temperature"] > 0
    assert first["messages"] == again["messages"]  # the same question, asked so that it may differ


# ---- 5. model checks and non-JSON bodies (defect 7)


def test_a_reply_from_another_model_does_not_match() -> None:
    served = {"gpt-3.5-turbo-0613": ("chatgpt",)}
    assert model_matches("gpt-4o", "gpt-4o-2024-08-06", None)  # a dated version
    assert model_matches("chatgpt", "gpt-3.5-turbo-0613", served)  # a listed alias
    assert model_matches("gpt-4", "", None)  # the reply does not say
    assert not model_matches("gpt-4", "smollm2", served)
    assert not model_matches("gpt-4", "gpt-3.5-turbo-0613", served)


@pytest.mark.slow
def test_an_html_page_is_reported_with_its_content_type_and_first_bytes_and_not_retried(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    with judge(replay, logprobs=False, fallback_samples=1, extra_headers={FAULT_HEADER: "html"}) as j:
        (out,) = j.judge_batch([xstest[0][0]], frozenset({"refusal"}))
        assert j.totals().get("retries", 0) == 0
    assert out.error_type == "not_an_api"
    assert "content-type text/html; charset=utf-8" in out.error and "<!DOCTYPE html><html>" in out.error


# ---- 6. adaptive concurrency (defect 6)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_concurrency_limit_grows_while_latency_holds_and_halves_on_overload() -> None:
    limit = AdaptiveLimit(low=1, high=8, clock=FakeClock())
    closing = threading.Event()
    for _ in range(20):  # steady latency: one more slot per `limit` good calls
        limit.acquire(1.0, closing).done(latency_s=1.0)
    grown = limit.snapshot().limit
    assert 5 < grown <= 8
    for _ in range(5):  # three times the best latency: the queue is growing, the limit holds (while the
        limit.acquire(1.0, closing).done(latency_s=3.0)  # best drifts up to meet it: ``_BASELINE_DECAY``)
    assert limit.snapshot().limit == grown
    limit.acquire(1.0, closing).overloaded()  # a timeout or a 429
    assert limit.snapshot().limit == pytest.approx(grown / 2)
    for _ in range(5):
        limit.acquire(1.0, closing).overloaded()
    assert limit.snapshot().limit == 1.0 and limit.snapshot().overloads == 6


def test_a_caller_waits_for_a_slot_no_longer_than_its_deadline() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(low=1, high=1, clock=clock)
    closing = threading.Event()
    held = limit.acquire(10.0, closing)
    clock.now = 10.0
    with pytest.raises(SlotTimeout, match="1 in flight, limit 1"):
        limit.acquire(10.0, closing)
    held.done()
    limit.acquire(20.0, closing).done()


@pytest.mark.slow
def test_timeouts_halve_the_concurrency_and_the_judge_keeps_answering(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    policy = RetryPolicy(
        deadline_s=6, attempt_timeout_s=0.3, max_attempts=4, backoff_initial_s=0.01, backoff_max_s=0.02
    )
    settings = LLMJudgeSettings(
        base_url=replay.base_url,
        model="gpt-4",
        logprobs=False,
        fallback_samples=1,
        min_concurrency=4,
        max_concurrency=4,
        extra_headers={FAULT_HEADER: "hang:1"},  # each call's first attempt times out
    )
    with LLMJudge(settings, policy=policy) as j:
        outcomes = j.judge_batch([it for it, _ in xstest[:4]], frozenset({"refusal"}))
        snap = j._client.limit.snapshot()
    assert [o.judgements[0].label for o in outcomes] == [label for _, label in xstest[:4]]
    assert snap.overloads == 4  # each timeout halved the limit (the unit test above shows by how much)
