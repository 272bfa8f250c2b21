from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Summary(_message.Message):
    __slots__ = ("batch_id", "model", "model_version", "route", "dimension", "window_start_unix", "events_in", "unsampled", "judged", "dead_lettered", "dead_letter_reasons", "duplicates", "label_counts", "score_sum", "score_sq_sum", "confidence_sum", "audits", "decided_by_tier", "calls_by_tier", "input_tokens", "output_tokens", "judge_latency_ms_sum", "cost_usd", "response_chars_sum", "response_chars_sketch", "score_sketch", "response_stat_sketches", "embedding_probe_events", "embedding_probe_failures", "cascade_version")
    class DeadLetterReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class LabelCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DecidedByTierEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class CallsByTierEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    class ResponseStatSketchesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_UNIX_FIELD_NUMBER: _ClassVar[int]
    EVENTS_IN_FIELD_NUMBER: _ClassVar[int]
    UNSAMPLED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTER_REASONS_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    LABEL_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SCORE_SUM_FIELD_NUMBER: _ClassVar[int]
    SCORE_SQ_SUM_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SUM_FIELD_NUMBER: _ClassVar[int]
    AUDITS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_TIER_FIELD_NUMBER: _ClassVar[int]
    CALLS_BY_TIER_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_LATENCY_MS_SUM_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CHARS_SUM_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CHARS_SKETCH_FIELD_NUMBER: _ClassVar[int]
    SCORE_SKETCH_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_STAT_SKETCHES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_PROBE_EVENTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_PROBE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CASCADE_VERSION_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    model: str
    model_version: str
    route: str
    dimension: str
    window_start_unix: int
    events_in: int
    unsampled: int
    judged: int
    dead_lettered: int
    dead_letter_reasons: _containers.ScalarMap[str, int]
    duplicates: int
    label_counts: _containers.ScalarMap[str, int]
    score_sum: float
    score_sq_sum: float
    confidence_sum: float
    audits: int
    decided_by_tier: _containers.ScalarMap[int, int]
    calls_by_tier: _containers.ScalarMap[int, int]
    input_tokens: int
    output_tokens: int
    judge_latency_ms_sum: float
    cost_usd: float
    response_chars_sum: float
    response_chars_sketch: bytes
    score_sketch: bytes
    response_stat_sketches: _containers.ScalarMap[str, bytes]
    embedding_probe_events: int
    embedding_probe_failures: int
    cascade_version: str
    def __init__(self, batch_id: _Optional[str] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., route: _Optional[str] = ..., dimension: _Optional[str] = ..., window_start_unix: _Optional[int] = ..., events_in: _Optional[int] = ..., unsampled: _Optional[int] = ..., judged: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., dead_letter_reasons: _Optional[_Mapping[str, int]] = ..., duplicates: _Optional[int] = ..., label_counts: _Optional[_Mapping[str, int]] = ..., score_sum: _Optional[float] = ..., score_sq_sum: _Optional[float] = ..., confidence_sum: _Optional[float] = ..., audits: _Optional[int] = ..., decided_by_tier: _Optional[_Mapping[int, int]] = ..., calls_by_tier: _Optional[_Mapping[int, int]] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., judge_latency_ms_sum: _Optional[float] = ..., cost_usd: _Optional[float] = ..., response_chars_sum: _Optional[float] = ..., response_chars_sketch: _Optional[bytes] = ..., score_sketch: _Optional[bytes] = ..., response_stat_sketches: _Optional[_Mapping[str, bytes]] = ..., embedding_probe_events: _Optional[int] = ..., embedding_probe_failures: _Optional[int] = ..., cascade_version: _Optional[str] = ...) -> None: ...
