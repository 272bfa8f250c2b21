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
    """What the pipeline reads and writes, how it batches and calls the judges, what it rejects.

    Each field's docstring is its description: the flag's help (``run.py``) and docs/configuration.md.
    """

    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_PIPELINE_", frozen=True, extra="ignore", use_attribute_docstrings=True
    )

    input_topic: str = topics.EVENTS
    """Topic the LLM events arrive on."""
    verdicts_topic: str = topics.VERDICTS
    """Topic the verdicts are written to."""
    summaries_topic: str = topics.SUMMARIES
    """Topic the per-batch summary partials are written to."""
    deadletter_topic: str = topics.DEADLETTER
    """Topic of dead letters: every rejected input, with its reason."""
    audit_topic: str = topics.AUDIT
    """Topic of verdicts sent for human audit (their judge was unsure: ``needs_audit``)."""
    group_id: str = "evalstream-pipeline"
    """Consumer group; offsets are committed inside each batch's transaction."""
    judges: str = "0=127.0.0.1:50051"
    """Judge gRPC targets per tier, "TIER=HOST:PORT,..."."""
    cascade_config: Path | None = None
    """Cascade config YAML (``evalstream calibrate`` writes one); empty: tier 0 accepts everything."""
    sampling_config: Path | None = None
    """Sampling config YAML; empty: judge every event."""
    max_batch_records: Annotated[int, Field(ge=1)] = 5000
    """A micro-batch closes at this many records, or ``max_batch_wait_s`` after its oldest one was
    produced."""
    max_batch_wait_s: Annotated[float, Field(gt=0)] = 0.5
    """A micro-batch closes this many seconds after its oldest record was produced (its Kafka
    timestamp), or at ``max_batch_records``."""
    judge_batch_size: Annotated[int, Field(ge=1)] = 256
    """Items per judge request."""
    judge_deadline_s: Annotated[float, Field(gt=0)] = 10.0
    """One overall deadline per judge call, retries included."""
    judge_tier_deadlines_s: dict[int, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {2: 120.0}
    )
    """Per-tier deadlines for tiers that need longer (tier -> seconds); the LLM tier judges a batch of
    hundreds of items a few at a time. In the environment as JSON:
    ``EVALSTREAM_PIPELINE_JUDGE_TIER_DEADLINES_S='{"2": 120}'``."""
    judge_breaker_failures: Annotated[int, Field(ge=0)] = 5
    """Consecutive failed judge attempts that open a tier's circuit (calls then fail fast); 0: no breaker."""
    judge_breaker_open_s: Annotated[float, Field(ge=0)] = 5.0
    """Seconds a tier's circuit stays open before one probe call is let through."""
    embedding_probe_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Share of sampled events in the embedding probe's sample: those tier 1 did not judge are sent to it
    for their embedding statistics only (drift; never a label). 0: off. Off without a tier-1 judge."""
    calibration_sample_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    """Share of sampled events in the calibration sample: judged by every tier of each dimension
    (shadow judging, counted as cost) and sent to the audit topic for human labels, for
    ``evalstream recalibrate`` (``calibration_sample.py``). 0: off."""
    cascade_reload_s: Annotated[float, Field(ge=0)] = 2.0
    """Seconds between checks of the cascade config file for a new version (live reload between
    micro-batches, ``config_watch.py``); 0: never reloaded."""
    max_event_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024
    """Events larger than this are dead-lettered as "oversized"."""
    max_event_age_h: Annotated[float, Field(gt=0)] = 24 * 7
    """Events older than this many hours are dead-lettered as "stale_event_time"."""
    dedupe_window: Annotated[int, Field(ge=1)] = 200_000
    """How many recent event ids are remembered to drop duplicates across batches."""
    transactional: bool = True
    """Write outputs and commit offsets in one Kafka transaction (exactly once). Off: at least once."""
    transactional_id: str = "evalstream-pipeline-0"
    """Transactional id, stable per pipeline instance (one process per id): a restarted instance fences
    its predecessor and Kafka aborts the transaction it left open (docs/kafka.md)."""
    group_instance_id: str = ""
    """Static group membership (KIP-345): a restarted process with the same id gets its partitions back
    at once instead of waiting for the group's session timeout to expire the dead member.
    One per pipeline process; empty: the transactional id."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Serve the process's own health on http://metrics_host:metrics_port/metrics (None: off; 0: any
    free port, logged). See ``pipelines/evalstream/pipeline/metrics.py``."""
    metrics_host: str = "127.0.0.1"
    """Address the process's ``/metrics`` binds."""
    exit_when_idle_s: Annotated[float, Field(ge=0)] = 0.0
    """Exit once no new records arrive for this many seconds (0: run forever)."""

    @field_validator("judges")
    @classmethod
    def _valid_judges(cls, value: str) -> str:
        parse_endpoints(value)
        return value
