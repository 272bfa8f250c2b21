"""``evalstream redrive`` on real parts: events dead-lettered while the judge was down are judged once
the judge is back, each exactly once, and a second run redrives nothing."""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from evalstream.cli.app import app
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.procs import free_port
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.redrive import GROUP_ID, redrive
from evalstream.v1 import verdict_pb2

from .kafka_helpers import TopicReader
from .pipeline_helpers import event_json
from .real_parts import Topics
from .test_pipeline_run import pipeline_process, produce, send_until_judged, start_rules_judge

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_redrive_judges_dead_lettered_events_once_the_judge_is_back(
    broker: EmbeddedBroker, unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    t = Topics(unique)
    t.create(broker.bootstrap)
    port = free_port()
    reader = TopicReader(broker.bootstrap, [t.verdicts, t.dead])
    pipe = pipeline_process(
        broker,
        f"127.0.0.1:{port}",
        t,
        unique,
        tmp_path,
        "--judge-deadline-s",
        "1.5",
        "--judge-breaker-open-s",
        "1",
    )
    children.append(pipe)
    pipe.start(timeout=60)
    kafka = KafkaSettings(bootstrap=broker.bootstrap)
    group = f"{GROUP_ID}-{unique}"
    down = [f"d{i}-{unique}" for i in range(20)]
    try:
        # The judge is down: 20 events end as judge_unavailable; 2 bad records as decode and validate
        # dead letters (not redriven).
        produce(broker.bootstrap, t.events, [event_json(i, when=datetime.now(UTC)) for i in down])
        produce(broker.bootstrap, t.events, [b"{not json", b"[]"])
        reader.until(lambda r: len(r[t.dead]) >= 22, timeout=60, what="dead letters while the judge is down")
        first = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]]
        assert collections.Counter(d.error_type for d in first if d.event_id in down) == {
            "judge_unavailable": 20
        }

        # A dry run counts and publishes nothing (the CLI, as an operator would run it).
        result = CliRunner().invoke(
            app,
            [
                "redrive",
                "--dry-run",
                "--bootstrap",
                broker.bootstrap,
                "--deadletter-topic",
                t.dead,
                "--group-id",
                group,
            ],
        )
        assert result.exit_code == 0, result.output
        assert "would redrive 20 (judge_unavailable 20)" in result.output, result.output

        start_rules_judge(port, tmp_path, children)
        # Until the tier's circuit closes (its next probe), events fail fast; canaries show when it has.
        send_until_judged(broker.bootstrap, t, reader, prefix=f"c-{unique}", per_wave=1)

        reader.settle(1.0)
        letters = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]]
        # The 20, and the canaries that came while the circuit was still open.
        expected = {d.event_id for d in letters if d.error_type == "judge_unavailable"}
        assert set(down) <= expected

        report = redrive(kafka, deadletter_topic=t.dead, events_topic=t.events, group_id=group)
        assert report.published == len(expected), report
        assert report.by_reason == {"judge_unavailable": len(expected)}, report
        assert report.skipped == {"stage:decode": 1, "stage:validate": 1}, report.skipped

        def all_judged(records: dict[str, list[Any]]) -> bool:
            ids = {verdict_pb2.Verdict.FromString(m.value).event_id for m in records[t.verdicts]}
            return expected <= ids

        reader.until(all_judged, timeout=60, what="verdicts for the redriven events")
        reader.settle(2.0)
        verdict_ids = collections.Counter(
            verdict_pb2.Verdict.FromString(m.value).event_id for m in reader.records[t.verdicts]
        )
        assert all(verdict_ids[i] == 1 for i in expected), {i: verdict_ids[i] for i in expected}
        again = [verdict_pb2.DeadLetter.FromString(m.value) for m in reader.records[t.dead]][len(letters) :]
        assert not again, [d.message for d in again][:3]

        # The group remembers: a second run reads only what came since, and redrives none of it again.
        second = redrive(kafka, deadletter_topic=t.dead, events_topic=t.events, group_id=group)
        assert second.published == 0 and second.read == 0, second
        assert pipe.alive
    finally:
        pipe.stop()
        reader.close()
