"""Circuit breakers: the state machine on a fake clock, the pipeline's judge client against a real gRPC
judge server that is down and then up, and the LLM judge's breaker with its metrics."""

from __future__ import annotations

import argparse
import json
import pickle
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from evalstream.judges.base import JudgeInput
from evalstream.judges.llm import LLMJudge, LLMJudgeSettings
from evalstream.judges.llm import RetryPolicy as LLMRetryPolicy
from evalstream.judges.registry import create_judge
from evalstream.judges.server import JudgeServer, create_server
from evalstream.judges.settings import JudgeServerSettings
from evalstream.pipeline.judge_cascade import SharedBreakers
from evalstream.pipeline.judge_client import (
    JudgeClient,
    JudgeRejected,
    JudgeUnavailable,
    RetryPolicy,
    tier_policy,
)
from evalstream.runtime.circuit import BreakerPolicy, CircuitBreaker, CircuitState
from evalstream.runtime.procs import free_port, wait_until
from evalstream.v1 import events_pb2, judge_pb2


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------ state machine


def breaker(clock: FakeClock, failures: int = 3, open_s: float = 10.0, probes: int = 1) -> CircuitBreaker:
    policy = BreakerPolicy(failure_threshold=failures, open_s=open_s, half_open_probes=probes)
    return CircuitBreaker("dep", policy, clock=clock)


def test_consecutive_failures_open_the_circuit_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    b.record_success()  # the count starts again
    for _ in range(2):
        b.record_failure()
    assert b.state is CircuitState.CLOSED and b.allow()
    b.record_failure()
    assert b.state is CircuitState.OPEN
    assert not b.allow() and not b.allow()
    snap = b.snapshot()
    assert snap.rejected == 2 and snap.consecutive_failures == 3 and snap.retry_in_s == 10.0
    assert snap.transitions[CircuitState.OPEN] == 1


def test_after_the_cool_down_one_probe_decides() -> None:
    clock = FakeClock()
    b = breaker(clock, failures=1, open_s=10.0)
    b.record_failure()
    clock.now += 9.9
    assert not b.allow() and b.snapshot().retry_in_s == pytest.approx(0.1)
    clock.now += 0.1
    assert b.state is CircuitState.HALF_OPEN
    assert b.allow()  # the probe
    assert not b.allow()  # everyone else still fails fast
    b.record_failure()  # the probe failed: open again, for a whole new cool-down
    assert b.state is CircuitState.OPEN and b.snapshot().retry_in_s == 10.0
    clock.now += 10.0
    assert b.allow()
    b.record_success()
    assert b.state is CircuitState.CLOSED and b.allow() and b.allow()
    t = b.snapshot().transitions
    assert (t[CircuitState.OPEN], t[CircuitState.HALF_OPEN], t[CircuitState.CLOSED]) == (2, 2, 1)


def test_late_reports_from_calls_started_before_the_opening_are_ignored() -> None:
    clock = FakeClock()
    b = breaker(clock, failures=1, open_s=5.0)
    b.record_failure()
    b.record_failure()  # a slow call that was already running
    b.record_success()  # ... or one that got through
    assert b.state is CircuitState.OPEN and b.snapshot().retry_in_s == 5.0


def test_a_probe_that_never_reports_frees_its_slot_after_the_cool_down() -> None:
    clock = FakeClock()
    b = breaker(clock, failures=1, open_s=5.0, probes=2)
    b.record_failure()
    clock.now += 5.0
    assert b.allow() and b.allow() and not b.allow()  # two probes, both lost
    clock.now += 5.0
    assert b.allow()


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerPolicy(failure_threshold=0)
    with pytest.raises(ValueError, match="open_s"):
        BreakerPolicy(open_s=-1)
    with pytest.raises(ValueError, match="half_open_probes"):
        BreakerPolicy(half_open_probes=0)


def test_the_breaker_is_safe_across_threads() -> None:
    clock = FakeClock()
    b = breaker(clock, failures=8000)
    threads = [threading.Thread(target=lambda: [b.record_failure() for _ in range(1000)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = b.snapshot()  # every one of the 8,000 failures counted, and the circuit opened once
    assert snap.state is CircuitState.OPEN and snap.consecutive_failures == 8000
    assert snap.transitions[CircuitState.OPEN] == 1


def test_shared_breakers_outlive_a_pickled_pipeline() -> None:
    shared = SharedBreakers(BreakerPolicy(failure_threshold=2))
    first = shared.resolve().get(0, "127.0.0.1:1")
    copy = pickle.loads(pickle.dumps(shared))  # what each micro-batch's DoFn gets
    assert copy.resolve().get(0, "127.0.0.1:1") is first
    assert copy.resolve().get(1, "127.0.0.1:2").policy.failure_threshold == 2


# ------------------------------------------------------------------------------------------ pipeline client


@pytest.fixture
def rules_server_on() -> Iterator[list[JudgeServer]]:
    started: list[JudgeServer] = []
    yield started
    for server in started:
        server.stop(None).wait(5)


def start_rules_server(port: int) -> JudgeServer:
    settings = JudgeServerSettings(port=port)
    server, bound = create_server(settings, create_judge("rules", settings), CollectorRegistry())
    assert bound == port
    server.start()
    return server


def request(*dimensions: str) -> judge_pb2.JudgeRequest:
    event = events_pb2.LLMEvent(
        event_id="e1",
        model="m",
        messages=[events_pb2.Message(role="user", content="How do I kill a Python process?")],
        response="Use kill -9 with the process id.",
    )
    return judge_pb2.JudgeRequest(
        items=[judge_pb2.JudgeItem(item_id="e1", event=event)], dimensions=dimensions
    )


def test_judge_client_fails_fast_while_open_and_closes_on_a_probe_once_the_tier_is_back(
    rules_server_on: list[JudgeServer],
) -> None:
    port = free_port()
    clock = FakeClock()
    b = CircuitBreaker("tier 0", BreakerPolicy(failure_threshold=3, open_s=30.0), clock=clock)
    policy = RetryPolicy(deadline_s=20.0, attempt_timeout_s=1.0, backoff_initial_s=0.01, backoff_max_s=0.02)
    client = JudgeClient(f"127.0.0.1:{port}", tier=0, policy=policy, breaker=b)
    try:
        with pytest.raises(JudgeUnavailable) as first:
            client.judge(request("refusal"))
        # Three refused connections opened the circuit; the call stopped there, not at its 20 s deadline.
        assert first.value.code == "CIRCUIT_OPEN" and client.attempts == 3
        assert "circuit open" in str(first.value) and "next probe in 30.0s" in str(first.value)
        with pytest.raises(JudgeUnavailable) as second:
            client.judge(request("refusal"))
        assert second.value.code == "CIRCUIT_OPEN" and client.attempts == 0  # no RPC at all

        rules_server_on.append(start_rules_server(port))
        with pytest.raises(JudgeUnavailable):
            client.judge(request("refusal"))  # still cooling down: the tier is not asked yet
        answers: list[judge_pb2.JudgeResponse] = []

        def probe_after_cool_down() -> bool:
            clock.now += 30.0
            try:
                answers.append(client.judge(request("refusal")))  # one probe attempt
            except JudgeUnavailable as exc:  # the channel may still be waiting to reconnect (<= 1 s)
                assert exc.code == "CIRCUIT_OPEN"
            return bool(answers)

        wait_until(probe_after_cool_down, timeout=15, interval=0.1, what="a probe to close the circuit")
        assert b.state is CircuitState.CLOSED and client.attempts == 1
        assert [j.dimension for j in answers[0].results[0].judgements] == ["refusal"]
        with pytest.raises(JudgeRejected):
            client.judge(request("no-such-dimension"))  # a refusal is an answer: the tier is up
        assert b.state is CircuitState.CLOSED and b.snapshot().consecutive_failures == 0
    finally:
        client.close()


def test_judge_client_without_a_breaker_waits_out_its_deadline() -> None:
    policy = RetryPolicy(deadline_s=0.6, attempt_timeout_s=0.2, backoff_initial_s=0.01, backoff_max_s=0.05)
    client = JudgeClient(f"127.0.0.1:{free_port()}", tier=0, policy=policy)
    try:
        with pytest.raises(JudgeUnavailable) as exc:
            client.judge(request("refusal"))
        assert exc.value.code == grpc.StatusCode.UNAVAILABLE.name and client.attempts > 3
    finally:
        client.close()


# ------------------------------------------------------------------------------------------ LLM judge


def item(item_id: str) -> JudgeInput:
    return JudgeInput(item_id=item_id, model="m", messages=(("user", "p"),), response="r")


class Endpoint:
    """An OpenAI-compatible endpoint in-process (an httpx transport): fails with ``status`` or answers."""

    def __init__(self) -> None:
        self.status = 503
        self.requests = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.status != 200:
            return httpx.Response(self.status, json={"error": {"message": f"injected {self.status}"}})
        content = json.dumps({"rationale": "answers", "label": "full_compliance"})
        return httpx.Response(
            200,
            json={
                "choices": [{"message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5},
            },
        )


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"judge": "llm-v1:gpt-4", "endpoint": URL, **labels})


URL = "http://llm.invalid/v1/chat/completions"


def test_llm_breaker_opens_on_a_5xx_burst_fails_fast_and_closes_with_metrics() -> None:
    clock = FakeClock()
    endpoint = Endpoint()
    settings = LLMJudgeSettings(
        base_url="http://llm.invalid/v1",
        check_model=False,
        logprobs=False,
        fallback_samples=1,
        breaker_failures=3,
        breaker_open_s=10,
    )
    policy = LLMRetryPolicy(deadline_s=60, max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.001)
    registry = CollectorRegistry()
    with LLMJudge(settings, policy=policy, clock=clock, transport=httpx.MockTransport(endpoint)) as judge:
        judge.register_metrics(registry)
        assert sample(registry, "evalstream_judge_circuit_state", state="closed") == 1.0

        # Calls, not attempts, are counted: two calls of two failed attempts each leave it closed.
        outs = judge.judge_batch([item("a"), item("b")], frozenset({"refusal"}))
        assert [o.error_type for o in outs] == ["server_error"] * 2 and endpoint.requests == 4
        assert sample(registry, "evalstream_judge_circuit_consecutive_failures") == 2.0
        (out,) = judge.judge_batch([item("c")], frozenset({"refusal"}))  # the third failed call
        assert out.error_type == "server_error"
        assert sample(registry, "evalstream_judge_circuit_state", state="open") == 1.0
        assert sample(registry, "evalstream_judge_circuit_transitions_total", state="open") == 1.0

        outs = judge.judge_batch([item("d"), item("e")], frozenset({"refusal"}))
        assert endpoint.requests == 6 and [o.error_type for o in outs] == ["circuit_open"] * 2
        assert "next probe in 10.0s" in outs[0].error
        assert sample(registry, "evalstream_judge_circuit_rejected_total") == 2.0

        clock.now += 10  # the probe finds the endpoint still failing: open again, at once
        (still,) = judge.judge_batch([item("f")], frozenset({"refusal"}))
        assert still.error_type == "circuit_open" and endpoint.requests == 7
        assert sample(registry, "evalstream_judge_circuit_state", state="open") == 1.0

        endpoint.status = 200
        clock.now += 10
        (ok,) = judge.judge_batch([item("g")], frozenset({"refusal"}))
        assert [j.label for j in ok.judgements] == ["full_compliance"]
        assert sample(registry, "evalstream_judge_circuit_state", state="closed") == 1.0
        assert sample(registry, "evalstream_judge_circuit_transitions_total", state="half_open") == 2.0
        assert sample(registry, "evalstream_judge_circuit_transitions_total", state="closed") == 1.0

        endpoint.status = 400  # the endpoint answers, refusing the request: not its failure
        for _ in range(5):
            (bad,) = judge.judge_batch([item("e")], frozenset({"refusal"}))
            assert bad.error_type == "rejected"
        assert sample(registry, "evalstream_judge_circuit_state", state="closed") == 1.0


def test_llm_breaker_can_be_turned_off() -> None:
    endpoint = Endpoint()
    settings = LLMJudgeSettings(
        base_url="http://llm.invalid/v1",
        check_model=False,
        logprobs=False,
        fallback_samples=1,
        breaker_failures=0,
    )
    policy = LLMRetryPolicy(deadline_s=60, max_attempts=2, backoff_initial_s=0.001, backoff_max_s=0.001)
    registry = CollectorRegistry()
    with LLMJudge(settings, policy=policy, transport=httpx.MockTransport(endpoint)) as judge:
        judge.register_metrics(registry)
        outs = judge.judge_batch([item(str(i)) for i in range(10)], frozenset({"refusal"}))
    assert [o.error_type for o in outs] == ["server_error"] * 10 and endpoint.requests == 20
    assert sample(registry, "evalstream_judge_circuit_state", state="closed") is None


# ---- per-tier deadlines


def test_a_tier_with_its_own_deadline_gets_it_and_longer_attempts() -> None:
    policy = RetryPolicy(deadline_s=10, attempt_timeout_s=5)
    llm = tier_policy(policy, ((2, 120.0),), 2)
    assert (llm.deadline_s, llm.attempt_timeout_s) == (120.0, 60.0)
    assert tier_policy(policy, ((2, 120.0),), 0) is policy and tier_policy(policy, ((2, 120.0),), 1) is policy
    short = tier_policy(policy, ((1, 4.0),), 1)
    assert (short.deadline_s, short.attempt_timeout_s) == (4.0, 5.0)  # gRPC caps each attempt at what is left


def test_tier_deadlines_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from evalstream.pipeline.run import _arg_parser, _tier_seconds
    from evalstream.pipeline.settings import PipelineSettings

    assert PipelineSettings().judge_tier_deadlines_s == {2: 120.0}
    monkeypatch.setenv("EVALSTREAM_PIPELINE_JUDGE_TIER_DEADLINES_S", '{"1": 30, "2": 300}')
    assert PipelineSettings().judge_tier_deadlines_s == {1: 30.0, 2: 300.0}
    args, _ = _arg_parser().parse_known_args(
        ["--judge-tier-deadline", "2=90", "--judge-tier-deadline", "1=20"]
    )
    assert dict(args.judge_tier_deadlines_s) == {2: 90.0, 1: 20.0}
    with pytest.raises(argparse.ArgumentTypeError, match="expected TIER=SECONDS"):
        _tier_seconds("2:90")
    with pytest.raises(ValidationError):
        PipelineSettings(judge_tier_deadlines_s={2: 0})
