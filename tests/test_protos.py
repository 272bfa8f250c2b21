"""The committed generated code matches the .proto files, and the messages round-trip."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

from evalstream.v1 import events_pb2, judge_pb2, summary_pb2, verdict_pb2

ROOT = Path(__file__).resolve().parents[1]
GENERATED = ROOT / "protos" / "evalstream" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = tmp_path / "evalstream" / "v1"
    names = sorted(p.name for p in fresh.iterdir() if "_pb2" in p.name)
    assert names, "protoc generated nothing"
    stale = [n for n in names if not filecmp.cmp(fresh / n, GENERATED / n, shallow=False)]
    committed = sorted(p.name for p in GENERATED.iterdir() if "_pb2" in p.name)
    assert stale == [], f"stale generated code {stale}: run `python protos/generate.py` and commit"
    assert committed == names, "generated file set differs: run `python protos/generate.py`"


def test_messages_round_trip() -> None:
    event = events_pb2.LLMEvent(event_id="e1", model="m", response="r", labels={"k": "v"})
    event.reference_answer = ""
    verdict = verdict_pb2.Verdict(
        event_id="e1",
        dimensions=[
            verdict_pb2.DimensionVerdict(dimension="refusal", label="full_refusal", tiers_tried=[0, 1])
        ],
    )
    summary = summary_pb2.Summary(batch_id="b", label_counts={"x": 3}, decided_by_tier={0: 2})
    request = judge_pb2.JudgeRequest(items=[judge_pb2.JudgeItem(item_id="e1", event=event)])
    for msg in (event, verdict, summary, request):
        again = type(msg).FromString(msg.SerializeToString())
        assert again == msg
    assert events_pb2.LLMEvent.FromString(event.SerializeToString()).HasField("reference_answer")
