"""The hub sync protocol: versioned wire messages and sans-I/O state machines.

See ``docs/protocol.md``. The transport (websockets) lives elsewhere and only
moves the bytes these machines produce and consume.
"""

from chrysalis_memory.sync.messages import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    ErrorCode,
    SearchFilters,
    SearchHit,
    SyncProtocolError,
)
from chrysalis_memory.sync.protocol import (
    Acked,
    ClientError,
    ClientEvent,
    ClientProtocol,
    ClientState,
    HelloReceived,
    MalformedOp,
    OpsReceived,
    PullRequested,
    PushReceived,
    SearchRequested,
    SearchResult,
    ServerError,
    ServerEvent,
    ServerProtocol,
    ServerState,
    UpdateReceived,
    Welcome,
)

__all__ = [
    "ERROR_CODES",
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Acked",
    "ClientError",
    "ClientEvent",
    "ClientProtocol",
    "ClientState",
    "ErrorCode",
    "HelloReceived",
    "MalformedOp",
    "OpsReceived",
    "PullRequested",
    "PushReceived",
    "SearchFilters",
    "SearchHit",
    "SearchRequested",
    "SearchResult",
    "ServerError",
    "ServerEvent",
    "ServerProtocol",
    "ServerState",
    "SyncProtocolError",
    "UpdateReceived",
    "Welcome",
]
