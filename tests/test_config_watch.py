"""Live reload of the cascade config: ``CascadeWatch`` (a new version swapped in, a bad one refused and
counted once, the running one kept), and the pipeline process switching versions between batches on
real parts with every event judged exactly once."""

from __future__ import annotations

import collections
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess
from evalstream.runtime.config_watch import CascadeWatch
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule

from .kafka_helpers import TopicReader
from .pipeline_helpers import event_json
from .test_pipeline_run import Topics, judge_tier0, pipeline_process, produce

__all__ = ["judge_tier0"]  # the module fixture, used here


def config(version: str, threshold: float = 0.0, tiers: tuple[int, ...] = (0,)) -> CascadeConfig:
    return CascadeConfig(
        version=version,
        dimensions={
            "refusal": DimensionCascade(tiers=[TierRule(tier=t, threshold=threshold) for t in tiers]),
            "format": DimensionCascade(tiers=[TierRule(tier=0, threshold=0.0)]),
        },
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, bump_ns: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))  # a distinct mtime on coarse clocks


def test_watch_swaps_a_new_version_refuses_bad_ones_and_keeps_the_running_config(tmp_path: Path) -> None:
    path = tmp_path / "cascade.yaml"
    first = config("v1")
    first.dump(path)
    clock = Clock()
    watch = CascadeWatch(path, first, endpoints=[0], interval_s=2.0, clock=clock)
    assert watch.poll() is None  # unchanged
    config("v2", 0.5).dump(path)
    assert watch.poll() is None  # checked at 0 s already: the next check is due at 2 s
    clock.now = 2.0
    new = watch.poll()
    assert new is not None and new.version == "v2" and watch.reloads == 1
    clock.now = 4.0
    assert watch.poll() is None  # the same file again: no reload

    write(path, "dimensions: [not, a, mapping", 10**9)  # broken YAML
    clock.now = 6.0
    assert watch.poll() is None and watch.rejected == 1 and "not a valid cascade config" in watch.last_error
    clock.now = 8.0
    assert watch.poll() is None and watch.rejected == 1  # the same bad content is reported once
    write(path, path.read_text().replace("[not", "[still not"), 2 * 10**9)
    clock.now = 10.0
    assert watch.poll() is None and watch.rejected == 2

    config("v3", 0.5, tiers=(0, 2)).dump(path)  # tier 2 has no endpoint here
    clock.now = 12.0
    assert watch.poll() is None and watch.rejected == 3 and "no judge endpoint" in watch.last_error
    assert watch.current.version == "v2"

    path.unlink()
    clock.now = 14.0
    assert watch.poll() is None and watch.rejected == 4 and "cannot read" in watch.last_error

    config("v4", 0.7).dump(path)
    clock.now = 16.0
    new = watch.poll()
    assert new is not None and new.version == "v4" and watch.reloads == 2 and watch.last_error == ""
    assert CascadeWatch(path, new, endpoints=[0], interval_s=0).poll() is None  # 0: never reloaded


@pytest.mark.slow
def test_pipeline_switches_config_between_batches_without_losing_or_repeating_events(
    broker: EmbeddedBroker, judge_tier0: str, unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    t = Topics(unique)
    t.create(broker.bootstrap)
    path = tmp_path / "cascade.yaml"
    config("before").dump(path)
    reader = TopicReader(broker.bootstrap, [t.verdicts, t.summaries, t.dead])
    pipe = pipeline_process(
        broker, judge_tier0, t, unique, tmp_path, "--cascade-config", str(path), "--cascade-reload-s", "0.2"
    )
    children.append(pipe)
    pipe.start(timeout=60)

    now = datetime.now(UTC)
    produce(broker.bootstrap, t.events, [event_json(f"a{i}-{unique}", when=now) for i in range(200)])
    reader.until(lambda r: len(r[t.verdicts]) >= 200, timeout=60, what="first wave")
    path.write_text("version: [broken")  # refused: the running config stays
    reader.settle(1.0)
    produce(broker.bootstrap, t.events, [event_json(f"b{i}-{unique}", when=now) for i in range(100)])
    reader.until(lambda r: len(r[t.verdicts]) >= 300, timeout=60, what="second wave")
    config("after", 0.99).dump(path)  # tier 0 now audits what it is not 99% sure of
    reader.settle(1.0)
    produce(broker.bootstrap, t.events, [event_json(f"c{i}-{unique}", when=now) for i in range(200)])
    reader.until(lambda r: len(r[t.verdicts]) >= 500, timeout=60, what="third wave")
    pipe.signal(signal.SIGTERM)
    assert pipe.wait(30) == 0, pipe.output()
    reader.settle()
    verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
    summaries = [summary_pb2.Summary.FromString(m.value) for m in reader.records[t.summaries]]
    reader.close()

    ids = [v.event_id for v in verdicts]
    assert len(ids) == len(set(ids)) == 500  # nothing lost, nothing judged twice
    version = {v.event_id[0]: set() for v in verdicts}
    for v in verdicts:
        version[v.event_id[0]].add(v.cascade_version)
    assert version == {"a": {"before"}, "b": {"before"}, "c": {"after"}}
    totals: collections.Counter[str] = collections.Counter()
    for s in summaries:
        if s.dimension == "":
            totals[s.cascade_version] += s.events_in
            assert s.events_in == s.unsampled + s.judged + s.dead_lettered
    assert totals == {"before": 300, "after": 200}
    log = pipe.output()
    assert "is not a valid cascade config" in log and "version after replaces before" in log
