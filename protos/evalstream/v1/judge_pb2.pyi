from evalstream.v1 import events_pb2 as _events_pb2
from evalstream.v1 import verdict_pb2 as _verdict_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JudgeItem(_message.Message):
    __slots__ = ("item_id", "event")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    event: _events_pb2.LLMEvent
    def __init__(self, item_id: _Optional[str] = ..., event: _Optional[_Union[_events_pb2.LLMEvent, _Mapping]] = ...) -> None: ...

class JudgeRequest(_message.Message):
    __slots__ = ("items", "dimensions")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[JudgeItem]
    dimensions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[JudgeItem, _Mapping]]] = ..., dimensions: _Optional[_Iterable[str]] = ...) -> None: ...

class ItemResult(_message.Message):
    __slots__ = ("item_id", "judgements", "error", "error_type", "stats", "dimension_errors", "extra")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENTS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_ERRORS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    judgements: _containers.RepeatedCompositeFieldContainer[_verdict_pb2.Judgement]
    error: str
    error_type: str
    stats: _containers.ScalarMap[str, float]
    dimension_errors: _containers.RepeatedCompositeFieldContainer[DimensionError]
    extra: _containers.ScalarMap[str, str]
    def __init__(self, item_id: _Optional[str] = ..., judgements: _Optional[_Iterable[_Union[_verdict_pb2.Judgement, _Mapping]]] = ..., error: _Optional[str] = ..., error_type: _Optional[str] = ..., stats: _Optional[_Mapping[str, float]] = ..., dimension_errors: _Optional[_Iterable[_Union[DimensionError, _Mapping]]] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class DimensionError(_message.Message):
    __slots__ = ("dimension", "error", "error_type")
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    dimension: str
    error: str
    error_type: str
    def __init__(self, dimension: _Optional[str] = ..., error: _Optional[str] = ..., error_type: _Optional[str] = ...) -> None: ...

class JudgeResponse(_message.Message):
    __slots__ = ("results", "judge", "tier")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ItemResult]
    judge: str
    tier: int
    def __init__(self, results: _Optional[_Iterable[_Union[ItemResult, _Mapping]]] = ..., judge: _Optional[str] = ..., tier: _Optional[int] = ...) -> None: ...
