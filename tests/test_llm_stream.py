"""Streamed completions (issue 17, item 4: cancel abandoned requests): the judge streams so that an
attempt it gives up on is closed on the server too, and reassembles the streamed reply, logprobs and
several choices included. Against the replay server in its own process (it streams as OpenAI does,
and its ``stall`` fault stops generating when the client leaves, as a server that watches for
disconnects does); the same against a real llama.cpp server is in ``test_llm_interop.py``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from evalstream.evaluation.datasets import read_xstest
from evalstream.judges.base import JudgeInput
from evalstream.judges.llm import LLMJudge, LLMJudgeSettings, RetryPolicy
from evalstream.judges.llm_stream import StreamBroken, StreamInterrupted, reassemble
from evalstream.llm_replay import FAULT_HEADER
from evalstream.local.llm_replay import ReplayProcess, start_replay_server
from evalstream.runtime.procs import wait_until

FAST = RetryPolicy(
    deadline_s=10.0, attempt_timeout_s=3.0, max_attempts=5, backoff_initial_s=0.01, backoff_max_s=0.05
)


def item(item_id: str, prompt: str, response: str) -> JudgeInput:
    return JudgeInput(item_id=item_id, model="m", messages=(("user", prompt),), response=response)


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayProcess]:
    with start_replay_server(["--datasets", "xstest", "--hang-s", "30"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def plain_only() -> Iterator[ReplayProcess]:
    """Refuses ``stream: true`` with a 400 naming ``stream``, as a server that does not stream."""
    with start_replay_server(["--datasets", "xstest", "--no-stream"]) as proc:
        yield proc


@pytest.fixture(scope="module")
def xstest(shared_data: Path) -> list[tuple[JudgeInput, str]]:
    records = random.Random(23).sample([r for r in read_xstest(shared_data) if r.gpt4_label], 4)
    return [(item(r.prompt_id, r.prompt, r.completion), r.gpt4_label) for r in records]


def judge(server: ReplayProcess, policy: RetryPolicy = FAST, **overrides: Any) -> LLMJudge:
    return LLMJudge(LLMJudgeSettings(base_url=server.base_url, model="gpt-4", **overrides), policy=policy)


def stats(server: ReplayProcess) -> dict[str, int]:
    counters: dict[str, int] = httpx.get(f"{server.url}/v1/replay/stats").json()["counters"]
    return counters


def events(*payloads: str) -> Iterator[str]:
    for p in payloads:
        yield f"data: {p}"
        yield ""


# ---- reassembly


def test_chunks_are_reassembled_per_choice_with_logprobs_and_usage_counted_when_not_sent() -> None:
    body = reassemble(
        iter(
            [
                ": ping - 2026-12-05",  # a comment: ignored
                'data: {"model": "m", "choices": [{"index": 1, "delta": {"role": "assistant", '
                '"content": "{\\"la"}, "logprobs": {"content": [{"token": "{\\"la", "logprob": -0.1}]}}]}',
                "",
                'data: {"model": "m", "choices": [{"index": 0, "delta": {"content": "x"}, '
                '"finish_reason": "stop"}]}',
                "",
                'data: {"model": "m", "choices": [{"index": 1, "delta": {"content": "bel\\"}"}, '
                '"logprobs": {"content": [{"token": "bel\\"}", "logprob": -0.2}]}, '
                '"finish_reason": "length"}]}',
                "",
                "data: [DONE]",
                "",
            ]
        )
    )
    assert [c["message"]["content"] for c in body["choices"]] == ["x", '{"label"}']
    assert body["choices"][0]["logprobs"] is None
    assert [t["logprob"] for t in body["choices"][1]["logprobs"]["content"]] == [-0.1, -0.2]
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "length"]
    # no usage chunk (llama-cpp-python sends none): logprob tokens, else content pieces
    assert body["usage"]["completion_tokens"] == 3 and body["usage"]["counted_from_stream"]
    sent = reassemble(
        events('{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]}',
               '{"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 1}}', "[DONE]")
    )  # fmt: skip
    assert sent["usage"] == {"prompt_tokens": 7, "completion_tokens": 1}


@pytest.mark.parametrize(
    ("payloads", "error", "match"),
    [
        (['{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}', "[DONE]"],
         StreamInterrupted, r"choice\(s\) \[0\] unfinished"),
        (['{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]}'],
         StreamBroken, "ended before data: \\[DONE\\]"),
        (["{not json"], StreamBroken, "not JSON"),
        (['{"error": {"message": "model crashed"}}'], StreamBroken, "model crashed"),
    ],
)  # fmt: skip
def test_a_stream_cut_short_or_broken_is_told_apart(payloads: list[str], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        reassemble(events(*payloads))


# ---- against the replay server


@pytest.mark.slow
def test_streamed_and_plain_replies_give_the_same_verdicts_logprobs_and_samples(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    items = [it for it, _ in xstest]
    results = {}
    for stream in ("on", "off"):
        before = stats(replay).get("stream.sent", 0)
        # logprobs from the endpoint (split_logprobs: unusable, so three samples in one n=3 request)
        with judge(replay, stream=stream, extra_headers={FAULT_HEADER: "split_logprobs"}) as j:
            outcomes = j.judge_batch(items, frozenset({"refusal"}))
            totals = j.totals()
        streamed = stats(replay).get("stream.sent", 0) - before
        assert streamed == (totals["calls"] if stream == "on" else 0), (streamed, totals)
        results[stream] = [
            (j.label, j.confidence, j.confidence_source, o.extra.get("refusal.agreement"))
            for o in outcomes
            for j in o.judgements
        ]
        assert totals["input_tokens"] > 0 and totals["output_tokens"] > 0  # usage came in the stream
    assert results["on"] == results["off"]
    assert [r[0] for r in results["on"]] == [label for _, label in xstest]
    assert {r[2] for r in results["on"]} == {"agreement"} and {r[3] for r in results["on"]} == {"3/3"}


@pytest.mark.slow
def test_an_attempt_that_runs_out_closes_the_stream_and_the_server_stops(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    """The ``stall`` fault sends one chunk and then nothing for 30 s unless the client leaves: the
    watchdog ends the attempt at its timeout and the server sees the connection close."""
    policy = RetryPolicy(deadline_s=5, attempt_timeout_s=0.5, max_attempts=1)
    before = stats(replay).get("stream.abandoned", 0)
    started = time.monotonic()
    with judge(
        replay, policy, logprobs=False, fallback_samples=1, extra_headers={FAULT_HEADER: "stall"}
    ) as j:
        (out,) = j.judge_batch([xstest[0][0]], frozenset({"refusal"}))
    took = time.monotonic() - started
    assert out.error_type == "timeout" and "the stream was closed" in out.error, out
    assert took < 5, took  # not the 30 s the server would have held the stream
    wait_until(
        lambda: stats(replay).get("stream.abandoned", 0) == before + 1,
        timeout=5,
        what="the replay server to see the judge leave",
    )


@pytest.mark.slow
def test_a_stream_the_server_cuts_short_is_retried_and_halves_the_concurrency(
    replay: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    with judge(
        replay, logprobs=False, fallback_samples=1, min_concurrency=4, max_concurrency=4,
        extra_headers={FAULT_HEADER: "interrupt:1"},
    ) as j:  # fmt: skip
        outcomes = j.judge_batch([it for it, _ in xstest], frozenset({"refusal"}))
        totals, snap = j.totals(), j._client.limit.snapshot()
    assert [o.judgements[0].label for o in outcomes] == [label for _, label in xstest]
    assert totals["retries"] == len(xstest)
    assert snap.overloads == len(xstest)  # each halved the limit (to its floor, min_concurrency)


@pytest.mark.slow
def test_auto_falls_back_to_plain_requests_once_and_on_names_the_setting(
    plain_only: ReplayProcess, xstest: list[tuple[JudgeInput, str]]
) -> None:
    items = [it for it, _ in xstest]
    with judge(plain_only, logprobs=False, fallback_samples=1, max_concurrency=1) as j:
        outcomes = j.judge_batch(items, frozenset({"refusal"}))
        assert not j._client.streaming
        totals = j.totals()
    assert [o.judgements[0].label for o in outcomes] == [label for _, label in xstest]
    assert totals.get("retries", 0) == 0
    assert stats(plain_only)["status.400"] == 1  # one refused streamed request, then plain ones
    with judge(plain_only, stream="on", logprobs=False, fallback_samples=1) as j:
        (out,) = j.judge_batch(items[:1], frozenset({"refusal"}))
    assert out.error_type == "stream_unsupported" and "EVALSTREAM_LLM_STREAM=on" in out.error, out
