"""A trio-native ZooKeeper client: `WireZk` speaks the wire protocol on one TCP socket.

`WireZk` implements `dfs.zk.ZkClient` without kazoo's threads: a call serializes its request with kazoo's
serialization classes, writes it to the socket before it first yields, and parks
until the session's reader task hands it the reply. Every metadata operation of
the mount pays a ZooKeeper round trip, so the ~0.2 ms the kazoo bridge adds per
call (thread hand-offs, callbacks) matters; see tools/benches/zkwirebench.py.

Authentication (README "Security"): `authenticate(key, root)` sends ZooKeeper's
digest auth packet for the cluster key now and on every later connection (right
after its handshake, before any request), and from then on every znode created
at or below `root`, ephemeral, sequential or in a multi alike, gets the cluster's
ACL: all rights for the key's identity, none for anyone else.

Wire format: every frame is a 4-byte big-endian length and a body. A request
body is `xid, type` (`>ii`) and `request.serialize()` (the Connect handshake has
no header); a reply body starts with the ReplyHeader `xid, zxid, err`. Special
xids: -1 a watch event, -2 a ping reply, -4 an auth reply.

Concurrency invariants (one trio thread, so "atomic" means "no await between"):
- A call takes its xid, appends its `_Pending` to `conn.pending` and hands its
  frame to `conn.write` in one synchronous step. So the socket carries requests
  in call order, and `conn.pending` lists them in the order the server answers
  (ZooKeeper answers one session's requests in FIFO order).
- `conn.write` sends straight from the calling task; only a partial send leaves
  bytes in `conn.out`, which the writer task flushes. While `conn.out` is not
  empty every new frame is appended to it, never sent directly.
- Only the reader task pops `conn.pending` while the connection serves; once
  the connection's tasks are gone, `_drop` fails what is left with
  ConnectionLoss and the callers' retry loop (`_call`) resends on the next
  connection.
- Resends keep the call order too (a create and the commit that depends on it
  come from two tasks): every call has a number (`seq`), and a call that must
  be sent again waits in `_waiting` (a heap of those numbers, which `_drop`
  fills with the numbers of the calls it fails) until it is the oldest there;
  a new call waits behind them as well. The oldest sends, leaves the heap,
  and wakes the others (`_turn`).
- A cancelled call leaves its entry queued (its request is on the wire); the
  reader drops the reply.

The session's I/O (reader, writer, pinger, reconnecting) runs in one trio
*system* task started by `connect()` and ended by `close()`, so a WireZk is a
plain object that any task may use.

Watch callbacks and state listeners run synchronously in that task. Like
kazoo's, they must not block: hand off to trio (`token.run_sync_soon`, which
works from the trio thread too) or set an Event. As in kazoo, a connection loss
fires every registered watch with a `WatchedEvent("NONE", state, None)`: the
server forgets a connection's watches, so watchers re-read and re-arm.
"""

import errno
import heapq
import hmac
import logging
import random
import socket
import ssl
import struct
import time
from collections import deque
from posixpath import split
from typing import Any, Callable

import outcome
import trio
from kazoo.hosts import collect_hosts
from kazoo.protocol.paths import _prefix_root, normpath
from kazoo.protocol.serialization import (
    Auth,
    CheckVersion,
    Close,
    Connect,
    Create,
    Delete,
    Exists,
    GetACL,
    GetChildren,
    GetData,
    SetACL,
    SetData,
    Transaction,
    Watch,
    int_struct,
    write_string,
)
from kazoo.protocol.states import EVENT_TYPE_MAP, EventType, KeeperState, WatchedEvent, ZnodeStat
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from dfs.errors import ZkUnavailable
from dfs.metrics import ZK_ROUND_TRIPS, ZK_SECONDS
from dfs.zk.errors import (
    EXCEPTIONS,
    RETRYABLE,
    ConnectionLoss,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    SessionExpiredError,
)
from dfs.zk.tls import TlsSocket, split_tls
from dfs.zk.txn import Txn
from dfs.zk.wire import MultiRead, ZkState

log = logging.getLogger(__name__)

_length = struct.Struct("!i")
_request_head = struct.Struct("!iii")     # frame length, xid, type
_reply_head = struct.Struct("!iqi")       # xid, zxid, err
_PING_FRAME = _request_head.pack(8, -2, 11)

WATCH_XID = -1
AUTH_XID = -4
NO_NODE = NoNodeError.code
EXISTS_TYPE = Exists.type
CHILD_WATCH_TYPES = (GetChildren.type, 12)  # GetChildren, GetChildren2
READ_SIZE = 65536
EMPTY_PASSWORD = b"\x00" * 16

_TXN_REQUESTS = {"set_data": SetData, "delete": Delete, "check": CheckVersion}  # Txn op -> request

_Value = outcome.Value
_Error = outcome.Error
_reschedule = trio.lowlevel.reschedule
_current_task = trio.lowlevel.current_task
_wait_rescheduled = trio.lowlevel.wait_task_rescheduled
_ABORTED = trio.lowlevel.Abort.SUCCEEDED


class _Close(Close):
    """Close, with a reply that deserializes (kazoo's Close has no deserialize)."""

    @classmethod
    def deserialize(cls, buf: bytes, offset: int) -> None:
        return None


class AddWatch:
    """addWatch (opcode 106, ZooKeeper >= 3.6): a persistent watch; mode 1 = recursive."""

    type = 106

    def __init__(self, path: str, mode: int):
        self.path = path
        self.mode = mode

    def serialize(self) -> bytearray:
        b = bytearray(write_string(self.path))
        b.extend(int_struct.pack(self.mode))
        return b

    @classmethod
    def deserialize(cls, buf: bytes, offset: int) -> None:
        return None


class _Pending:
    """One request on the wire, waiting for its reply."""

    __slots__ = ("xid", "seq", "request", "watch", "task", "requeued")

    def __init__(self, xid: int, seq: int, request: Any, watch: Callable | None, task: Any):
        self.xid = xid
        self.seq = seq  # the call's number (the order of resends)
        self.request = request
        self.watch = watch
        self.task = task  # None once the caller is gone (cancelled) or woken
        self.requeued = False  # _drop put seq in WireZk._waiting

    def abort(self, raise_cancel: Any) -> trio.lowlevel.Abort:
        self.task = None  # the reply will be read and dropped
        return _ABORTED


class _Conn:
    """One TCP connection of the session (the session outlives its connections)."""

    __slots__ = ("sock", "address", "timeout", "leftover", "pending", "out", "writer_lot",
                 "scope", "error", "sent", "received")

    def __init__(self, sock: socket.socket | TlsSocket, address: str, timeout: float, leftover: bytes):
        self.sock = sock
        self.address = address
        self.timeout = timeout          # negotiated session timeout, seconds
        self.leftover = leftover        # bytes read past the handshake reply
        self.pending: deque[_Pending] = deque()
        self.out = bytearray()          # what a partial send left for the writer task
        self.writer_lot = trio.lowlevel.ParkingLot()
        self.scope: trio.CancelScope | None = None
        self.error: BaseException | None = None
        self.sent = False               # a request went out since the pinger last looked
        self.received = False           # bytes came in since the pinger last looked

    def write(self, frame: bytes) -> None:
        """Queue a frame behind everything written before it; send now if possible."""
        if self.out:
            self.out += frame
            return
        try:
            n = self.sock.send(frame)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self.fail(e)
            return
        if n < len(frame):
            self.out += memoryview(frame)[n:]
            self.writer_lot.unpark()
        elif getattr(self.sock, "backlog", None):  # TLS: ciphertext the socket did not take
            self.writer_lot.unpark()

    def fail(self, error: BaseException) -> None:
        """Mark the connection broken; its tasks stop and the session reconnects."""
        if self.error is None:
            self.error = error
        if self.scope is not None:
            self.scope.cancel()

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.sock)
        self.sock.close()


class WireZk:
    """One ZooKeeper session used from trio, over our own socket (see the module doc).

    Use `await WireZk.connect(hosts)`; the constructor does no I/O.

    Args:
      hosts: "host:port,host:port[/chroot]", as for kazoo; "tls:" in front: over TLS
        (ZooKeeper's secureClientPort), with `tls` (dfs/zk/tls.py).
      tls: the TLS client context for a "tls:" hosts string (dfs.tls.client_context).
      session_timeout: requested session timeout, seconds.
      op_timeout: how long a call keeps retrying through connection loss before
        it raises ZkUnavailable (EIO); 0: no waiting. The first such failure of
        an outage is logged, and the end of the outage.
      bound_outage: count op_timeout from the loss of the connection if that
        came before the call: once ZooKeeper has been gone that long, every
        call fails at once until it is back, so an operation made of many
        calls (a mount's) waits op_timeout in all, not op_timeout per call.
    """

    def __init__(self, hosts: str, *, session_timeout: float = 10.0, op_timeout: float = 60.0,
                 bound_outage: bool = False, tls: ssl.SSLContext | None = None):
        want_tls, hosts = split_tls(hosts)
        if want_tls and tls is None:
            raise ZkUnavailable(f"ZooKeeper at tls:{hosts} is reached over TLS, with the cluster key")
        self.tls = tls if want_tls else None
        self.hosts, chroot = collect_hosts(hosts)
        self.chroot = normpath(chroot) if chroot else ""
        self.session_timeout = session_timeout
        self.op_timeout = op_timeout
        self.bound_outage = bound_outage
        self._last_zxid = 0
        self._session_id = 0
        self._passwd = EMPTY_PASSWORD
        self._xid = 0
        self._seq = 0  # calls, numbered in the order they are made
        self._waiting: list[int] = []  # heap: numbers of the calls waiting to be sent again
        self._turn = trio.lowlevel.ParkingLot()  # they wait here for their turn
        self._conn: _Conn | None = None
        self._state: str | None = None
        self._down_since: float | None = None  # when the connection was lost (None: connected)
        self._outage_logged = False  # this outage's first ZkUnavailable was logged
        self._listeners: list[Callable[[str], Any]] = []
        self._data_watches: dict[str, list[Callable]] = {}
        self._child_watches: dict[str, list[Callable]] = {}
        self._feeds: list[tuple[str, Callable[[int | None, str | None], None]]] = []
        self._auths: list[bytes] = []  # auth frames, sent on every connection
        self._acl_root: str | None = None  # creates at or below it get _acl
        self._acl: list = OPEN_ACL_UNSAFE
        self._connected = trio.Event()
        self._closing = False
        self._run_scope = trio.CancelScope()
        self._done = trio.Event()

    @classmethod
    async def connect(cls, hosts: str, *, timeout: float = 10.0, session_timeout: float = 10.0,
                      op_timeout: float = 60.0, bound_outage: bool = False,
                      tls: ssl.SSLContext | None = None) -> "WireZk":
        """Connect, or raise ZkUnavailable after `timeout` seconds."""
        self = cls(hosts, session_timeout=session_timeout, op_timeout=op_timeout,
                   bound_outage=bound_outage, tls=tls)
        conn = None
        with trio.move_on_after(timeout):
            conn = await self._establish(quiet=True)
        if conn is None:
            raise ZkUnavailable(f"cannot reach ZooKeeper at {hosts} within {timeout:g} s")
        trio.lowlevel.spawn_system_task(self._run, conn, name=f"WireZk {hosts}")
        await self._connected.wait()  # _serve installs the connection at once
        if self.chroot and await self.exists("/") is None:
            log.warning("the ZooKeeper chroot %s does not exist", self.chroot)
        return self

    async def close(self) -> None:
        """End the session (its ephemeral znodes go) and the I/O task."""
        if not self._closing:
            self._closing = True
            conn = self._conn
            if conn is not None:
                entry = self._send(conn, _Close(), None, 0)
                with trio.move_on_after(2.0):
                    try:
                        await _wait_rescheduled(entry.abort)
                    except Exception as e:  # unanswered: the session expires on its own
                        log.debug("close request: %r", e)
            self._run_scope.cancel()
        await self._done.wait()

    # -- connection state

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def last_zxid(self) -> int:
        """The newest zxid this session has seen (a reconnect never goes back before it)."""
        return self._last_zxid

    @property
    def session_id(self) -> int | None:
        return self._session_id or None

    @property
    def client_id(self) -> tuple[int, bytes] | None:
        """(session id, password), as kazoo's `client_id`."""
        return (self._session_id, self._passwd) if self._session_id else None

    def add_listener(self, fn: Callable[[str], Any]) -> None:
        """fn(state) with a ZkState runs in the session's trio task; it must not block.
        A listener that returns True is removed (as in kazoo)."""
        self._listeners.append(fn)

    def remove_listener(self, fn: Callable[[str], Any]) -> None:
        if fn in self._listeners:
            self._listeners.remove(fn)

    async def wait_connected(self, deadline: float) -> None:
        """Wait until connected; raise ZkUnavailable at `deadline` (time.monotonic())."""
        while self._conn is None:
            if self._closing:
                raise ZkUnavailable("the ZooKeeper client is closed")
            left = deadline - time.monotonic()
            if left < 0:
                raise self._unavailable("lost the ZooKeeper connection and could not get it back")
            with trio.move_on_after(left + 0.01):
                await self._connected.wait()

    def authenticate(self, key: bytes, root: str) -> None:
        """Be the cluster of `key` (on this and every later connection) and make
        every znode created at or below `root` its own (see the module doc).
        Takes effect for every call made after it: the server handles an auth
        packet before the requests that follow it on the connection."""
        credential = digest_credential(key)
        body = Auth(0, "digest", credential).serialize()
        self._auths.append(_request_head.pack(len(body) + 8, AUTH_XID, Auth.type) + body)
        self._acl_root = root.rstrip("/")
        self._acl = [make_digest_acl(*credential.split(":"), all=True)]
        if self._conn is not None:
            self._conn.write(self._auths[-1])

    def acl_for(self, path: str) -> list:
        """The ACL a znode created at `path` gets."""
        root = self._acl_root
        if root is not None and (path == root or path.startswith(root + "/")):
            return self._acl
        return OPEN_ACL_UNSAFE

    async def get_acl(self, path: str) -> list:
        return (await self._call(GetACL(self._full(path))))[0]

    async def restrict(self, path: str) -> None:
        """Give an existing znode the ACL it would get if created now (`dfs keygen`)."""
        await self._call(SetACL(self._full(path), self.acl_for(path), -1))

    # -- calls

    async def get(self, path: str, watch: Callable | None = None) -> tuple[bytes, ZnodeStat]:
        return await self._call(GetData(self._full(path), watch), watch)

    async def get_children(self, path: str, watch: Callable | None = None) -> list[str]:
        return await self._call(GetChildren(self._full(path), watch), watch)

    async def read_many(self, reads: list[tuple[str, str]], batch: int = 512) -> list[Any]:
        """Several reads in few round trips (ZooKeeper multi-read, in order).

        Args:
          reads: ("get", path) or ("children", path) pairs.
        Returns:
          per read, in order: (data, stat) for "get", a list of names for
          "children", or None where the znode does not exist.

        The server runs the reads of one batch one after the other, so a read
        listed later never sees an older state than one listed earlier: read an
        inode before the znodes its version guards.
        """
        kinds = {"get": GetData, "children": GetChildren}
        out: list[Any] = []
        for i in range(0, len(reads), batch):
            request = MultiRead([kinds[k](self.chroot + p, None) for k, p in reads[i:i + batch]])
            out += [None if isinstance(r, Exception) else r for r in await self._call(request)]
        return out

    async def get_many(self, paths: list[str], batch: int = 512) -> list[tuple[bytes, ZnodeStat] | None]:
        """Read many znodes with few round trips (multi-read); None for a missing one."""
        return await self.read_many([("get", p) for p in paths], batch)

    async def children_many(self, paths: list[str]) -> list[list[str] | None]:
        """get_children of several znodes in one round trip; None for a missing one."""
        return await self.read_many([("children", p) for p in paths])

    async def exists(self, path: str) -> ZnodeStat | None:
        return await self._call(Exists(self._full(path), None))

    async def create(self, path: str, value: bytes = b"", *, ephemeral: bool = False,
                     sequence: bool = False, makepath: bool = False) -> str:
        request = Create(self._full(path, sequence), value, self.acl_for(path),
                         (1 if ephemeral else 0) | (2 if sequence else 0))
        try:
            created = await self._call(request)
        except NoNodeError:
            if not makepath:
                raise
            await self.ensure_path(path.rstrip("/") if sequence and path.endswith("/")
                                   else split(path)[0])
            created = await self._call(request)
        return self._unchroot(created)

    async def set(self, path: str, value: bytes, version: int = -1) -> ZnodeStat:
        return await self._call(SetData(self._full(path), value, version))

    async def delete(self, path: str, version: int = -1) -> None:
        await self._call(Delete(self._full(path), version))

    async def delete_recursive(self, path: str) -> None:
        """Delete a subtree (not atomic; used for cleanup)."""
        try:
            children = await self.get_children(path)
        except NoNodeError:
            return
        for child in children:
            await self.delete_recursive(path + child if path == "/" else f"{path}/{child}")
        try:
            await self.delete(path)
        except NoNodeError:
            pass

    async def ensure_path(self, path: str) -> None:
        """Create `path` and its missing ancestors (as kazoo's ensure_path)."""
        if await self.exists(path) is not None:
            return
        parent, name = split(path)
        if name:
            await self.ensure_path(parent)
        try:
            await self.create(path)
        except NodeExistsError:
            pass

    async def commit(self, txn: Txn) -> list[Any]:
        """Commit `txn` atomically. Raises the error of the operation that failed."""
        if not txn.ops:
            return []
        ops: list[Any] = []
        for name, (path, *rest) in txn.ops:
            if name == "create":
                value, acl, ephemeral, sequence = rest
                ops.append(Create(self._full(path, sequence), value, acl or self.acl_for(path),
                                  (1 if ephemeral else 0) | (2 if sequence else 0)))
            elif name in _TXN_REQUESTS:
                ops.append(_TXN_REQUESTS[name](self._full(path), *rest))
            else:
                raise ValueError(f"unknown transaction operation {name!r}")
        results = await self._call(Transaction(ops))
        if self.chroot:
            results = [self._unchroot(r) if isinstance(r, str) else r for r in results]
        for r in results:
            if isinstance(r, Exception) and not isinstance(r, RolledBackError):
                raise r
        return results

    # -- paths

    def _full(self, path: str, trailing: bool = False) -> str:
        """The server-side path: chrooted and normalized (kazoo's _prefix_root)."""
        if path[:1] == "/" and path[-1:] != "/" and "//" not in path and "/." not in path:
            return self.chroot + path  # already normal: skip kazoo's split and join
        return _prefix_root(self.chroot, path, trailing=trailing)

    def _unchroot(self, path: str) -> str:
        chroot = self.chroot
        if not chroot:
            return path
        if path == chroot:
            return "/"
        return path[len(chroot):] if path.startswith(chroot) else path

    # -- requests and replies

    def _send(self, conn: _Conn, request: Any, watch: Callable | None, seq: int) -> _Pending:
        """Put `request` on the wire (no await: see the ordering invariants)."""
        self._xid = xid = self._xid % 0x7FFFFFFF + 1
        entry = _Pending(xid, seq, request, watch, _current_task())
        body = request.serialize()
        conn.pending.append(entry)
        ZK_ROUND_TRIPS.labels(type(request).__name__).inc()
        conn.write(_request_head.pack(len(body) + 8, xid, request.type) + body)
        conn.sent = True
        return entry

    async def _call(self, request: Any, watch: Callable | None = None) -> Any:
        """Send `request` and return its reply; retry RETRYABLE errors until op_timeout
        has passed since the call (or since the connection was lost, if earlier
        and `bound_outage`)."""
        start = time.monotonic()
        self._seq = seq = self._seq + 1
        waiting = False  # seq is in self._waiting
        try:
            while True:
                conn = self._conn
                error: BaseException | None = None
                if conn is not None and (not self._waiting or self._waiting[0] == seq):
                    if waiting:  # our turn: the oldest of those waiting
                        heapq.heappop(self._waiting)
                        waiting = False
                        self._turn.unpark_all()
                    entry = self._send(conn, request, watch, seq)
                    try:
                        return await _wait_rescheduled(entry.abort)
                    except RETRYABLE as e:
                        error = e
                        waiting = entry.requeued
                elif conn is None:
                    error = ConnectionLoss("not connected")
                if not waiting:
                    heapq.heappush(self._waiting, seq)
                    waiting = True
                if self._closing:
                    raise ZkUnavailable("the ZooKeeper client is closed")
                down = self._down_since
                since = min(start, down) if self.bound_outage and down is not None else start
                deadline = since + self.op_timeout
                if time.monotonic() >= deadline:
                    raise self._unavailable(f"ZooKeeper operation failed: {error!r}") from None
                if error is None:  # connected, older calls go first
                    with trio.move_on_after(deadline - time.monotonic()):
                        await self._turn.park()
                    continue
                log.debug("zk retry after %r", error)
                await trio.sleep(0.05)
                await self.wait_connected(deadline)
        finally:
            ZK_SECONDS.labels(type(request).__name__).observe(time.monotonic() - start)
            if waiting:
                self._waiting.remove(seq)
                heapq.heapify(self._waiting)
                self._turn.unpark_all()

    def _unavailable(self, message: str) -> ZkUnavailable:
        """The error a call gives up with; only an outage's first is logged (the rest repeat it)."""
        if not self._outage_logged and not self._closing:
            self._outage_logged = True
            log.error("ZooKeeper %s unreachable for %g s: operations fail with EIO until it is back",
                      ",".join(f"{h}:{p}" for h, p in self.hosts), self.op_timeout)
        return ZkUnavailable(message)

    def _reply(self, conn: _Conn, data: bytes, offset: int) -> None:
        """Handle one reply frame whose body starts at `offset`."""
        xid, zxid, err = _reply_head.unpack_from(data, offset)
        offset += 16
        if xid < 0:
            if xid == WATCH_XID:
                self._watch_event(data, offset)
            elif xid == AUTH_XID and err:  # the server closes the connection too
                log.error("ZooKeeper refused our authentication: %r", EXCEPTIONS[err]())
            return  # -2 ping
        entry = conn.pending.popleft()
        if entry.xid != xid:
            raise RuntimeError(f"ZooKeeper reply xid {xid}, expected {entry.xid}")
        if zxid > 0:
            self._last_zxid = zxid
        request = entry.request
        if err:
            if err == NO_NODE and request.type == EXISTS_TYPE:
                result = _Value(None)
                if entry.watch is not None:
                    self._add_watch(self._data_watches, request.path, entry.watch)
            else:
                result = _Error(EXCEPTIONS[err]())
        else:
            try:
                result = _Value(request.deserialize(data, offset))
            except Exception as e:
                log.exception("cannot decode the reply to %r", request)
                result = _Error(e)
            if entry.watch is not None:
                watches = (self._child_watches if request.type in CHILD_WATCH_TYPES
                           else self._data_watches)
                self._add_watch(watches, request.path, entry.watch)
        task = entry.task
        if task is not None:
            entry.task = None
            _reschedule(task, result)

    @staticmethod
    def _add_watch(watches: dict[str, list[Callable]], path: str, fn: Callable) -> None:
        fns = watches.setdefault(path, [])
        if fn not in fns:
            fns.append(fn)

    async def add_feed(self, path: str, fn: Callable[[int | None, str | None], None]) -> None:
        """A persistent recursive watch on `path`: fn(event type, path) for every
        create (1), delete (2) and data change (3) at or below it, in the order
        ZooKeeper made them, called from the reader (it must not block).

        When the connection drops the server forgets the watch: fn(None, None)
        is called once and the feed is gone (add it again once reconnected).
        """
        full = self._full(path)
        prefix = self._unchroot(full)
        await self._call(AddWatch(full, 1))
        self._feeds.append((prefix, fn))

    def _watch_event(self, data: bytes, offset: int) -> None:
        watch, _ = Watch.deserialize(data, offset)
        if self._feeds and watch.type in (1, 2, 3):
            path = self._unchroot(watch.path)
            for prefix, feed in self._feeds:
                if path == prefix or path.startswith(prefix + "/"):
                    try:
                        feed(watch.type, path)
                    except Exception:
                        log.exception("error in a ZooKeeper feed callback")
        if watch.type in (1, 3):       # created, changed
            fns = self._data_watches.pop(watch.path, [])
        elif watch.type == 2:          # deleted
            fns = self._data_watches.pop(watch.path, []) + self._child_watches.pop(watch.path, [])
        elif watch.type == 4:          # child
            fns = self._child_watches.pop(watch.path, [])
        else:
            log.warning("unknown ZooKeeper watch event %r", watch)
            return
        event = WatchedEvent(EVENT_TYPE_MAP[watch.type], KeeperState.CONNECTED,
                             self._unchroot(watch.path))
        for fn in fns:
            self._fire(fn, event)

    @staticmethod
    def _fire(fn: Callable, event: WatchedEvent) -> None:
        try:
            fn(event)
        except Exception:
            log.exception("error in a ZooKeeper watch callback")

    def _set_state(self, state: str) -> None:
        if state == self._state:
            return
        self._state = state
        for fn in list(self._listeners):
            try:
                if fn(state) is True:
                    self.remove_listener(fn)
            except Exception:
                log.exception("error in a ZooKeeper state listener")

    # -- the session task

    async def _run(self, conn: _Conn) -> None:
        try:
            with self._run_scope:
                while True:
                    await self._serve(conn)
                    self._drop(conn)
                    if self._closing:
                        break
                    conn = await self._establish(quiet=False)
        except Exception:
            log.exception("the ZooKeeper session task failed")
        finally:
            self._closing = True
            if self._conn is not None:
                self._drop(self._conn)
            self._set_state(ZkState.LOST)
            self._done.set()

    async def _serve(self, conn: _Conn) -> None:
        """Run one connection until it breaks (or the session is closed)."""
        async with trio.open_nursery() as nursery:
            conn.scope = nursery.cancel_scope
            self._conn = conn
            for frame in self._auths:  # before any call can send a request on it
                conn.write(frame)
            if self._down_since is not None:
                log.log(logging.WARNING if self._outage_logged else logging.INFO,
                        "ZooKeeper connection back on %s after %.1f s", conn.address,
                        time.monotonic() - self._down_since)
                self._down_since = None
                self._outage_logged = False
            self._connected.set()
            self._set_state(ZkState.CONNECTED)
            nursery.start_soon(self._guard, conn, self._reader)
            nursery.start_soon(self._guard, conn, self._writer)
            nursery.start_soon(self._guard, conn, self._pinger)
        if conn.error is not None and not self._closing:
            log.warning("lost the ZooKeeper connection to %s: %r", conn.address, conn.error)

    @staticmethod
    async def _guard(conn: _Conn, task: Callable) -> None:
        try:
            await task(conn)
        except Exception as e:  # any failure of the stream ends this connection
            conn.fail(e)

    def _drop(self, conn: _Conn) -> None:
        """Forget a dead connection: fail its requests, fire and clear the watches."""
        if self._conn is conn:
            self._conn = None
            self._down_since = time.monotonic()
        if self._connected.is_set():
            self._connected = trio.Event()
        conn.close()
        pending, conn.pending = conn.pending, deque()
        for entry in pending:
            if entry.task is not None:
                if entry.seq:  # a call (not close()): it is sent again in its turn
                    heapq.heappush(self._waiting, entry.seq)
                    entry.requeued = True
                _reschedule(entry.task, _Error(ConnectionLoss()))
                entry.task = None
        if not self._closing:
            self._set_state(ZkState.SUSPENDED)
        fns = [fn for fns in self._data_watches.values() for fn in fns]
        fns += [fn for fns in self._child_watches.values() for fn in fns]
        self._data_watches = {}
        self._child_watches = {}
        feeds, self._feeds = self._feeds, []
        for _, feed in feeds:
            try:
                feed(None, None)
            except Exception:
                log.exception("error in a ZooKeeper feed callback")
        event = WatchedEvent(EventType.NONE, KeeperState.CONNECTING, None)
        for fn in fns:
            self._fire(fn, event)

    async def _reader(self, conn: _Conn) -> None:
        """Parse replies as they come; frames are parsed straight from the received
        bytes (kazoo's deserializers slice their buffer, and callers get bytes)."""
        sock = conn.sock
        reply = self._reply
        data = conn.leftover
        while True:
            n = len(data)
            offset = 0
            while n - offset >= 4:
                end = offset + 4 + _length.unpack_from(data, offset)[0]
                if end > n:
                    break
                reply(conn, data, offset + 4)
                offset = end
            if offset:
                data = data[offset:]
            if len(data) >= 4:
                need = 4 + _length.unpack_from(data)[0]
                if need - len(data) > READ_SIZE:  # a big reply: gather it, join once
                    data = await self._read_big(conn, data, need)
                    continue
            await trio.lowlevel.wait_readable(sock)
            try:
                chunk = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            if not chunk:
                raise ConnectionLoss("the server closed the connection")
            conn.received = True
            data = data + chunk if data else chunk

    @staticmethod
    async def _read_big(conn: _Conn, data: bytes, need: int) -> bytes:
        parts = [data]
        have = len(data)
        while have < need:
            await trio.lowlevel.wait_readable(conn.sock)
            try:
                chunk = conn.sock.recv(min(need - have, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise ConnectionLoss("the server closed the connection")
            conn.received = True
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    @staticmethod
    async def _writer(conn: _Conn) -> None:
        """Flush what partial sends left in conn.out (and, over TLS, the socket's backlog)."""
        out = conn.out
        sock = conn.sock
        while True:
            backlog = getattr(sock, "backlog", None)
            if not out and not backlog:
                await conn.writer_lot.park()
                continue
            await trio.lowlevel.wait_writable(sock)
            if not out:
                sock.flush()  # type: ignore[union-attr]  (a TlsSocket's ciphertext)
                continue
            try:
                n = sock.send(out)
            except BlockingIOError:
                continue
            del out[:n]

    @staticmethod
    async def _pinger(conn: _Conn) -> None:
        """Ping when idle for a third of the session timeout; declare the connection
        dead after two thirds of it without a byte from the server (as kazoo)."""
        quiet = 0
        while True:
            await trio.sleep(conn.timeout / 3)
            if conn.received:
                conn.received = False
                quiet = 0
            else:
                quiet += 1
                if quiet >= 2:
                    raise ConnectionLoss(f"no reply from {conn.address} for {conn.timeout * 2 / 3:g} s")
            if not conn.sent:
                conn.write(_PING_FRAME)
            conn.sent = False

    async def _establish(self, *, quiet: bool) -> _Conn:
        """Connect to any server of the list (random order, backing off between rounds).
        An expired session is replaced by a new one: listeners see LOST, then CONNECTED.
        Only the first round's failures are logged (unless `quiet`), not one a second."""
        delay = 0.05
        while True:
            hosts = list(self.hosts)
            random.shuffle(hosts)
            for host, port in hosts:
                for _ in range(2):  # a second try only with a new session
                    try:
                        return await self._handshake(host, port)
                    except SessionExpiredError:
                        log.warning("the ZooKeeper session %x expired; starting a new one",
                                    self._session_id)
                        self._session_id = 0
                        self._passwd = EMPTY_PASSWORD
                        self._set_state(ZkState.LOST)
                    except trio.TooSlowError:
                        log.warning("ZooKeeper %s:%s took the connection but did not answer"
                                    " the handshake; trying again", host, port)
                        break
                    except (OSError, ConnectionLoss, ValueError, struct.error) as e:
                        (log.debug if quiet else log.info)("ZooKeeper %s:%s: %r", host, port, e)
                        break
            quiet = True
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _handshake(self, host: str, port: int) -> _Conn:
        """Open a socket and send Connect with our session id, password and last zxid.
        One attempt may take a share of the session timeout, never more than a third of
        it: an attempt that stalls (a server that took the connection and never answered)
        must leave time to try again before the session expires, with one server too."""
        timeout = max(self.session_timeout / max(len(self.hosts), 3), 1.0)
        with trio.fail_after(timeout):
            sock: socket.socket | TlsSocket = await _open_socket(host, port)
            try:
                if self.tls is not None:
                    sock = await TlsSocket.handshake(sock, self.tls)
                body = Connect(0, self._last_zxid, int(self.session_timeout * 1000),
                               self._session_id, self._passwd, False).serialize()
                await _send_all(sock, _length.pack(len(body)) + body)
                data = b""
                while len(data) < 4 or len(data) < 4 + _length.unpack_from(data)[0]:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        chunk = sock.recv(READ_SIZE)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        raise ConnectionLoss(f"{host}:{port} closed the connection")
                    data += chunk
                end = 4 + _length.unpack_from(data)[0]
                reply, _ = Connect.deserialize(data, 4)
                if reply.time_out <= 0:
                    raise SessionExpiredError("session expired")
            except BaseException:
                sock.close()
                raise
        self._session_id = reply.session_id
        self._passwd = reply.passwd
        log.debug("ZooKeeper session %x on %s:%s, timeout %d ms",
                  reply.session_id, host, port, reply.time_out)
        return _Conn(sock, f"{host}:{port}", reply.time_out / 1000, data[end:])


def digest_credential(key: bytes) -> str:
    """The cluster's ZooKeeper identity, "user:password" of the digest scheme (what
    zkCli's `addauth digest` takes), derived from the key without revealing it."""
    return "dfs:" + hmac.digest(key, b"dfs zookeeper", "sha256").hex()


async def _open_socket(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket (TCP_NODELAY) to the first address that answers."""
    error: OSError = OSError(f"no address for {host}")
    for family, type_, proto, _, address in await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(address)
            if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if not err:
                return sock
            error = OSError(err, f"connect to {host}:{port}: {errno.errorcode.get(err, err)}")
        except BaseException:
            sock.close()
            raise
        sock.close()
    raise error


async def _send_all(sock: socket.socket | TlsSocket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view):]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
    while getattr(sock, "backlog", None):  # TLS: ciphertext the socket has not taken yet
        await trio.lowlevel.wait_writable(sock)
        sock.flush()  # type: ignore[union-attr]
