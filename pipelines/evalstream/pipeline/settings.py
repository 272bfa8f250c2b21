"""Pipeline settings: explicit ``run(argv)`` flags, then ``EVALSTREAM_PIPELINE_*`` env, then defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from evalstream.wire import topics

__all__ = ["PipelineSettings", "parse_endpoints"]


def parse_endpoints(spec: str) -> dict[int, str]:
    """``"0=127.0.0.1:50051,1=127.0.0.1:50052"`` -> {0: "127.0.0.1:50051", 1: "127.0.0.1:50052"}."""
    endpoints: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        tier, sep, target = part.partition("=")
        if not sep or not tier.strip().isdigit() or not target.strip():
            raise ValueError(
                f"judge endpoint {part!r} should look like TIER=HOST:PORT, e.g. 0=127.0.0.1:50051"
            )
        endpoints[int(tier)] = target.strip()
    return endpoints


class PipelineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALSTREAM_PIPELINE_", frozen=True, extra="ignore")

    #: Topic the LLM events arrive on.
    input_topic: str = topics.EVENTS
    verdicts_topic: str = topics.VERDICTS
    summaries_topic: str = topics.SUMMARIES
    deadletter_topic: str = topics.DEADLETTER
    audit_topic: str = topics.AUDIT
    #: Consumer group; offsets are committed inside each batch's transaction.
    group_id: str = "evalstream-pipeline"
    #: Judge gRPC targets per tier, "TIER=HOST:PORT,...".
    judges: str = "0=127.0.0.1:50051"
    #: Cascade config YAML (``evalstream calibrate`` writes one); empty: tier 0 accepts everything.
    cascade_config: Path | None = None
    #: Sampling config YAML; empty: judge every event.
    sampling_config: Path | None = None
    #: A micro-batch closes at this many records ...
    max_batch_records: Annotated[int, Field(ge=1)] = 5000
    #: ... or this many seconds after its first record, whichever comes first.
    max_batch_wait_s: Annotated[float, Field(gt=0)] = 0.5
    #: Items per judge request.
    judge_batch_size: Annotated[int, Field(ge=1)] = 256
    #: One overall deadline per judge call, retries included.
    judge_deadline_s: Annotated[float, Field(gt=0)] = 10.0
    #: Per-tier deadlines for tiers that need longer (tier -> seconds); the LLM tier judges a batch of
    #: hundreds of items a few at a time. In the environment as JSON:
    #: ``EVALSTREAM_PIPELINE_JUDGE_TIER_DEADLINES_S='{"2": 120}'``.
    judge_tier_deadlines_s: dict[int, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {2: 120.0}
    )
    #: Consecutive failed judge attempts that open a tier's circuit (calls then fail fast); 0: no breaker.
    judge_breaker_failures: Annotated[int, Field(ge=0)] = 5
    #: Seconds a tier's circuit stays open before one probe call is let through.
    judge_breaker_open_s: Annotated[float, Field(ge=0)] = 5.0
    #: Share of sampled events in the embedding probe's sample: those tier 1 did not judge are sent to it
    #: for their embedding statistics only (drift; never a label). 0: off. Off without a tier-1 judge.
    embedding_probe_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    #: Events larger than this are dead-lettered as "oversized".
    max_event_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    #: Events older than this many hours are dead-lettered as "stale_event_time".
    max_event_age_h: Annotated[float, Field(gt=0)] = 24 * 7
    #: How many recent event ids are remembered to drop duplicates across batches.
    dedupe_window: Annotated[int, Field(ge=1)] = 200_000
    #: Write outputs and commit offsets in one Kafka transaction (exactly once). Off: at least once.
    transactional: bool = True
    #: Transactional id, stable per pipeline instance (one process per id): a restarted instance fences
    #: its predecessor and Kafka aborts the transaction it left open (docs/kafka.md).
    transactional_id: str = "evalstream-pipeline-0"
    #: Static group membership (KIP-345): a restarted process with the same id gets its partitions back
    #: at once instead of waiting for the group's session timeout to expire the dead member.
    #: One per pipeline process; empty: the transactional id.
    group_instance_id: str = ""
    #: Serve the process's own health on http://metrics_host:metrics_port/metrics (None: off; 0: any
    #: free port, logged). See ``pipelines/evalstream/pipeline/metrics.py``.
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    metrics_host: str = "127.0.0.1"
    #: Exit once no new records arrive for this many seconds (0: run forever).
    exit_when_idle_s: Annotated[float, Field(ge=0)] = 0.0

    @field_validator("judges")
    @classmethod
    def _valid_judges(cls, value: str) -> str:
        parse_endpoints(value)
        return value
