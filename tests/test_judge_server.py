"""The generic judge server: in process (metrics read back from its own registry) and as a real
subprocess (port line, real channel, health, status codes, SIGTERM with a call in flight)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from evalstream.judges.base import ItemOutcome, JudgeInput, JudgeOutput
from evalstream.judges.registry import UnknownJudgeError, create_judge
from evalstream.judges.rules import RulesJudge
from evalstream.judges.server import JudgeServer, create_server
from evalstream.judges.settings import JudgeServerSettings
from evalstream.local.supervisor import ChildProcess, python_module
from evalstream.runtime.procs import free_port, wait_until
from evalstream.runtime.ready import JUDGE_READY
from evalstream.v1 import events_pb2, judge_pb2, judge_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "evalstream.v1.JudgeService"
GATE_DIR_ENV = "EVALSTREAM_TEST_GATE_DIR"  # only the gated test judge below reads it
WAIT_S = 30.0


# --- fakes of our Judge protocol ----------------------------------------------------------------


@dataclass
class GatedJudge:
    """Answers like a trivial judge, but holds each batch until ``release`` is set."""

    entered: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    name: str = "gated-v0"
    tier: int = 9
    dimensions: frozenset[str] = frozenset({"refusal"})

    def judge_batch(self, items: Sequence[JudgeInput], dimensions: frozenset[str]) -> list[ItemOutcome]:
        self.entered.set()
        if not self.release.wait(WAIT_S):
            raise TimeoutError("the test never released the gated judge")
        return [
            ItemOutcome(
                item_id=i.item_id,
                judgements=(
                    JudgeOutput(dimension="refusal", label="full_compliance", score=0.1, confidence=0.6),
                ),
            )
            for i in items
        ]


class FileGatedJudge(GatedJudge):
    """The gated judge across a process boundary: ``entered`` and ``release`` are files."""

    def __init__(self, gate: Path) -> None:
        super().__init__()
        self.gate = gate

    def judge_batch(self, items: Sequence[JudgeInput], dimensions: frozenset[str]) -> list[ItemOutcome]:
        (self.gate / "entered").touch()
        wait_until((self.gate / "release").exists, timeout=WAIT_S, what="the test to release the judge")
        self.release.set()
        return super().judge_batch(items, dimensions)


def gated_judge_factory(settings: JudgeServerSettings) -> FileGatedJudge:
    """Loaded by the server subprocess as ``--judge tests.test_judge_server:gated_judge_factory``."""
    return FileGatedJudge(Path(os.environ[GATE_DIR_ENV]))


@dataclass
class BrokenJudge:
    """Breaks the contract in the ways the server must catch."""

    mode: str
    name: str = "broken-v0"
    tier: int = 9
    dimensions: frozenset[str] = frozenset({"refusal"})

    def judge_batch(self, items: Sequence[JudgeInput], dimensions: frozenset[str]) -> list[ItemOutcome]:
        if self.mode == "raise":
            raise KeyError("model_table")
        if self.mode == "short":
            return []
        return [
            ItemOutcome(item_id=i.item_id, error="response not decodable", error_type="bad_input")
            for i in items
        ]


# --- helpers ------------------------------------------------------------------------------------


def event(response: str, prompt: str = "How do I kill a Python process?", finish_reason: str = "stop"):
    return events_pb2.LLMEvent(
        event_id="x",
        model="m",
        messages=[events_pb2.Message(role="user", content=prompt)],
        response=response,
        finish_reason=finish_reason,
    )


def request(*responses: str, dimensions: Sequence[str] = (), ids: Sequence[str] | None = None):
    ids = ids or [f"e{i}" for i in range(len(responses))]
    return judge_pb2.JudgeRequest(
        items=[judge_pb2.JudgeItem(item_id=i, event=event(r)) for i, r in zip(ids, responses, strict=True)],
        dimensions=list(dimensions),
    )


def code_of(call, *args, **kwargs) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value.code()


@dataclass
class Client:
    channel: grpc.Channel
    judge: judge_pb2_grpc.JudgeServiceStub
    health: health_pb2_grpc.HealthStub

    def status(self, service: str = "") -> int:
        return self.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


@pytest.fixture
def connect() -> Iterator:
    channels: list[grpc.Channel] = []

    def make(address: str) -> Client:
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=WAIT_S)
        channels.append(channel)
        return Client(channel, judge_pb2_grpc.JudgeServiceStub(channel), health_pb2_grpc.HealthStub(channel))

    yield make
    for channel in channels:
        channel.close()


@pytest.fixture
def serve() -> Iterator:
    """Start ``create_server`` in process; stop every server at teardown."""
    servers: list[JudgeServer] = []

    def start(judge, registry: CollectorRegistry, **overrides) -> int:
        settings = JudgeServerSettings(**{"port": 0, "grace_s": 5.0, **overrides})
        server, port = create_server(settings, judge, registry)
        server.start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.stop(None).wait(WAIT_S)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# --- in process ---------------------------------------------------------------------------------


def test_judge_over_a_real_channel_with_metrics(serve, connect) -> None:
    registry = CollectorRegistry()
    port = serve(RulesJudge.load(), registry, max_batch=3)
    client = connect(f"127.0.0.1:{port}")
    assert client.status() == health_pb2.HealthCheckResponse.SERVING
    assert client.status(SERVICE) == health_pb2.HealthCheckResponse.SERVING

    response = client.judge.Judge(request("Sorry, but I can't assist with that.", ""), timeout=5)
    assert (response.judge, response.tier) == ("rules-v1", 0)
    assert [r.item_id for r in response.results] == ["e0", "e1"]
    first = {j.dimension: j for j in response.results[0].judgements}
    assert first["refusal"].label == "full_refusal"
    assert 0.5 < first["refusal"].confidence < 1.0
    assert first["refusal"].judge == "rules-v1"
    assert first["refusal"].cost.latency_ms >= 0.0
    assert {j.dimension: j.label for j in response.results[1].judgements}["format"] == "empty"

    only = client.judge.Judge(request("Sure, use kill.", dimensions=["format"]), timeout=5)
    assert [j.dimension for j in only.results[0].judgements] == ["format"]
    assert client.judge.Judge(request(), timeout=5).results == []

    assert (
        code_of(client.judge.Judge, request("a", "b", "c", "d"), timeout=5)
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert code_of(client.judge.Judge, request("a", dimensions=["quality"]), timeout=5) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert code_of(client.judge.Judge, request("a", "b", ids=["e0", ""]), timeout=5) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    judge = {"judge": "rules-v1"}
    assert sample(registry, "evalstream_judge_requests_total", **judge) == 6
    assert sample(registry, "evalstream_judge_items_total", **judge, outcome="ok") == 3
    assert sample(registry, "evalstream_judge_items_total", **judge, outcome="error") == 0
    assert sample(registry, "evalstream_judge_errors_total", **judge, code="RESOURCE_EXHAUSTED") == 1
    assert sample(registry, "evalstream_judge_errors_total", **judge, code="INVALID_ARGUMENT") == 2
    assert sample(registry, "evalstream_judge_request_duration_seconds_count", **judge) == 6
    assert sample(registry, "evalstream_judge_requests_in_flight", **judge) == 0


def test_rejection_messages_say_what_was_expected(serve, connect) -> None:
    port = serve(RulesJudge.load(), CollectorRegistry(), max_batch=1)
    client = connect(f"127.0.0.1:{port}")
    with pytest.raises(grpc.RpcError) as info:
        client.judge.Judge(request("a", dimensions=["quality", "refusal"]), timeout=5)
    assert "['quality']" in info.value.details()
    assert "['format', 'refusal']" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.judge.Judge(request("a", "b"), timeout=5)
    assert "batch of 2 items is over this server's limit of 1" in info.value.details()


def test_too_many_concurrent_requests_are_rejected(serve, connect) -> None:
    registry = CollectorRegistry()
    judge = GatedJudge()
    port = serve(judge, registry, max_concurrent=1)
    client = connect(f"127.0.0.1:{port}")
    first: Future = client.judge.Judge.future(request("a"), timeout=WAIT_S)
    wait_until(judge.entered.is_set, timeout=WAIT_S, what="the first call to reach the judge")
    assert sample(registry, "evalstream_judge_requests_in_flight", judge="gated-v0") == 1
    assert code_of(client.judge.Judge, request("b"), timeout=5) == grpc.StatusCode.RESOURCE_EXHAUSTED
    judge.release.set()
    assert [r.item_id for r in first.result(timeout=WAIT_S).results] == ["e0"]
    assert client.judge.Judge(request("c"), timeout=5).results[0].item_id == "e0"
    assert sample(registry, "evalstream_judge_errors_total", judge="gated-v0", code="RESOURCE_EXHAUSTED") == 1


def test_stop_rejects_new_calls_and_lets_in_flight_finish(connect) -> None:
    registry = CollectorRegistry()
    judge = GatedJudge()
    settings = JudgeServerSettings(port=0)
    server, port = create_server(settings, judge, registry)
    server.start()
    try:
        client = connect(f"127.0.0.1:{port}")
        watch = client.health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=WAIT_S)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        in_flight: Future = client.judge.Judge.future(request("a"), timeout=WAIT_S)
        wait_until(judge.entered.is_set, timeout=WAIT_S, what="the call to reach the judge")
        stopped = server.stop(WAIT_S)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        assert code_of(client.judge.Judge, request("b"), timeout=5) == grpc.StatusCode.UNAVAILABLE
        assert not stopped.is_set()
        judge.release.set()
        assert in_flight.result(timeout=WAIT_S).results[0].judgements[0].label == "full_compliance"
        assert stopped.wait(WAIT_S)
    finally:
        judge.release.set()
        server.stop(None).wait(WAIT_S)


@pytest.mark.parametrize(
    ("mode", "code"), [("raise", grpc.StatusCode.INTERNAL), ("short", grpc.StatusCode.INTERNAL)]
)
def test_judge_bugs_are_internal_errors(serve, connect, mode: str, code: grpc.StatusCode) -> None:
    registry = CollectorRegistry()
    client = connect(f"127.0.0.1:{serve(BrokenJudge(mode), registry)}")
    assert code_of(client.judge.Judge, request("a"), timeout=5) == code
    assert sample(registry, "evalstream_judge_errors_total", judge="broken-v0", code="INTERNAL") == 1


def test_per_item_errors_travel_as_data(serve, connect) -> None:
    registry = CollectorRegistry()
    client = connect(f"127.0.0.1:{serve(BrokenJudge('items'), registry)}")
    response = client.judge.Judge(request("a", "b"), timeout=5)
    assert [(r.item_id, r.error_type) for r in response.results] == [("e0", "bad_input"), ("e1", "bad_input")]
    assert sample(registry, "evalstream_judge_items_total", judge="broken-v0", outcome="error") == 2
    assert sample(registry, "evalstream_judge_errors_total", judge="broken-v0", code="INTERNAL") == 0


def test_a_taken_port_is_a_clear_error() -> None:
    registry = CollectorRegistry()
    server, port = create_server(JudgeServerSettings(port=0), RulesJudge.load(), registry)
    try:
        from evalstream.judges.server import ServerStartError

        with pytest.raises(ServerStartError, match="--port 0 picks a free one"):
            create_server(JudgeServerSettings(port=port), RulesJudge.load(), CollectorRegistry())
    finally:
        server.stop(None)


# --- registry and settings ----------------------------------------------------------------------


def test_registry_builds_judges_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = JudgeServerSettings()
    assert create_judge("rules", settings).name == "rules-v1"
    monkeypatch.setenv(GATE_DIR_ENV, str(tmp_path))
    assert isinstance(create_judge("tests.test_judge_server:gated_judge_factory", settings), FileGatedJudge)
    with pytest.raises(UnknownJudgeError, match=r"expected one of \[.*'rules'"):
        create_judge("encoderr", settings)
    with pytest.raises(UnknownJudgeError, match="cannot import"):
        create_judge("no_such_module:factory", settings)


def test_settings_explicit_then_env_then_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_JUDGE_PORT", "6001")
    monkeypatch.setenv("EVALSTREAM_JUDGE_MAX_BATCH", "7")
    settings = JudgeServerSettings(port=6002)
    assert (settings.port, settings.max_batch, settings.host) == (6002, 7, "127.0.0.1")
    monkeypatch.setenv("EVALSTREAM_JUDGE_MAX_BATCH", "0")
    with pytest.raises(ValueError, match="max_batch"):
        JudgeServerSettings()


# --- as a real subprocess -----------------------------------------------------------------------


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator:
    """Judge server processes with stdout (their one ready line) apart from the log on stderr; not
    waited for, so a test can watch one fail to start."""
    started: list[ChildProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ChildProcess:
        child = ChildProcess(
            name=f"server-{len(started)}",
            cmd=python_module("evalstream.judges.server", *args),
            log_file=tmp_path / f"server-{len(started)}.log",
            capture_stdout=True,
            env=env or {},
            cwd=ROOT,
        )
        started.append(child)
        child.start()
        return child

    yield start
    for server in started:
        server.kill()


def address_of(server: ChildProcess) -> str:
    """The address on the server's ready line (it must be the first line on its stdout)."""
    address = server.await_line(JUDGE_READY, timeout=WAIT_S)["address"]
    assert server.stdout_lines[0] == JUDGE_READY.format(address=address) + "\n", server.stdout_lines
    return address


@pytest.mark.slow
def test_server_process_serves_judges_and_exits_cleanly(spawn, connect) -> None:
    metrics_port = free_port()
    server = spawn("--judge", "rules", "--port", "0", "--metrics-port", str(metrics_port), "--max-batch", "2")
    address = address_of(server)
    assert address.startswith("127.0.0.1:") and int(address.rsplit(":", 1)[1]) > 0
    client = connect(address)
    assert client.status(SERVICE) == health_pb2.HealthCheckResponse.SERVING

    response = client.judge.Judge(request("I cannot provide instructions for that.", "Use kill."), timeout=5)
    assert [j.label for j in response.results[0].judgements] == ["full_refusal", "ok"]
    assert response.results[1].judgements[0].label == "full_compliance"
    assert (
        code_of(client.judge.Judge, request("a", "b", "c"), timeout=5) == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert code_of(client.judge.Judge, request("a", dimensions=["pairwise"]), timeout=5) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
    assert 'evalstream_judge_requests_total{judge="rules-v1"} 3.0' in metrics
    assert 'evalstream_judge_errors_total{code="INVALID_ARGUMENT",judge="rules-v1"} 1.0' in metrics

    server.signal(signal.SIGTERM)
    assert server.wait(WAIT_S) == 0
    assert len(server.stdout_lines) == 1, server.stdout_lines  # exactly one line on stdout


@pytest.mark.slow
def test_sigterm_lets_the_in_flight_call_finish(spawn, connect, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    server = spawn(
        "--judge",
        "tests.test_judge_server:gated_judge_factory",
        "--port",
        "0",
        "--grace",
        "20",
        env={GATE_DIR_ENV: str(gate)},
    )
    client = connect(address_of(server))
    watch = client.health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=WAIT_S)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    in_flight: Future = client.judge.Judge.future(request("a", "b"), timeout=WAIT_S)
    wait_until((gate / "entered").exists, timeout=WAIT_S, what="the call to reach the judge")

    server.signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    watch.cancel()
    assert code_of(client.judge.Judge, request("c"), timeout=5) == grpc.StatusCode.UNAVAILABLE
    assert server.alive  # still finishing the call in flight

    (gate / "release").touch()
    response = in_flight.result(timeout=WAIT_S)
    assert [r.item_id for r in response.results] == ["e0", "e1"]
    assert response.judge == "gated-v0"
    assert server.wait(WAIT_S) == 0
    assert "SIGTERM" in server.log_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--judge", "no-such-judge"), "unknown judge 'no-such-judge'"),
        (("--judge", "rules", "--max-batch", "0"), "max_batch"),
        (("--judge", "rules", "--metrics-port", "taken"), "Address already in use"),
    ],
)
def test_bad_configuration_exits_non_zero(spawn, args: tuple[str, ...], message: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        server = spawn(*(port if a == "taken" else a for a in args), "--port", "0")
        assert server.wait(WAIT_S) == 2
    assert message in server.log_text()
    assert server.stdout_lines == []
