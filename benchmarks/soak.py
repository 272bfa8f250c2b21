"""Soak: XSTest replay at a fixed rate through broker, judge tiers and pipeline, with faults on a schedule.

    .venv/bin/python benchmarks/soak.py [--minutes 30] [--rate 40] [--encoder-artefact DIR]

Starts a fresh embedded broker, the replay LLM server, judge servers for tier 0 (rules) and tier 2
(LLM judge over the replay server) -- and tier 1 (encoder) when ``--encoder-artefact`` names a trained
artefact -- and the pipeline, each its own process. ``evalstream replay`` traffic (all XSTest v2
completions, pass after pass) flows at ``--rate`` events/s for ``--minutes``. Faults, at fixed
fractions of the run, each lasting ``--outage-s`` (default 5% of the run, 3-15 s):

    20%  SIGKILL the rules judge, start it again on the same port
    40%  LLM endpoint 5xx burst (the replay server restarted with ``--faults 503``, then without)
    60%  SIGKILL the pipeline, start it again
    80%  SIGKILL the LLM judge, start it again

Every ``--sample-s`` it records each process's RSS (``/proc/<pid>/status``, VmRSS) and the pipeline's
lag (events topic end offsets minus the group's committed offsets). At the end it waits for the
pipeline to account for every event sent and checks ``in = unsampled + verdicts + dead letters``
(from the summaries with dimension "" and from the records read read_committed) and that no verdict
was written twice. Memory must be flat after warm-up (the first ``--warmup`` share of each process's
life): the highest RSS of the last third of the rest at most ``--tolerance`` (10%) above the median
of its first third. Prints tables (RSS over time, faults with their recovery time, accounting,
memory verdicts), writes JSON to benchmarks/results/soak.json, exits 1 when a check fails.

Recovery time of a fault: from its end (the part back) until the lag is back under two seconds of
traffic.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from evalstream.kafka.admin import ensure_topics
from evalstream.local import servers
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import free_port
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.replay import ReplayOptions, ReplayReport, run_replay
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule

RESULTS = Path(__file__).resolve().parent / "results"
LLM_ENV = {  # the LLM judge's deadline inside the pipeline's 5 s per-attempt timeout
    "EVALSTREAM_LLM_DEADLINE_S": "3",
    "EVALSTREAM_LLM_ATTEMPT_TIMEOUT_S": "1",
    "EVALSTREAM_LLM_MAX_ATTEMPTS": "4",
    "EVALSTREAM_LLM_LOGPROBS": "false",
    "EVALSTREAM_LLM_FALLBACK_SAMPLES": "1",
    "EVALSTREAM_LLM_BREAKER_OPEN_S": "2",
}


def rss_mb(pid: int | None) -> float | None:
    """Resident set size of a process in MB, from /proc; None when it is not running."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Fault:
    at_s: float
    name: str
    ended_s: float = 0.0
    recovered_s: float | None = None  # seconds from the end of the fault until the lag was back down


class Lag:
    """The pipeline group's lag: events topic end offsets minus its committed offsets."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self._group = group
        self._consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        self._admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self._partitions = [TopicPartition(topic, p) for p in range(4)]
        self._consumer.assign(self._partitions)  # keeps the topic in the client's metadata
        self.error = ""  # why the last reading failed

    def __call__(self) -> int | None:
        """The lag now, or None while the broker cannot say (metadata not ready, or mid-fault)."""
        try:
            ends = self._consumer.end_offsets(self._partitions)
            committed = self._admin.list_group_offsets({self._group: self._partitions}).get(self._group, {})
        except (KafkaError, KeyError) as exc:  # KeyError: kafka-python knows no leader for a partition yet
            self.error = repr(exc)
            return None
        done = {tp: c.offset for tp, c in committed.items() if c is not None and c.offset >= 0}
        return sum(max(end - done.get(tp, 0), 0) for tp, end in ends.items())

    def close(self) -> None:
        self._consumer.close()
        self._admin.close()


def flat(samples: list[float], warmup: float, tolerance: float) -> tuple[bool, float, float]:
    """(flat?, baseline MB, late peak MB) over one process's life after its warm-up share."""
    rest = samples[int(len(samples) * warmup) :]
    if len(rest) < 3:
        return True, rest[0] if rest else 0.0, max(rest, default=0.0)
    third = max(1, len(rest) // 3)
    baseline = statistics.median(rest[:third])
    peak = max(rest[-third:])
    return peak <= baseline * (1 + tolerance), baseline, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    parser.add_argument("--rate", type=float, default=40.0, help="events per second")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS and lag samples")
    parser.add_argument(
        "--outage-s", type=float, help="length of each fault (default 5%% of the run, 3-15 s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.25, help="share of each process's life that warms up"
    )
    parser.add_argument("--tolerance", type=float, default=0.10, help="allowed RSS growth after warm-up")
    parser.add_argument(
        "--encoder-artefact", type=Path, help="a trained tier-1 artefact: add the encoder tier"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--verbose", action="store_true", help="print each sample as it is taken")
    args = parser.parse_args()
    console = Console()
    seconds = args.minutes * 60
    outage = args.outage_s or min(15.0, max(3.0, 0.05 * seconds))
    sample_s = min(args.sample_s, seconds / 30)  # at least 30 samples, even in a 1-minute run
    run = uuid.uuid4().hex[:8]
    stop = threading.Event()

    with tempfile.TemporaryDirectory(prefix="evalstream-soak-") as tmp_name:
        tmp = Path(tmp_name)
        broker = EmbeddedBroker(data_dir=tmp / "broker").start()
        kafka = KafkaSettings(bootstrap=broker.bootstrap)
        topics = {k: f"soak-{k}-{run}" for k in ("events", "verdicts", "summaries", "dead", "audit")}
        ensure_topics(  # the events topic first: the pipeline would have it created with one partition
            kafka,
            {
                topics["events"]: 4,
                topics["verdicts"]: 4,
                topics["summaries"]: 1,
                topics["dead"]: 1,
                topics["audit"]: 1,
            },
        )
        ports = {name: free_port() for name in ("replay", "rules", "encoder", "llm")}
        replay = servers.replay_llm(
            "--datasets", "xstest", port=ports["replay"], log_file=tmp / "llm-replay.log"
        )

        def judge(name: str, env: dict[str, str]) -> ChildProcess:
            return servers.judge_server(name, port=ports[name], log_file=tmp / f"judge-{name}.log", env=env)

        judges = {0: judge("rules", {})}
        cascade_tiers = [TierRule(tier=0, threshold=0.95)]
        if args.encoder_artefact:
            judges[1] = judge("encoder", {"EVALSTREAM_ENCODER_MODEL_DIR": str(args.encoder_artefact)})
            cascade_tiers.append(TierRule(tier=1, threshold=0.9))
        judges[2] = judge(
            "llm", {"EVALSTREAM_LLM_BASE_URL": f"http://127.0.0.1:{ports['replay']}/v1", **LLM_ENV}
        )
        cascade_tiers.append(TierRule(tier=2, threshold=0.0))
        cascade = tmp / "cascade.yaml"
        CascadeConfig(version="soak", dimensions={"refusal": DimensionCascade(tiers=cascade_tiers)}).dump(
            cascade
        )
        group = f"soak-{run}"
        endpoints = ",".join(
            f"{t}=127.0.0.1:{ports[{0: 'rules', 1: 'encoder', 2: 'llm'}[t]]}" for t in judges
        )
        pipeline = servers.pipeline(
            "--bootstrap",
            broker.bootstrap,
            "--judges",
            endpoints,
            "--cascade-config",
            str(cascade),
            "--group-id",
            group,
            "--transactional-id",
            f"soak-{run}",
            "--input-topic",
            topics["events"],
            "--verdicts-topic",
            topics["verdicts"],
            "--summaries-topic",
            topics["summaries"],
            "--deadletter-topic",
            topics["dead"],
            "--audit-topic",
            topics["audit"],
            log_file=tmp / "pipeline.log",
        )
        parts = [replay, *judges.values(), pipeline]
        for part in parts:
            part.startup_timeout = 180
        samples: list[dict[str, Any]] = []
        faults: list[Fault] = []
        report: list[ReplayReport] = []
        lag: Lag | None = None
        try:
            console.print(
                f"starting broker, replay server, judges {sorted(judges)} and the pipeline in {tmp} ..."
            )
            for part in parts:
                part.start()
            n_events = int(args.rate * seconds)
            replay_options = ReplayOptions(
                topic=topics["events"],
                rate=args.rate,
                limit=n_events,
                repeat=n_events // 2000 + 1,
                run_id=run,
            )
            traffic = threading.Thread(
                target=lambda: report.append(run_replay(replay_options, kafka, show_progress=False)),
                name="traffic",
            )
            began = time.monotonic()
            traffic.start()
            lag = Lag(broker.bootstrap, topics["events"], group)
            schedule: list[tuple[float, str, Callable[[], None], Callable[[], None]]] = [
                (0.2, "SIGKILL rules judge", judges[0].kill, lambda: _restart(judges[0])),
                (
                    0.4,
                    "LLM endpoint 5xx burst",
                    lambda: _restart(replay, "--faults", "503"),
                    lambda: _restart(replay),
                ),
                (0.6, "SIGKILL pipeline", pipeline.kill, lambda: _restart(pipeline)),
                (0.8, "SIGKILL LLM judge", judges[2].kill, lambda: _restart(judges[2])),
            ]
            pending = list(schedule)
            active: tuple[Fault, Callable[[], None]] | None = None  # a fault under way, and its repair
            recovering: list[Fault] = []
            next_sample = 0.0
            console.print(
                f"{args.rate:g} events/s for {args.minutes:g} min; faults of {outage:.0f}s at 20/40/60/80%"
            )
            while traffic.is_alive() or recovering or active:
                now = time.monotonic() - began
                if active is None and pending and now >= pending[0][0] * seconds:
                    _, name, inject, repair = pending.pop(0)
                    console.print(f"[{now:6.1f}s] fault: {name}")
                    inject()
                    active = (Fault(at_s=round(now, 1), name=name), repair)
                elif active is not None and now >= active[0].at_s + outage:
                    fault, repair = active
                    repair()
                    fault.ended_s = round(time.monotonic() - began, 1)
                    console.print(f"[{fault.ended_s:6.1f}s] repaired: {fault.name}")
                    faults.append(fault)
                    recovering.append(fault)
                    active = None
                current = lag()
                for fault in list(recovering):
                    since = time.monotonic() - began - fault.ended_s
                    if current is not None and current <= 2 * args.rate:
                        fault.recovered_s = round(max(since, 0.0), 1)
                        recovering.remove(fault)
                    elif since > 300:
                        recovering.remove(fault)  # never recovered: reported as such
                if now >= next_sample:
                    row: dict[str, Any] = {"t_s": round(now, 1), "lag": current}
                    row.update({p.name: rss_mb(p.pid if p.alive else None) for p in parts})
                    row["broker"] = rss_mb(broker.pid)
                    samples.append(row)
                    next_sample = now + sample_s
                    if args.verbose:
                        console.print(row, lag.error)
                stop.wait(0.5)
            traffic.join()
            sent = report[0].total_sent if report else 0
            console.print(
                f"traffic done: {sent} events acknowledged; waiting for the pipeline to account for them"
            )
            outputs = _read_outputs(broker.bootstrap, topics, sent)
        finally:
            if lag is not None:
                lag.close()
            for part in reversed(parts):
                part.stop()
            broker.stop()

    verdicts, dead, summaries = outputs
    totals: collections.Counter[str] = collections.Counter()
    for s in summaries:
        if s.dimension == "":
            totals.update(events_in=s.events_in, unsampled=s.unsampled, judged=s.judged, dead=s.dead_lettered)
    ids = [v.event_id for v in verdicts]
    duplicates = len(ids) - len(set(ids))
    balanced = (
        totals["events_in"] == sent == totals["unsampled"] + len(verdicts) + len(dead)
        and totals["judged"] == len(verdicts)
        and totals["dead"] == len(dead)
    )

    # Memory: per part, over its last incarnation (a restarted process warms up again).
    memory: dict[str, dict[str, Any]] = {}
    for name in ["broker", *(p.name for p in parts)]:
        series = [row[name] for row in samples if row.get(name) is not None]
        restarted_at = max((f.ended_s for f in faults if name in _victims(f.name)), default=None)
        if restarted_at is not None:
            series = [
                row[name] for row in samples if row["t_s"] >= restarted_at and row.get(name) is not None
            ]
        ok, baseline, peak = flat(series, args.warmup, args.tolerance)
        memory[name] = {"flat": ok, "baseline_mb": round(baseline, 1), "late_peak_mb": round(peak, 1),
                        "samples": len(series), "checked": True}  # fmt: skip
    memory_flat = all(m["flat"] for m in memory.values() if m["checked"])

    rss = Table(title="RSS (MB) and lag over time")
    columns = ["t_s", "lag", "broker", *(p.name for p in parts)]
    for c in columns:
        rss.add_column(c, justify="right")
    step = max(1, len(samples) // 30)
    for row in samples[::step]:
        rss.add_row(*(("-" if row.get(c) is None else f"{row[c]:.0f}") for c in columns))
    console.print(rss)
    timeline = Table(title="fault timeline")
    for c in ("at (s)", "fault", "ended (s)", "recovered after (s)"):
        timeline.add_column(c)
    for f in faults:
        timeline.add_row(
            f"{f.at_s:.1f}",
            f.name,
            f"{f.ended_s:.1f}",
            "never" if f.recovered_s is None else f"{f.recovered_s:.1f}",
        )
    console.print(timeline)
    reasons = collections.Counter(d.error_type for d in dead)
    examples = {r: next(d.message[:300] for d in dead if d.error_type == r) for r in reasons}
    accounting = Table(title="accounting (read_committed)")
    accounting.add_column("measure")
    accounting.add_column("value", justify="right")
    for key, value in {
        "events sent (acknowledged)": sent,
        "events in (summaries)": totals["events_in"],
        "unsampled": totals["unsampled"],
        "verdicts": len(verdicts),
        "dead letters": len(dead),
        **{f"  dead: {k}": v for k, v in sorted(reasons.items())},
        "duplicate verdicts": duplicates,
        "balanced": balanced,
    }.items():
        accounting.add_row(key, str(value))
    console.print(accounting)
    mem = Table(title=f"memory after warm-up (late peak <= baseline + {args.tolerance:.0%})")
    for c in ("process", "baseline MB", "late peak MB", "samples", "verdict"):
        mem.add_column(c)
    for name, m in memory.items():
        verdict = "flat" if m["flat"] else "GROWING"
        if not m["checked"]:
            verdict += " (holds every record in memory: not checked)"
        mem.add_row(name, f"{m['baseline_mb']:.0f}", f"{m['late_peak_mb']:.0f}", str(m["samples"]), verdict)
    console.print(mem)

    result = {
        "minutes": args.minutes,
        "rate_events_per_s": args.rate,
        "outage_s": outage,
        "tiers": sorted(judges),
        "faults": [dataclasses.asdict(f) for f in faults],
        "accounting": {
            "sent": sent,
            **totals,
            "verdicts": len(verdicts),
            "dead_letters": len(dead),
            "dead_by_reason": dict(reasons),
            "dead_letter_examples": examples,
            "duplicate_verdicts": duplicates,
            "balanced": balanced,
        },
        "memory": memory,
        "memory_flat": memory_flat,
        "samples": samples,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {args.out}")
    failed = [
        what
        for what, ok in (
            ("accounting does not balance", balanced),
            ("verdicts written twice", duplicates == 0),
            ("memory grew after warm-up", memory_flat),
            ("a fault never recovered", all(f.recovered_s is not None for f in faults)),
        )
        if not ok
    ]
    console.print(
        "[bold red]FAILED:[/] " + "; ".join(failed) if failed else "[bold green]all checks passed[/]"
    )
    return 1 if failed else 0


def _victims(fault: str) -> tuple[str, ...]:
    return {
        "SIGKILL rules judge": ("judge-rules",),
        "SIGKILL pipeline": ("pipeline",),
        "SIGKILL LLM judge": ("judge-llm",),
        "LLM endpoint 5xx burst": ("llm-replay",),
    }.get(fault, ())


def _restart(part: ChildProcess, *extra: str) -> None:
    """The same command again (on the same port), with ``extra`` arguments for this run only."""
    part.restart(*extra)


def _read_outputs(
    bootstrap: str, topics: dict[str, str], expected: int, timeout_s: float = 300.0
) -> tuple[list[verdict_pb2.Verdict], list[verdict_pb2.DeadLetter], list[summary_pb2.Summary]]:
    """Everything the pipeline committed, read_committed, once the summaries count ``expected`` events
    in and nothing new has arrived for three seconds (or ``timeout_s`` passed)."""
    consumer = KafkaConsumer(
        topics["verdicts"], topics["dead"], topics["summaries"],
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", isolation_level="read_committed",
        group_id=None, enable_auto_commit=False,
    )  # fmt: skip
    records: dict[str, list[bytes]] = collections.defaultdict(list)
    counted = 0
    quiet_since = time.monotonic()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=500)
            for tp, messages in got.items():
                records[tp.topic].extend(m.value for m in messages)
                if tp.topic == topics["summaries"]:
                    for m in messages:
                        s = summary_pb2.Summary.FromString(m.value)
                        counted += s.events_in if s.dimension == "" else 0
            if got:
                quiet_since = time.monotonic()
            elif counted >= expected and time.monotonic() - quiet_since >= 3.0:
                break
    finally:
        consumer.close()
    return (
        [verdict_pb2.Verdict.FromString(v) for v in records[topics["verdicts"]]],
        [verdict_pb2.DeadLetter.FromString(v) for v in records[topics["dead"]]],
        [summary_pb2.Summary.FromString(v) for v in records[topics["summaries"]]],
    )


if __name__ == "__main__":
    raise SystemExit(main())
