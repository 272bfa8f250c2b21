import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Cost(_message.Message):
    __slots__ = ("input_tokens", "output_tokens", "latency_ms", "usd")
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    USD_FIELD_NUMBER: _ClassVar[int]
    input_tokens: int
    output_tokens: int
    latency_ms: float
    usd: float
    def __init__(self, input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., latency_ms: _Optional[float] = ..., usd: _Optional[float] = ...) -> None: ...

class Judgement(_message.Message):
    __slots__ = ("dimension", "label", "score", "confidence", "cost", "judge", "rationale", "confidence_source", "tier")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    label: str
    score: float
    confidence: float
    cost: Cost
    judge: str
    rationale: str
    confidence_source: str
    tier: int
    def __init__(self, dimension: _Optional[str] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., confidence: _Optional[float] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., judge: _Optional[str] = ..., rationale: _Optional[str] = ..., confidence_source: _Optional[str] = ..., tier: _Optional[int] = ...) -> None: ...

class DimensionVerdict(_message.Message):
    __slots__ = ("dimension", "label", "score", "confidence", "deciding_tier", "tiers_tried", "cost", "judge", "needs_audit", "confidence_source", "judgements")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DECIDING_TIER_FIELD_NUMBER: _ClassVar[int]
    TIERS_TRIED_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    NEEDS_AUDIT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENTS_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    label: str
    score: float
    confidence: float
    deciding_tier: int
    tiers_tried: _containers.RepeatedScalarFieldContainer[int]
    cost: Cost
    judge: str
    needs_audit: bool
    confidence_source: str
    judgements: _containers.RepeatedCompositeFieldContainer[Judgement]
    def __init__(self, dimension: _Optional[str] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., confidence: _Optional[float] = ..., deciding_tier: _Optional[int] = ..., tiers_tried: _Optional[_Iterable[int]] = ..., cost: _Optional[_Union[Cost, _Mapping]] = ..., judge: _Optional[str] = ..., needs_audit: _Optional[bool] = ..., confidence_source: _Optional[str] = ..., judgements: _Optional[_Iterable[_Union[Judgement, _Mapping]]] = ...) -> None: ...

class Verdict(_message.Message):
    __slots__ = ("event_id", "event_time", "model", "model_version", "route", "dimensions", "sample_rate", "forced", "judged_at", "cascade_version", "response_chars", "response_stats", "embedding_probe", "calibration_sample")
    class ResponseStatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    FORCED_FIELD_NUMBER: _ClassVar[int]
    JUDGED_AT_FIELD_NUMBER: _ClassVar[int]
    CASCADE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_CHARS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_STATS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_PROBE_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_time: _timestamp_pb2.Timestamp
    model: str
    model_version: str
    route: str
    dimensions: _containers.RepeatedCompositeFieldContainer[DimensionVerdict]
    sample_rate: float
    forced: bool
    judged_at: _timestamp_pb2.Timestamp
    cascade_version: str
    response_chars: int
    response_stats: _containers.ScalarMap[str, float]
    embedding_probe: EmbeddingProbe
    calibration_sample: bool
    def __init__(self, event_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., route: _Optional[str] = ..., dimensions: _Optional[_Iterable[_Union[DimensionVerdict, _Mapping]]] = ..., sample_rate: _Optional[float] = ..., forced: _Optional[bool] = ..., judged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cascade_version: _Optional[str] = ..., response_chars: _Optional[int] = ..., response_stats: _Optional[_Mapping[str, float]] = ..., embedding_probe: _Optional[_Union[EmbeddingProbe, _Mapping]] = ..., calibration_sample: _Optional[bool] = ...) -> None: ...

class EmbeddingProbe(_message.Message):
    __slots__ = ("tier", "called", "error")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CALLED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    tier: int
    called: bool
    error: str
    def __init__(self, tier: _Optional[int] = ..., called: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class DeadLetter(_message.Message):
    __slots__ = ("raw", "stage", "error_type", "message", "source_topic", "source_partition", "source_offset", "event_id", "failed_at", "raw_truncated", "raw_size", "model")
    RAW_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    FAILED_AT_FIELD_NUMBER: _ClassVar[int]
    RAW_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    RAW_SIZE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    raw: bytes
    stage: str
    error_type: str
    message: str
    source_topic: str
    source_partition: int
    source_offset: int
    event_id: str
    failed_at: _timestamp_pb2.Timestamp
    raw_truncated: bool
    raw_size: int
    model: str
    def __init__(self, raw: _Optional[bytes] = ..., stage: _Optional[str] = ..., error_type: _Optional[str] = ..., message: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., event_id: _Optional[str] = ..., failed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., raw_truncated: _Optional[bool] = ..., raw_size: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...
