"""dfs's one ZooKeeper client, behind the `ZkClient` contract.

Everyone (mount, nodes, tools) speaks to ZooKeeper through a `ZkClient`; the
implementation is `dfs.zk.session.WireZk`, a trio-native client on one socket.
Only this package imports kazoo (its serialization classes and exception
names); everything else takes its error names, `Txn`, `ZnodeStat` and
`connect()` from here.
"""

import ssl
from typing import Any, Callable, Protocol

from dfs.zk.errors import (
    RETRYABLE,
    BadVersionError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    SessionExpiredError,
    ZkUnavailable,
)
from dfs.zk.session import WireZk  # noqa: E402  (after the names it imports)
from dfs.zk.txn import Txn
from dfs.zk.wire import ZkState, ZnodeStat

__all__ = [
    "RETRYABLE", "BadVersionError", "ConnectionLoss", "NoAuthError", "NoNodeError", "NodeExistsError",
    "NotEmptyError", "RolledBackError", "SessionExpiredError", "Txn", "ZkClient", "ZkState",
    "ZkUnavailable", "ZnodeStat", "connect",
]


class ZkClient(Protocol):
    """The contract every dfs module relies on (WireZk implements it).

    Calls are trio coroutines. A session's calls reach ZooKeeper in the order
    they were made, also when a lost connection makes the client send them
    again. A call retries connection loss until the client's op_timeout and
    then raises ZkUnavailable (EIO); the outcomes a caller
    decides on (NoNodeError, NodeExistsError, BadVersionError, NotEmptyError)
    reach it unchanged. Paths are relative to the client's chroot.
    """

    chroot: str
    op_timeout: float
    hosts: list[tuple[str, int]]  # the servers (mntr, dfs.maint.capacity)
    tls: ssl.SSLContext | None  # they are reached over TLS (dfs/zk/tls.py)

    @property
    def connected(self) -> bool: ...
    @property
    def session_id(self) -> int | None: ...
    @property
    def last_zxid(self) -> int: ...

    def add_listener(self, fn: Callable[[str], Any]) -> None: ...
    def remove_listener(self, fn: Callable[[str], Any]) -> None: ...
    async def wait_connected(self, deadline: float) -> None: ...
    def authenticate(self, key: bytes, root: str) -> None: ...
    def acl_for(self, path: str) -> list: ...
    async def get_acl(self, path: str) -> list: ...
    async def restrict(self, path: str) -> None: ...
    async def close(self) -> None: ...

    async def get(self, path: str, watch: Callable | None = None) -> tuple[bytes, ZnodeStat]: ...
    async def get_children(self, path: str, watch: Callable | None = None) -> list[str]: ...
    async def exists(self, path: str) -> ZnodeStat | None: ...
    async def create(self, path: str, value: bytes = b"", *, ephemeral: bool = False,
                     sequence: bool = False, makepath: bool = False) -> str: ...
    async def set(self, path: str, value: bytes, version: int = -1) -> ZnodeStat: ...
    async def delete(self, path: str, version: int = -1) -> None: ...
    async def delete_recursive(self, path: str) -> None: ...
    async def ensure_path(self, path: str) -> None: ...
    async def commit(self, txn: Txn) -> list[Any]: ...

    async def read_many(self, reads: list[tuple[str, str]], batch: int = 512) -> list[Any]: ...
    async def get_many(self, paths: list[str], batch: int = 512) -> list[tuple[bytes, ZnodeStat] | None]: ...
    async def children_many(self, paths: list[str]) -> list[list[str] | None]: ...
    async def add_feed(self, path: str, fn: Callable[[int | None, str | None], None]) -> None: ...


async def connect(hosts: str, *, timeout: float = 10.0, session_timeout: float = 10.0,
                  op_timeout: float = 60.0, bound_outage: bool = False,
                  tls: ssl.SSLContext | None = None) -> ZkClient:
    """A connected client, or ZkUnavailable after `timeout` seconds (WireZk's arguments;
    `tls`: the context for a "tls:" hosts string, see dfs/zk/tls.py)."""
    return await WireZk.connect(hosts, timeout=timeout, session_timeout=session_timeout,
                                op_timeout=op_timeout, bound_outage=bound_outage, tls=tls)
