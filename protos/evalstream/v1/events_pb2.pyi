import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Feedback(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_UNSPECIFIED: _ClassVar[Feedback]
    FEEDBACK_POSITIVE: _ClassVar[Feedback]
    FEEDBACK_NEGATIVE: _ClassVar[Feedback]
FEEDBACK_UNSPECIFIED: Feedback
FEEDBACK_POSITIVE: Feedback
FEEDBACK_NEGATIVE: Feedback

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class TokenCounts(_message.Message):
    __slots__ = ("prompt", "completion")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    prompt: int
    completion: int
    def __init__(self, prompt: _Optional[int] = ..., completion: _Optional[int] = ...) -> None: ...

class LLMEvent(_message.Message):
    __slots__ = ("event_id", "event_time", "model", "model_version", "route", "tenant", "messages", "response", "finish_reason", "tokens", "latency_ms", "reference_answer", "feedback", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ANSWER_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_time: _timestamp_pb2.Timestamp
    model: str
    model_version: str
    route: str
    tenant: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    response: str
    finish_reason: str
    tokens: TokenCounts
    latency_ms: float
    reference_answer: str
    feedback: Feedback
    labels: _containers.ScalarMap[str, str]
    def __init__(self, event_id: _Optional[str] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., model: _Optional[str] = ..., model_version: _Optional[str] = ..., route: _Optional[str] = ..., tenant: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., response: _Optional[str] = ..., finish_reason: _Optional[str] = ..., tokens: _Optional[_Union[TokenCounts, _Mapping]] = ..., latency_ms: _Optional[float] = ..., reference_answer: _Optional[str] = ..., feedback: _Optional[_Union[Feedback, str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...
