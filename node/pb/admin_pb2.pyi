from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class FaultRule(_message.Message):
    __slots__ = ("src", "dst", "action", "probability", "delay_ms", "jitter_ms")
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    JITTER_MS_FIELD_NUMBER: _ClassVar[int]
    src: str
    dst: str
    action: str
    probability: float
    delay_ms: float
    jitter_ms: float
    def __init__(self, src: _Optional[str] = ..., dst: _Optional[str] = ..., action: _Optional[str] = ..., probability: _Optional[float] = ..., delay_ms: _Optional[float] = ..., jitter_ms: _Optional[float] = ...) -> None: ...

class FaultRules(_message.Message):
    __slots__ = ("rules",)
    RULES_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[FaultRule]
    def __init__(self, rules: _Optional[_Iterable[_Union[FaultRule, _Mapping]]] = ...) -> None: ...

class FaultRulesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CampaignRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
