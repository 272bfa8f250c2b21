"""The cascade on real parts: tier 0 (rules), tier 1 (encoder) and tier 2 (LLM judge against the
replay LLM server), each its own process; calibrated on live judgements; then the pipeline process
uses the calibrated config on replayed XSTest traffic."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest

from evalstream.local import servers
from evalstream.local.broker import EmbeddedBroker
from evalstream.local.supervisor import ChildProcess
from evalstream.pipeline.judge_client import JudgeClient, RetryPolicy
from evalstream.runtime.settings import KafkaSettings
from evalstream.tools.collect import calibrate_live, collect_xstest
from evalstream.tools.replay import ReplayOptions, run_replay
from evalstream.v1 import summary_pb2, verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule
from evalstream.wire.dimensions import LABELS, Dimension

from .kafka_helpers import TopicReader
from .real_parts import Topics
from .test_pipeline_run import pipeline_process

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, encoder_artefact: Path) -> Iterator[dict[int, str]]:
    logs = tmp_path_factory.mktemp("tiers")
    started: list[ChildProcess] = []
    try:
        llm = servers.replay_llm(log_file=logs / "llm.log")
        started.append(llm)
        llm_url = llm.start()
        env = {
            0: {},
            1: {"EVALSTREAM_ENCODER_MODEL_DIR": str(encoder_artefact)},
            2: {"EVALSTREAM_LLM_BASE_URL": llm_url + "/v1"},
        }
        addresses = {}
        for tier, name in ((0, "rules"), (1, "encoder"), (2, "llm")):
            child = servers.judge_server(name, log_file=logs / f"{name}.log", env=env[tier])
            started.append(child)
            addresses[tier] = child.start(timeout=180)
        yield addresses
    finally:
        for child in reversed(started):
            child.stop()


def test_live_calibration_then_the_pipeline_escalates_by_it(
    broker: EmbeddedBroker, tiers: dict[int, str], unique: str, tmp_path: Path, children: list[ChildProcess]
) -> None:
    policy = RetryPolicy(deadline_s=120, attempt_timeout_s=120)
    clients = {t: JudgeClient(a, tier=t, policy=policy) for t, a in tiers.items()}
    try:
        data = collect_xstest(sorted(tiers), lambda t, request: clients[t].judge(request))
    finally:
        for client in clients.values():
            client.close()
    # Every tier answered every item, with labels from the closed set and confidences in [0, 1].
    per_tier = collections.Counter(j.tier for j in data.judgements)
    assert per_tier == {0: 2250, 1: 2250, 2: 2250}
    assert all(j.label is None or j.label in LABELS[Dimension.REFUSAL] for j in data.judgements)
    assert all(0.0 <= j.confidence <= 1.0 for j in data.judgements)

    alpha = 0.15
    live = calibrate_live(data, alpha=alpha, delta=0.1)
    refusal = live.config.dimensions["refusal"]
    # Tiers that certify nothing below the last are dropped; the last tier stays (maybe never accepting).
    kept = [r.tier for r in refusal.tiers]
    assert kept == sorted(set(kept)) and set(kept) <= {0, 1, 2} and kept[-1] == 2
    # The guarantee is checked on the held-out half, not assumed (sampling noise allowed for: the
    # bound is on the calibration half; the test half is a fresh draw of about the same size).
    assert live.test_agreement is not None and live.test_agreement >= 1 - alpha - 0.05
    assert 0 < live.test_coverage <= 1

    # An accepting variant too, so that some events are decided at tier 2 in the pipeline run.
    accepting = CascadeConfig(
        version=f"{live.config.version}+accept-llm",
        dimensions={
            "refusal": DimensionCascade(tiers=[*refusal.tiers[:-1], TierRule(tier=2, threshold=0.0)]),
            "format": live.config.dimensions["format"],
        },
    )
    config_path = tmp_path / "cascade.yaml"
    accepting.dump(config_path)

    t = Topics(unique)
    t.create(broker.bootstrap, events=False)
    report = run_replay(
        ReplayOptions(topic=t.events, limit=600, seed=3, run_id=unique),
        KafkaSettings(bootstrap=broker.bootstrap),
        show_progress=False,
    )
    judges = ",".join(f"{tier}={address}" for tier, address in tiers.items())
    pipe = pipeline_process(
        broker, "unused", t, unique, tmp_path, "--exit-when-idle-s", "4", "--cascade-config", str(config_path)
    )
    pipe.cmd[pipe.cmd.index("--judges") + 1] = judges
    children.append(pipe)
    pipe.start(timeout=60)
    assert pipe.wait(300) == 0, pipe.output()[-3000:]

    reader = TopicReader(broker.bootstrap, [t.verdicts, t.summaries, t.dead])
    reader.until(lambda r: len(r[t.verdicts]) >= report.good, timeout=60, what="verdicts")
    reader.settle()
    verdicts = [verdict_pb2.Verdict.FromString(m.value) for m in reader.records[t.verdicts]]
    summaries = [summary_pb2.Summary.FromString(m.value) for m in reader.records[t.summaries]]
    reader.close()
    assert len(verdicts) == report.good == 600
    assert {v.cascade_version for v in verdicts} == {accepting.version}
    decided = collections.Counter()
    for v in verdicts:
        (dim,) = [d for d in v.dimensions if d.dimension == "refusal"]
        decided[dim.deciding_tier] += 1
        assert list(dim.tiers_tried) == sorted(dim.tiers_tried) and dim.tiers_tried[-1] == dim.deciding_tier
        threshold = {r.tier: r.threshold for r in accepting.dimensions["refusal"].tiers}
        # accepted where confident, or decided by the last tier
        assert dim.confidence >= threshold[dim.deciding_tier] or dim.deciding_tier == 2
        assert dim.label in LABELS[Dimension.REFUSAL]
    assert decided[0] > 0 and decided[2] > 0, decided
    calls = collections.Counter()
    for s in summaries:
        if s.dimension == "refusal":
            calls.update(dict(s.calls_by_tier))
    assert calls[0] == 600 and calls[2] == decided[2]
