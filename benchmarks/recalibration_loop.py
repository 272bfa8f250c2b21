"""The production loop on the shared data: calibrated on one source, run on another, recalibrated.

    .venv/bin/python benchmarks/recalibration_loop.py [--encoder DIR] [--calibrate-on gpt4,mistralinstruct]
        [--traffic mistralguard] [--sample 0.5] [--alpha 0.1] [--delta 0.1]

XSTest v2 (../shared/data) holds five models' completions of the same 450 prompts with adjudicated
human refusal labels. The cascade (tier 0: the rules judge; tier 1: the encoder judge when ``--encoder``
names a trained artefact) is run in process through the pipeline's own cascade core (``judge_batch``,
``pipelines/evalstream/pipeline/cascade.py``) and the judge server's request/response conversions:

1. **calibrate** on the ``--calibrate-on`` models' completions (every tier judges every item, the
   calibration sample at fraction 1), fitting with ``evaluation.recalibrate.refit`` (the same
   ``calibration.calibrate`` as ``evalstream calibrate``) on their labels;
2. **before**: run the ``--traffic`` model's completions through that config, with the calibration
   sample at ``--sample``; human labels come back for the sampled events;
3. **recalibrate**: join those labels with the sampled verdicts' recorded per-tier judgements
   (``join_labels``, as ``evalstream recalibrate`` does from Kafka) and refit;
4. **after**: the same traffic through the new config.

Figures (coverage, last-tier calls per 1,000 items, achieved agreement of accepted verdicts with the
humans) are measured, before and after, on the traffic events **outside** the calibration sample,
which recalibration never saw. Caveat: the rules judge's confidences and the encoder were fitted on
~70% of XSTest's prompts (all five models), so agreement on those prompts is optimistic for both
arms; the held-out-prompt rows (``rules_fit.is_held_out``) are out of sample for the judges too.

Prints a table and writes JSON to benchmarks/results/recalibration_loop.json.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evalstream.evaluation.datasets import XSTestRecord, read_xstest
from evalstream.evaluation.recalibrate import join_labels, refit
from evalstream.judges.base import Judge
from evalstream.judges.rules import RulesJudge
from evalstream.judges.rules_fit import is_held_out
from evalstream.judges.server import check_request, to_inputs, to_response
from evalstream.pipeline.calibration_sample import CalibrationSample
from evalstream.pipeline.cascade import judge_batch
from evalstream.pipeline.records import SampledEvent
from evalstream.v1 import events_pb2, judge_pb2, verdict_pb2
from evalstream.wire.cascade_config import CascadeConfig, DimensionCascade, TierRule, content_version

RESULTS = Path(__file__).resolve().parent / "results"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class InProcess:
    """``call(tier, request)`` through the judge server's conversions, counting items per tier."""

    def __init__(self, judges: dict[int, Judge]) -> None:
        self.judges = judges
        self.items: dict[int, int] = {}

    def __call__(self, tier: int, request: judge_pb2.JudgeRequest) -> judge_pb2.JudgeResponse:
        judge = self.judges[tier]
        self.items[tier] = self.items.get(tier, 0) + len(request.items)
        dims = check_request(request, known=judge.dimensions, max_batch=100_000, judge=judge.name)
        outcomes = judge.judge_batch(to_inputs(request), dims)
        return to_response(outcomes, judge=judge.name, tier=judge.tier, latency_ms_per_item=0.0)


def event_of(record: XSTestRecord, run: str) -> SampledEvent:
    event = events_pb2.LLMEvent(
        event_id=f"{run}/{record.model}/{record.prompt_id}",
        model=record.model,
        model_version=record.model_version,
        route="xstest",
        messages=[events_pb2.Message(role="user", content=record.prompt)],
        response=record.completion,
        finish_reason="stop",
    )
    event.event_time.FromDatetime(NOW)
    return SampledEvent(event=event, sample_rate=1.0, forced=False)


def run(
    records: Sequence[XSTestRecord], cascade: CascadeConfig, call: InProcess, sample: float, run_id: str
) -> list[verdict_pb2.Verdict]:
    items = [event_of(r, run_id) for r in records]
    verdicts: list[verdict_pb2.Verdict] = []
    for start in range(0, len(items), 256):
        outcome = judge_batch(
            items[start : start + 256],
            cascade=cascade,
            call=call,
            now=NOW,
            sample=CalibrationSample(fraction=sample),
        )
        assert not outcome.dead, [d.message for d in outcome.dead[:3]]
        verdicts += outcome.verdicts
    return verdicts


def labels_for(verdicts: Sequence[verdict_pb2.Verdict], truth: dict[str, str]) -> list[bytes]:
    at = (NOW + timedelta(hours=1)).isoformat()
    return [
        json.dumps(
            {
                "event_id": v.event_id,
                "dimension": "refusal",
                "label": truth[v.event_id],
                "annotator": "adjudicated",
                "labelled_at": at,
            }
        ).encode()
        for v in verdicts
        if v.calibration_sample
    ]


def figures(
    verdicts: Sequence[verdict_pb2.Verdict], truth: dict[str, str], last_tier: int, keep: set[str]
) -> dict[str, Any]:
    """Coverage, last-tier calls per 1,000 (as the cascade routes, shadow calls excluded) and the
    agreement of accepted verdicts, on the events in ``keep``."""
    chosen = [v for v in verdicts if v.event_id in keep]
    refusal = [(v, next(d for d in v.dimensions if d.dimension == "refusal")) for v in chosen]
    accepted = [(v, d) for v, d in refusal if not d.needs_audit]
    agree = sum(d.label == truth[v.event_id] for v, d in accepted)
    return {
        "items": len(chosen),
        "coverage": len(accepted) / len(chosen) if chosen else math.nan,
        "last_tier_calls_per_1000": 1000 * sum(last_tier in d.tiers_tried for _, d in refusal) / len(chosen)
        if chosen
        else math.nan,
        "accepted": len(accepted),
        "agreement": agree / len(accepted) if accepted else None,
        "decided_by_tier": {
            str(t): sum(d.deciding_tier == t and not d.needs_audit for _, d in refusal) for t in (0, 1)
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--encoder", type=Path, help="A trained encoder artefact: tier 1 (default: tier 0 only)."
    )
    parser.add_argument(
        "--calibrate-on", default="gpt4,mistralinstruct", help="XSTest models to calibrate on."
    )
    parser.add_argument(
        "--traffic", default="mistralguard", help="XSTest model replayed as production traffic."
    )
    parser.add_argument(
        "--sample", type=float, default=0.5, help="Calibration sample fraction of the traffic."
    )
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--min-items", type=int, default=100)
    parser.add_argument("--out", type=Path, default=RESULTS / "recalibration_loop.json")
    args = parser.parse_args()
    console = Console()
    started = time.monotonic()

    judges: dict[int, Judge] = {0: RulesJudge.load()}
    if args.encoder is not None:
        from evalstream.judges.encoder import EncoderJudge

        judges[1] = EncoderJudge.load(args.encoder)
    tiers = sorted(judges)
    base = CascadeConfig(
        version="uncalibrated",
        alpha=args.alpha,
        delta=args.delta,
        dimensions={"refusal": DimensionCascade(tiers=[TierRule(tier=t, threshold=0.0) for t in tiers])},
    )
    calibration_models = [m.strip() for m in args.calibrate_on.split(",") if m.strip()]
    source = read_xstest(None, models=calibration_models)
    traffic = read_xstest(None, models=[args.traffic])
    call = InProcess(judges)

    # 1. calibrate on the first source: every item judged by every tier, every label known
    truth = {f"cal/{r.model}/{r.prompt_id}": r.final_label.value for r in source}
    judged = run(source, base, call, 1.0, "cal")
    joined = join_labels(judged, labels_for(judged, truth), cascade=base, truth_annotator="adjudicated")
    fitted = refit(joined, base, alpha=args.alpha, delta=args.delta, min_items=args.min_items)
    first = CascadeConfig(version="draft", alpha=args.alpha, delta=args.delta, dimensions=fitted.dimensions)
    first = first.model_copy(update={"version": content_version(first, prefix="calibrated")})

    # 2. the other source as traffic, with the calibration sample
    truth.update({f"traffic/{r.model}/{r.prompt_id}": r.final_label.value for r in traffic})
    before = run(traffic, first, call, args.sample, "traffic")
    sampled = {v.event_id for v in before if v.calibration_sample}
    outside = {v.event_id for v in before} - sampled
    held_out_prompts = {f"traffic/{r.model}/{r.prompt_id}" for r in traffic if is_held_out(r.prompt_id)}

    # 3. recalibrate on the sample's labels, 4. the same traffic under the new config
    joined2 = join_labels(before, labels_for(before, truth), cascade=first, truth_annotator="adjudicated")
    refitted = refit(joined2, first, alpha=args.alpha, delta=args.delta, min_items=args.min_items)
    second = CascadeConfig(
        version="draft", alpha=args.alpha, delta=args.delta, dimensions=refitted.dimensions
    )
    second = second.model_copy(update={"version": content_version(second, prefix="recal")})
    after = run(traffic, second, call, 0.0, "traffic")

    last = max(tiers)
    rows = []
    for name, config, verdicts in (("before", first, before), ("after", second, after)):
        for part, keep in (
            ("outside the sample", outside),
            ("... on held-out prompts", outside & held_out_prompts),
        ):
            rows.append(
                {
                    "config": name,
                    "version": config.version,
                    "rules": ", ".join(t.rule() for t in config.dimensions["refusal"].tiers),
                    "subset": part,
                    **figures(verdicts, truth, last, keep),
                }
            )
    table = Table(
        title=f"calibrated on XSTest {'+'.join(calibration_models)}, traffic {args.traffic} "
        f"(alpha {args.alpha}, delta {args.delta}; target agreement >= {1 - args.alpha:.2f})"
    )
    for column in ("config", "rules", "events", "n", "coverage", f"tier-{last} calls /1000", "agreement"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["config"],
            r["rules"],
            r["subset"],
            str(r["items"]),
            f"{r['coverage']:.3f}",
            f"{r['last_tier_calls_per_1000']:.0f}",
            "-" if r["agreement"] is None else f"{r['agreement']:.3f}",
        )
    console.print(table)
    console.print(
        f"recalibration joined {joined2.outcomes.get('joined', 0)} labels of {len(sampled)} sampled events "
        f"(label outcomes {dict(joined2.outcomes)}); kept: {refitted.kept or 'none'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = "unknown"
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "recalibration_loop",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "commit": commit,
                "tiers": {str(t): judges[t].name for t in tiers},
                "calibrate_on": calibration_models,
                "traffic": args.traffic,
                "sample": args.sample,
                "alpha": args.alpha,
                "delta": args.delta,
                "seconds": round(time.monotonic() - started, 1),
                "calibrated": first.model_dump(mode="json"),
                "recalibrated": second.model_dump(mode="json"),
                "label_outcomes": dict(joined2.outcomes),
                "judge_items": {str(k): v for k, v in sorted(call.items.items())},
                "rows": rows,
            },
            indent=1,
        )
        + "\n"
    )
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
