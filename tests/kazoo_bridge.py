"""The kazoo <-> trio bridge dfs used before WireZk, kept as an independent oracle for
tests/test_zkwire.py: WireZk must give the same answers and errors as kazoo's client.

kazoo runs its own threads; every call here uses kazoo's `*_async` API and hands
the result back to trio through `TrioToken.run_sync_soon` (cheaper than a thread
per call, and many requests are pipelined on one session).

Retryable errors (connection loss, operation timeout, a session being replaced)
are retried here, in one place, until `op_timeout` has passed; everything else
(NoNode, NodeExists, BadVersion, NotEmpty) goes to the caller, which decides
what is idempotent. A retried non-idempotent write may report NodeExists or
BadVersion for a change that did apply: callers treat those outcomes as such.
"""

import logging
import time
from typing import Any, Callable

import trio
from kazoo.client import KazooClient, KazooState
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.serialization import Transaction
from kazoo.protocol.states import ZnodeStat
from kazoo.retry import KazooRetry

from dfs.errors import ZkUnavailable
from dfs.zk.errors import RETRYABLE, RolledBackError
from dfs.zk.txn import Txn
from dfs.zk.wire import GetChildren, GetData, MultiRead

log = logging.getLogger(__name__)




class _TrioResult:
    """A kazoo async result that wakes its trio task straight from kazoo's I/O thread.

    kazoo's own AsyncResult runs callbacks on a separate completion thread: one
    more thread hop (and GIL hand-over) per call. kazoo's connection only calls
    `set` / `set_exception` on the object it is given.
    """

    __slots__ = ("_token", "_event", "_value", "_exc")

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._event = trio.Event()
        self._value: Any = None
        self._exc: BaseException | None = None

    def set(self, value: Any = None) -> None:
        self._value = value
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self._exc = exc
        self._wake()

    def _wake(self) -> None:
        try:
            self._token.run_sync_soon(self._event.set)
        except trio.RunFinishedError:
            pass

    async def wait(self) -> Any:
        await self._event.wait()
        if self._exc is not None:
            raise self._exc
        return self._value


class Zk:
    """One ZooKeeper session used from trio.

    Args:
      client: a started KazooClient.
      op_timeout: how long a call keeps retrying through connection loss before
        it raises ZkUnavailable.
    """

    def __init__(self, client: KazooClient, op_timeout: float = 60.0):
        self.client = client
        self.op_timeout = op_timeout

    @classmethod
    async def connect(cls, hosts: str, *, timeout: float = 10.0, session_timeout: float = 10.0,
                      op_timeout: float = 60.0) -> "Zk":
        """Connect, or raise ZkUnavailable after `timeout` seconds."""
        client = KazooClient(
            hosts=hosts,
            timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.05, max_delay=1.0),
            command_retry=None,
            logger=logging.getLogger("kazoo"),
        )

        def start() -> None:
            try:
                client.start(timeout=timeout)
            except (KazooTimeoutError, Exception):
                client.stop()
                client.close()
                raise

        # kazoo logs every refused attempt of the first connect; the caller
        # reports a failure in one line, so keep them quiet until we are in
        # (reconnect warnings later on still reach the daemons' logs).
        kazoo_log = logging.getLogger("kazoo")
        level = kazoo_log.level
        if not kazoo_log.isEnabledFor(logging.DEBUG):
            kazoo_log.setLevel(logging.CRITICAL)
        try:
            await trio.to_thread.run_sync(start)
        except KazooTimeoutError:
            raise ZkUnavailable(f"cannot reach ZooKeeper at {hosts} within {timeout:g} s") from None
        finally:
            kazoo_log.setLevel(level)
        return cls(client, op_timeout=op_timeout)

    async def close(self) -> None:
        def stop() -> None:
            self.client.stop()
            self.client.close()

        await trio.to_thread.run_sync(stop)

    # -- connection state

    @property
    def connected(self) -> bool:
        return self.client.state == KazooState.CONNECTED

    @property
    def session_id(self) -> int | None:
        cid = self.client.client_id
        return cid[0] if cid else None

    def add_listener(self, fn: Callable[[str], None]) -> None:
        """fn(state) runs on kazoo's thread; it must only hand off to trio."""
        self.client.add_listener(fn)

    async def wait_connected(self, deadline: float) -> None:
        while not self.connected:
            if time.monotonic() > deadline:
                raise ZkUnavailable("lost the ZooKeeper connection and could not get it back")
            await trio.sleep(0.05)

    # -- the bridge

    async def _await(self, async_result: Any) -> Any:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: Any) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        async_result.rawlink(wake)
        await done.wait()
        return async_result.get_nowait()

    async def _retry(self, start: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.op_timeout
        while True:
            try:
                started = start()
                if isinstance(started, _TrioResult):
                    return await started.wait()
                return await self._await(started)
            except RETRYABLE as e:
                log.debug("zk retry after %r", e)
                if time.monotonic() > deadline:
                    raise ZkUnavailable(f"ZooKeeper operation failed: {e!r}") from None
                await trio.sleep(0.05)
                await self.wait_connected(deadline)

    # -- calls

    def _request(self, request: Any) -> Callable[[], _TrioResult]:
        """Send a serialization-level request (its paths already chrooted)."""
        def go() -> _TrioResult:
            result = _TrioResult()
            self.client._call(request, result)
            return result
        return go

    async def get(self, path: str, watch: Callable | None = None) -> tuple[bytes, ZnodeStat]:
        if watch is not None:
            return await self._retry(lambda: self.client.get_async(path, watch))
        return await self._retry(self._request(GetData(self.client.chroot + path, None)))

    async def get_children(self, path: str, watch: Callable | None = None) -> list[str]:
        return await self._retry(lambda: self.client.get_children_async(path, watch))

    async def read_many(self, reads: list[tuple[str, str]], batch: int = 512) -> list[Any]:
        """As WireZk.read_many; kazoo adds the chroot in its own calls, MultiRead bypasses them."""
        kinds = {"get": GetData, "children": GetChildren}
        out: list[Any] = []
        for i in range(0, len(reads), batch):
            request = MultiRead([kinds[k](self.client.chroot + p, None) for k, p in reads[i:i + batch]])
            out += [None if isinstance(r, Exception) else r
                    for r in await self._retry(self._request(request))]
        return out

    async def get_many(self, paths: list[str], batch: int = 512) -> list[tuple[bytes, ZnodeStat] | None]:
        return await self.read_many([("get", p) for p in paths], batch)

    async def children_many(self, paths: list[str]) -> list[list[str] | None]:
        return await self.read_many([("children", p) for p in paths])


    async def exists(self, path: str) -> ZnodeStat | None:
        return await self._retry(lambda: self.client.exists_async(path))

    async def create(self, path: str, value: bytes = b"", *, ephemeral: bool = False,
                     sequence: bool = False, makepath: bool = False) -> str:
        return await self._retry(lambda: self.client.create_async(
            path, value, None, ephemeral, sequence, makepath))

    async def set(self, path: str, value: bytes, version: int = -1) -> ZnodeStat:
        return await self._retry(lambda: self.client.set_async(path, value, version))

    async def delete(self, path: str, version: int = -1) -> None:
        await self._retry(lambda: self.client.delete_async(path, version))

    async def delete_recursive(self, path: str) -> None:
        """Delete a subtree (not atomic; used for cleanup)."""
        await self._retry_sync(lambda: self.client.delete(path, recursive=True))

    async def ensure_path(self, path: str) -> None:
        await self._retry(lambda: self.client.ensure_path_async(path))

    async def _retry_sync(self, fn: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self.op_timeout
        while True:
            try:
                return await trio.to_thread.run_sync(fn)
            except RETRYABLE as e:
                if time.monotonic() > deadline:
                    raise ZkUnavailable(f"ZooKeeper operation failed: {e!r}") from None
                await self.wait_connected(deadline)

    async def commit(self, txn: Txn) -> list[Any]:
        """Commit `txn` atomically. Raises the error of the operation that failed."""
        if not txn.ops:
            return []

        req = self.client.transaction()  # validates and chroots the paths
        for name, args in txn.ops:
            getattr(req, name)(*args)
        results = await self._retry(self._request(Transaction(req.operations)))
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, RolledBackError):
                raise r
        return results
