from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RawBytes(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Value(_message.Message):
    __slots__ = ("f", "i", "s", "b", "list")
    F_FIELD_NUMBER: _ClassVar[int]
    I_FIELD_NUMBER: _ClassVar[int]
    S_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    LIST_FIELD_NUMBER: _ClassVar[int]
    f: float
    i: int
    s: str
    b: bool
    list: ValueList
    def __init__(self, f: _Optional[float] = ..., i: _Optional[int] = ..., s: _Optional[str] = ..., b: _Optional[bool] = ..., list: _Optional[_Union[ValueList, _Mapping]] = ...) -> None: ...

class ValueList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, items: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Entry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: Value
    def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class Metric(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: float
    def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class ArraySpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "nbytes", "codec")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    nbytes: int
    codec: str
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., nbytes: _Optional[int] = ..., codec: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("code", "text")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    code: str
    text: str
    def __init__(self, code: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("kind", "run_id", "round", "src", "dst", "message_id", "reply_to", "deadline", "created", "config", "metrics", "arrays", "payload_bytes", "error", "dsts", "dst_message_ids", "run_config", "seed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DSTS_FIELD_NUMBER: _ClassVar[int]
    DST_MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    run_id: str
    round: int
    src: int
    dst: int
    message_id: str
    reply_to: str
    deadline: float
    created: float
    config: _containers.RepeatedCompositeFieldContainer[Entry]
    metrics: _containers.RepeatedCompositeFieldContainer[Metric]
    arrays: _containers.RepeatedCompositeFieldContainer[ArraySpec]
    payload_bytes: int
    error: ErrorInfo
    dsts: _containers.RepeatedScalarFieldContainer[int]
    dst_message_ids: _containers.RepeatedScalarFieldContainer[str]
    run_config: _containers.RepeatedCompositeFieldContainer[Entry]
    seed: int
    def __init__(self, kind: _Optional[str] = ..., run_id: _Optional[str] = ..., round: _Optional[int] = ..., src: _Optional[int] = ..., dst: _Optional[int] = ..., message_id: _Optional[str] = ..., reply_to: _Optional[str] = ..., deadline: _Optional[float] = ..., created: _Optional[float] = ..., config: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., metrics: _Optional[_Iterable[_Union[Metric, _Mapping]]] = ..., arrays: _Optional[_Iterable[_Union[ArraySpec, _Mapping]]] = ..., payload_bytes: _Optional[int] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., dsts: _Optional[_Iterable[int]] = ..., dst_message_ids: _Optional[_Iterable[str]] = ..., run_config: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., seed: _Optional[int] = ...) -> None: ...

class End(_message.Message):
    __slots__ = ("message_id", "ok", "reason")
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    ok: bool
    reason: str
    def __init__(self, message_id: _Optional[str] = ..., ok: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("version", "role", "public_key", "has_node_id", "node_id", "properties", "name")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HAS_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    version: int
    role: str
    public_key: bytes
    has_node_id: bool
    node_id: int
    properties: _containers.RepeatedCompositeFieldContainer[Entry]
    name: str
    def __init__(self, version: _Optional[int] = ..., role: _Optional[str] = ..., public_key: _Optional[bytes] = ..., has_node_id: _Optional[bool] = ..., node_id: _Optional[int] = ..., properties: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., name: _Optional[str] = ...) -> None: ...

class Challenge(_message.Message):
    __slots__ = ("nonce", "coordinator_id")
    NONCE_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    coordinator_id: str
    def __init__(self, nonce: _Optional[bytes] = ..., coordinator_id: _Optional[str] = ...) -> None: ...

class Auth(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("node_id", "heartbeat_s", "max_chunk", "coordinator_id")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_FIELD_NUMBER: _ClassVar[int]
    COORDINATOR_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    heartbeat_s: float
    max_chunk: int
    coordinator_id: str
    def __init__(self, node_id: _Optional[int] = ..., heartbeat_s: _Optional[float] = ..., max_chunk: _Optional[int] = ..., coordinator_id: _Optional[str] = ...) -> None: ...

class Refused(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent",)
    SENT_FIELD_NUMBER: _ClassVar[int]
    sent: float
    def __init__(self, sent: _Optional[float] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "properties", "connected_since", "last_seen", "key_fingerprint", "name", "in_flight")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROPERTIES_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    properties: _containers.RepeatedCompositeFieldContainer[Entry]
    connected_since: float
    last_seen: float
    key_fingerprint: str
    name: str
    in_flight: int
    def __init__(self, node_id: _Optional[int] = ..., properties: _Optional[_Iterable[_Union[Entry, _Mapping]]] = ..., connected_since: _Optional[float] = ..., last_seen: _Optional[float] = ..., key_fingerprint: _Optional[str] = ..., name: _Optional[str] = ..., in_flight: _Optional[int] = ...) -> None: ...

class ListNodes(_message.Message):
    __slots__ = ("min_nodes", "wait_s")
    MIN_NODES_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    min_nodes: int
    wait_s: float
    def __init__(self, min_nodes: _Optional[int] = ..., wait_s: _Optional[float] = ...) -> None: ...

class NodeList(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeInfo]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeInfo, _Mapping]]] = ...) -> None: ...

class RunRecord(_message.Message):
    __slots__ = ("run_id", "status", "project", "seed", "num_rounds", "rounds_done", "created", "updated", "summary_json", "error")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PROJECT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_DONE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    status: str
    project: str
    seed: int
    num_rounds: int
    rounds_done: int
    created: float
    updated: float
    summary_json: str
    error: str
    def __init__(self, run_id: _Optional[str] = ..., status: _Optional[str] = ..., project: _Optional[str] = ..., seed: _Optional[int] = ..., num_rounds: _Optional[int] = ..., rounds_done: _Optional[int] = ..., created: _Optional[float] = ..., updated: _Optional[float] = ..., summary_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class RunUpdate(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: RunRecord
    def __init__(self, run: _Optional[_Union[RunRecord, _Mapping]] = ...) -> None: ...

class ListRuns(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RunList(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[RunRecord]
    def __init__(self, runs: _Optional[_Iterable[_Union[RunRecord, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("message_ids",)
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("text",)
    TEXT_FIELD_NUMBER: _ClassVar[int]
    text: str
    def __init__(self, text: _Optional[str] = ...) -> None: ...

class Pull(_message.Message):
    __slots__ = ("message_id",)
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    message_id: str
    def __init__(self, message_id: _Optional[str] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("request_id", "hello", "challenge", "auth", "welcome", "refused", "heartbeat", "header", "end", "list_nodes", "nodes", "run_update", "list_runs", "runs", "cancel", "ack", "pull")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    HEADER_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIST_NODES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    RUN_UPDATE_FIELD_NUMBER: _ClassVar[int]
    LIST_RUNS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    PULL_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    hello: Hello
    challenge: Challenge
    auth: Auth
    welcome: Welcome
    refused: Refused
    heartbeat: Heartbeat
    header: Header
    end: End
    list_nodes: ListNodes
    nodes: NodeList
    run_update: RunUpdate
    list_runs: ListRuns
    runs: RunList
    cancel: Cancel
    ack: Ack
    pull: Pull
    def __init__(self, request_id: _Optional[int] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., challenge: _Optional[_Union[Challenge, _Mapping]] = ..., auth: _Optional[_Union[Auth, _Mapping]] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., refused: _Optional[_Union[Refused, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., header: _Optional[_Union[Header, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ..., list_nodes: _Optional[_Union[ListNodes, _Mapping]] = ..., nodes: _Optional[_Union[NodeList, _Mapping]] = ..., run_update: _Optional[_Union[RunUpdate, _Mapping]] = ..., list_runs: _Optional[_Union[ListRuns, _Mapping]] = ..., runs: _Optional[_Union[RunList, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., pull: _Optional[_Union[Pull, _Mapping]] = ...) -> None: ...
