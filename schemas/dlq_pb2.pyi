from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DeadLetter(_message.Message):
    __slots__ = ("schema_version", "stage", "source_topic", "source_partition", "source_offset", "key", "payload", "reason", "error_type", "failed_us")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    FAILED_US_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    stage: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: bytes
    payload: bytes
    reason: str
    error_type: str
    failed_us: int
    def __init__(self, schema_version: _Optional[int] = ..., stage: _Optional[str] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., key: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., reason: _Optional[str] = ..., error_type: _Optional[str] = ..., failed_us: _Optional[int] = ...) -> None: ...
