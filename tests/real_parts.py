"""Real parts for the hostile-input tests: topics, judge, replay-LLM and pipeline processes, and RSS.

Every process is a ``ChildProcess`` (built by ``evalstream.local.servers``) registered in the
``children`` fixture *before* it starts, so it is stopped at teardown whether the test passed,
failed or timed out waiting for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from kafka import KafkaProducer

from evalstream.kafka.admin import ensure_topics
from evalstream.local import servers
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import MAX_RECORD_BYTES, OutgoingRecord


class Topics:
    """Unique topic names for one test, and the pipeline flags that name them."""

    def __init__(self, unique: str) -> None:
        self.events = f"events-{unique}"
        self.verdicts = f"verdicts-{unique}"
        self.summaries = f"summaries-{unique}"
        self.dead = f"dead-{unique}"
        self.audit = f"audit-{unique}"

    def flags(self) -> list[str]:
        return [
            "--input-topic", self.events, "--verdicts-topic", self.verdicts,
            "--summaries-topic", self.summaries, "--deadletter-topic", self.dead, "--audit-topic", self.audit,
        ]  # fmt: skip

    def create(self, bootstrap: str, *, partitions: int = 4, events: bool = True) -> None:
        """The output topics, and the events topic (taking replay's largest records) unless ``events``
        is False (a replay creates it)."""
        wanted = {self.verdicts: 2, self.summaries: 1, self.dead: 1, self.audit: 1}
        if events:
            wanted[self.events] = partitions
        configs = {self.events: {"max.message.bytes": str(MAX_RECORD_BYTES)}} if events else {}
        ensure_topics(KafkaSettings(bootstrap=bootstrap), wanted, configs)


def start(children: list[ChildProcess], child: ChildProcess, timeout: float = 90.0) -> str:
    """Register ``child`` for cleanup, start it, and return what its ready line names (an address)."""
    children.append(child)
    return child.start(timeout=timeout)


def judge_server(
    name: str, judge: str, log_dir: Path, *args: str, env: Mapping[str, str] | None = None
) -> ChildProcess:
    return servers.judge_server(judge, *args, name=name, log_file=log_dir / f"{name}.log", env=env)


def replay_llm(name: str, log_dir: Path, *args: str) -> ChildProcess:
    """The replay LLM server (OpenAI-compatible, recorded verdicts), logging at DEBUG into its log."""
    return servers.replay_llm("--log-level", "DEBUG", *args, name=name, log_file=log_dir / f"{name}.log")


def pipeline(
    bootstrap: str,
    judges: Mapping[int, str],
    t: Topics,
    unique: str,
    log_dir: Path,
    *extra: str,
    env: Mapping[str, str] | None = None,
) -> ChildProcess:
    flags = [
        "--bootstrap", bootstrap,
        "--judges", ",".join(f"{tier}={address}" for tier, address in sorted(judges.items())),
        "--group-id", f"pipe-{unique}",
        "--transactional-id", f"tx-{unique}",
        *t.flags(),
        *extra,
    ]  # fmt: skip
    return servers.pipeline(*flags, log_file=log_dir / "pipeline.log", env=env)


def produce(bootstrap: str, topic: str, records: Iterable[OutgoingRecord]) -> int:
    """Send ``records`` (key, value, content-type header) and wait until all are acknowledged."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=MAX_RECORD_BYTES
    )
    try:
        futures = [producer.send(topic, key=r.key, value=r.value, headers=r.headers()) for r in records]
        producer.flush(timeout=120)
        for future in futures:
            future.get(timeout=1)  # raises if the broker refused one
        return len(futures)
    finally:
        producer.close(timeout=30)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status`` (kB, as the kernel counts)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")
