"""Connections to storage nodes: frames over a trio socket, pipelined requests, a pool per node.

Shared by the block client (dfs/blocks/client.py) and the nodes themselves
(a node pushes a replica to another one for repair: nodes/server.py).

`FrameSocket` moves frames (dfs/blocks/protocol.py) over one connected socket
with few copies, sealing and checking each frame's MAC once the connection is
authenticated (`client_handshake` here, the node's side in nodes/server.py).
`NodeConnection` pipelines requests on one connection with request ids. There
is no background reader task (the client has no nursery of its own): whichever
waiting request finds no reader active reads frames and hands each to its
waiter, then passes the role on; a reply that started arriving is read whole
even if its reader's request is given up meanwhile. A connection on which a
frame was cut short (error, cancellation mid-send, a reply stalled inside) is
closed and dropped; `NodePool` dials a new one for the next request.
"""

import errno
import hmac
import itertools
import json
import os
import ssl
from typing import Any, Callable, Sequence

import trio

from dfs.blocks.protocol import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    NONCE_SIZE,
    REPLY,
    TAG_SIZE,
    Frame,
    FrameMac,
    Op,
    ProtocolError,
    TruncatedFrame,
    node_proof,
    parse_header,
    split_address,
)
from dfs.errors import DfsError

CONNECT_TIMEOUT = 5.0
POOL_SIZE = 4
# A connection with fewer requests in flight than this is reused before dialing another.
PIPELINE_DEPTH = 8
# s a pooled connection may sit unused before the pool closes it: below the nodes'
# idle timeout (DFS_NODE_IDLE_TIMEOUT, 600 s), so a request never meets a connection
# the node is closing
POOL_IDLE = 300.0
FRAME_FINISH = 10.0  # s a reply may take to arrive once its first bytes did
RECV_BUFFER = 256 * 1024
SPARE_BUFFERS = 64  # RECV_BUFFERs kept for re-use (a fresh one costs a page fault per 4 KiB)
FIRST_RECV = 16 * 1024  # a connection coming alive starts with this (an EOF costs no RECV_BUFFER)


_spare_buffers: list[bytearray] = []  # shared by all FrameSockets of the process (one trio thread)


class FrameSocket:
    """Frames over one connected trio socket, with few copies.

    Small frames are parsed out of one receive buffer; a large payload is
    received straight into its own bytearray (`recv_into`). Sends use `sendmsg`
    so a header and its payload go out in one system call without concatenation.
    The receive buffer is held only while it holds bytes: an idle connection
    (or one stalled inside a large payload) costs no buffer, so 10,000 idle
    connections cost no 2.5 GiB.

    Once `mac` is set (after the handshake) every frame sent gets its MAC
    trailer and every frame received is checked (BadMac) before it is returned.

    Not safe for concurrent receivers or concurrent senders: callers serialise
    each direction (the node reads in one task and sends under a lock).
    """

    def __init__(self, sock: trio.socket.SocketType, max_payload: int = MAX_PAYLOAD,
                 alloc: Callable[[Frame, int], Any] | None = None):
        self.sock = sock
        self.max_payload = max_payload
        # alloc(frame, payload_len) -> an object with a writable `.data` view of
        # payload_len bytes to receive into (or None for a plain bytearray);
        # the node uses it to receive a PUT straight into block-file layout.
        self.alloc = alloc
        self.mac: FrameMac | None = None
        self._buf = bytearray()  # RECV_BUFFER bytes while it holds any, see _recv_more
        self._lo = 0
        self._hi = 0

    def _release_buffer(self) -> None:
        if self._lo == self._hi and self._buf:
            if len(self._buf) == RECV_BUFFER and len(_spare_buffers) < SPARE_BUFFERS:
                _spare_buffers.append(self._buf)
            self._buf = bytearray()
            self._lo = self._hi = 0

    async def wait_readable(self) -> None:
        """Until a frame's bytes are buffered or arriving (e.g. for an idle timeout).

        Raises:
          trio.ClosedResourceError: the socket is closed.
        """
        if self._lo == self._hi:
            if self.sock.fileno() < 0:
                raise trio.ClosedResourceError("socket closed")
            if isinstance(self.sock, TlsSocket):
                await self.sock.wait_readable()  # bytes may wait decrypted inside TLS
            else:
                await trio.lowlevel.wait_readable(self.sock)

    async def _recv_more(self) -> bool:
        if self._lo == self._hi:
            self._release_buffer()
            await self.wait_readable()
            self._buf = bytearray(FIRST_RECV)
        elif self._hi == len(self._buf):
            n = self._hi - self._lo
            if len(self._buf) < RECV_BUFFER:  # bytes keep coming: the full-size buffer
                big = _spare_buffers.pop() if _spare_buffers else bytearray(RECV_BUFFER)
                big[:n] = self._buf[self._lo:self._hi]
                self._buf = big
            else:
                self._buf[:n] = self._buf[self._lo:self._hi]
            self._lo, self._hi = 0, n
        got = await self.sock.recv_into(memoryview(self._buf)[self._hi:])
        self._hi += got
        return got > 0

    async def _fill(self, n: int) -> bool:
        """At least `n` bytes in the buffer; False if the stream ends first."""
        while self._hi - self._lo < n:
            if not await self._recv_more():
                return False
        return True

    async def recv_frame(self) -> Frame | None:
        """The next frame, or None at a clean end of stream between frames.

        Raises:
          ProtocolError: a bad header (the caller should reply and close).
          BadMac: an authenticated connection received a frame that fails its MAC.
          TruncatedFrame: the stream ended inside a frame.
          OSError: the connection broke.
        """
        if not await self._fill(HEADER_SIZE):
            if self._hi == self._lo:
                return None
            raise TruncatedFrame("connection closed inside a frame header")
        raw = memoryview(self._buf)[self._lo:self._lo + HEADER_SIZE]
        frame, plen = parse_header(raw, self.max_payload)
        header = bytes(raw) if self.mac is not None else b""
        self._lo += HEADER_SIZE
        have = min(plen, self._hi - self._lo)
        if have == plen:  # common for small frames: all in the buffer already
            frame.payload = bytes(self._buf[self._lo:self._lo + plen]) if plen else b""
            self._lo += plen
            view = frame.payload
        else:
            holder = self.alloc(frame, plen) if self.alloc is not None else None
            payload = holder if holder is not None else bytearray(plen)
            view = holder.data if holder is not None else memoryview(payload)
            view[:have] = memoryview(self._buf)[self._lo:self._lo + have]
            self._lo += have
            self._release_buffer()  # a payload that stalls holds no receive buffer
            while have < plen:
                got = await self.sock.recv_into(view[have:])
                if got == 0:
                    raise TruncatedFrame(f"connection closed after {have} of {plen} payload bytes",
                                         frame.request_id)
                have += got
            frame.payload = payload
        if self.mac is not None:
            if not await self._fill(TAG_SIZE):
                raise TruncatedFrame("connection closed before a frame's MAC", frame.request_id)
            tag = bytes(self._buf[self._lo:self._lo + TAG_SIZE])
            self._lo += TAG_SIZE
            self.mac.check(header, view, tag, frame.request_id)
        self._release_buffer()
        return frame

    async def send_frame(self, frame: Frame) -> None:
        header = frame.header()
        buffers = [header, frame.payload] if len(frame.payload) else [header]
        if self.mac is not None:
            buffers.append(self.mac.seal(header, frame.payload))
        await self.send_buffers(buffers)

    async def send_buffers(self, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        views = [memoryview(b).cast("B") for b in buffers if len(b)]
        while views:
            sent = await self.sock.sendmsg(views)
            while sent and views:
                if sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                else:
                    views[0] = views[0][sent:]
                    sent = 0

    def close(self) -> None:
        self.sock.close()


class TlsSocket:
    """The calls FrameSocket makes of a socket, over TLS (mkfs --tls, dfs/tls.py).

    An ssl.SSLObject over memory BIOs on the trio socket: one recv_into takes every
    record the socket has delivered, and one sendmsg encrypts a whole frame and
    sends it in as few system calls as the socket allows. (trio.SSLStream gave one
    16 KiB record per call, each a trip through the event loop: TLS ran at a third
    to a half of the plain protocol's speed.) A close without TLS's close_notify
    is an end of stream, as on a plain socket: frames carry their lengths, a cut
    one is noticed.
    """

    def __init__(self, sock: trio.socket.SocketType, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO):
        self.sock = sock
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._early = b""  # received by wait_readable, for the next recv_into
        self._eof = False

    @classmethod
    async def wrap(cls, stream: trio.SocketStream, tls: ssl.SSLContext, *,
                   server_side: bool) -> "TlsSocket":
        """After the TLS handshake (ssl.SSLError or ConnectionResetError if it fails)."""
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self = cls(stream.socket, tls.wrap_bio(incoming, outgoing, server_side=server_side),
                   incoming, outgoing)
        while True:
            try:
                self._obj.do_handshake()
                await self._flush()
                return self
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._pull():
                    raise ConnectionResetError("TLS: the peer closed the connection in the handshake")

    def fileno(self) -> int:
        return self.sock.fileno()

    async def _pull(self) -> bool:
        """More ciphertext from the socket; False at its end."""
        data = await self.sock.recv(RECV_BUFFER)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    def _decrypted_into(self, view: memoryview) -> int | None:
        """As many decrypted bytes as there are into `view`; None: the socket must give more."""
        total, want = 0, len(view)
        while total < want:
            try:
                got = self._obj.read(want - total, view[total:])
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):  # closed, with close_notify or not
                self._eof = True
                break
            if not got:
                self._eof = True
                break
            total += got
        return total if total or self._eof else None

    async def recv_into(self, view: memoryview) -> int:
        if self._early:
            data, self._early = self._early[:len(view)], self._early[len(view):]
            view[:len(data)] = data
            return len(data)
        while True:
            got = 0 if self._eof else self._decrypted_into(view)
            if self._out.pending:  # (TLS 1.3 post-handshake messages may want an answer)
                with trio.CancelScope(shield=True):
                    await self._flush()
            if got is not None:
                return got
            await self._pull()

    async def wait_readable(self) -> None:
        """Until decrypted bytes (or the end) arrive, kept for the next recv_into. The raw
        socket cannot tell: a record may sit decrypted or undecrypted inside the SSL
        state. Cancellable: a cancelled wait loses nothing (what it read is kept)."""
        if not self._early and not self._eof:
            buf = bytearray(RECV_BUFFER)
            n = await self.recv_into(memoryview(buf))
            self._early = bytes(buf[:n])

    async def sendmsg(self, views: list[memoryview]) -> int:
        for v in views:
            self._obj.write(v)
        await self._flush()
        return sum(len(v) for v in views)

    async def _flush(self) -> None:
        while self._out.pending:
            view = memoryview(self._out.read())
            while view:
                view = view[await self.sock.send(view):]

    def close(self) -> None:
        self.sock.close()


async def open_socket(stream: trio.SocketStream, tls: ssl.SSLContext | None, *,
                      server_side: bool = False) -> "trio.socket.SocketType | TlsSocket":
    """What FrameSocket runs on: the stream's socket, or TLS over it if `tls`."""
    return stream.socket if tls is None else await TlsSocket.wrap(stream, tls,
                                                                   server_side=server_side)


class NodeUnavailable(DfsError):
    """The node could not be reached, or the connection broke (not a reply from the node)."""

    def __init__(self, message: str):
        super().__init__(errno.EHOSTDOWN, message)


class NodeSlow(NodeUnavailable):
    """The node is connected but did not answer in time (busy, frozen or swapping)."""


def reply_error(reply: Frame, what: str) -> DfsError:
    text = bytes(reply.payload).decode("utf-8", "replace") if reply.payload else ""
    return DfsError(reply.status, f"{what}: {text}" if text else what)


async def client_handshake(fs: FrameSocket, key: bytes, what: str) -> None:
    """Authenticate a new connection to a node (the handshake of dfs/blocks/protocol.py).

    Raises:
      DfsError(EACCES): the node does not prove that it holds `key`, or refused us.
      NodeUnavailable: it closed the connection.
    """
    nonce = os.urandom(NONCE_SIZE)
    await fs.send_frame(Frame(Op.HELLO, payload=nonce))
    reply = await fs.recv_frame()
    if reply is None:
        raise NodeUnavailable(f"{what} closed the connection during the handshake")
    if reply.status:
        raise reply_error(reply, f"{what} refused the handshake")
    answer = bytes(reply.payload)
    if reply.op != Op.HELLO | REPLY or len(answer) != 2 * NONCE_SIZE:
        raise ProtocolError(f"{what} answered HELLO with a malformed reply")
    node_nonce, proof = answer[:NONCE_SIZE], answer[NONCE_SIZE:]
    if not hmac.compare_digest(proof, node_proof(key, nonce, node_nonce)):
        raise DfsError(errno.EACCES, f"{what} does not hold this filesystem's key "
                                     "(a wrong key file, or not a node of this filesystem)")
    fs.mac = FrameMac(key, nonce, node_nonce, client=True)


class _Waiter:
    __slots__ = ("event", "frame", "error")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.frame: Frame | None = None
        self.error: BaseException | None = None


class NodeConnection:
    """One TCP connection to a node, with pipelined requests.

    Invariant: at most one task reads frames (`_reading`) and at most one task
    sends (`_send_lock`); a task interrupted in the middle of either breaks the
    connection, since the stream is out of step after that.
    """

    def __init__(self, node_id: str, address: str, fs: FrameSocket):
        self.node_id = node_id
        self.address = address
        self.fs = fs
        self.broken = False
        self._broken_by: NodeUnavailable | None = None  # why (for requests that queued meanwhile)
        self.info: dict = {}
        self._ids = itertools.count(1)
        self._waiters: dict[int, _Waiter] = {}
        self._send_lock = trio.Lock()
        self._reading = False
        self.last_used = trio.current_time()
        self.answered = 0  # replies received (0: a new connection, not one that sat in a pool)
        self.retired = False  # out of its pool (NodePool.retire): closes when its last request ends

    @classmethod
    async def open(cls, node_id: str | None, address: str, *, key: bytes,
                   connect_timeout: float = CONNECT_TIMEOUT,
                   tls: ssl.SSLContext | None = None) -> "NodeConnection":
        """Dial `address` (over TLS with a `tls` context, dfs/tls.py), authenticate
        both ways with the cluster `key`, and check (PING) that the node there is
        `node_id` (if given).

        Raises:
          NodeUnavailable: the node cannot be reached.
          DfsError(EACCES): it does not hold `key`.
        """
        host, port = split_address(address)
        fs = None
        try:
            with trio.fail_after(connect_timeout):
                stream = await trio.open_tcp_stream(host, port)
                try:
                    fs = FrameSocket(await open_socket(stream, tls))
                except ssl.SSLError as e:
                    stream.socket.close()
                    raise DfsError(errno.EACCES, f"TLS with node {node_id or ''} at {address} "
                                                 f"failed: {e}") from None
                except BaseException:  # (the node closed it in the handshake, a timeout)
                    stream.socket.close()
                    raise
                await client_handshake(fs, key, f"node {node_id or ''} at {address}")
                conn = cls(node_id or "", address, fs)
                reply = await conn.request(Frame(Op.PING))
        except BaseException as e:
            if fs is not None:
                fs.close()
            if isinstance(e, OSError):
                raise NodeUnavailable(f"cannot connect to node {node_id} at {address}: {e!r}") from None
            if isinstance(e, trio.TooSlowError):
                raise NodeSlow(f"node {node_id} at {address} did not answer within "
                               f"{connect_timeout:g} s") from None
            raise
        try:
            conn.info = json.loads(bytes(reply.payload)) if reply.payload else {}
        except ValueError:
            conn.info = {}
        if node_id and conn.info.get("node_id") != node_id:
            conn.close()
            raise NodeUnavailable(f"{address} is node {conn.info.get('node_id')!r}, not {node_id}")
        conn.node_id = conn.info.get("node_id", node_id or "")
        return conn

    @property
    def inflight(self) -> int:
        return len(self._waiters)

    def close(self) -> None:
        self._break(NodeUnavailable(f"connection to node {self.node_id} closed"))

    def _break(self, error: BaseException) -> None:
        if not self.broken:
            self.broken = True
            self._broken_by = error if isinstance(error, NodeUnavailable) else self._as_unavailable(error)
            self.fs.close()
        for w in self._waiters.values():
            if w.frame is None and w.error is None:
                w.error = error
            w.event.set()

    def _as_unavailable(self, e: BaseException) -> NodeUnavailable:
        if isinstance(e, NodeUnavailable):
            return e
        return NodeUnavailable(f"connection to node {self.node_id} at {self.address} failed: {e!r}")

    async def request(self, frame: Frame) -> Frame:
        """Send `frame` and wait for its reply (of any status).

        Raises:
          NodeUnavailable: the connection is or became broken.
        """
        if self.broken:
            raise NodeUnavailable(f"connection to node {self.node_id} is closed")
        rid = next(self._ids)
        self.last_used = trio.current_time()
        frame.request_id = rid
        w = _Waiter()
        self._waiters[rid] = w
        sending = False
        try:
            try:
                async with self._send_lock:
                    if self.broken:  # while we waited for our turn (not EBADF from a closed socket)
                        raise NodeUnavailable(f"connection to node {self.node_id} closed while this "
                                              f"request waited to send: {self._broken_by}")
                    sending = True
                    await self.fs.send_frame(frame)
            except trio.Cancelled:
                if sending:  # (not while waiting for the lock: a hedge's loser often is)
                    self._break(NodeUnavailable("request cancelled while sending"))
                raise
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
                self._break(self._as_unavailable(e))
                raise self._as_unavailable(e) from None
            reply = await self._wait_reply(w)
            self.answered += 1
            return reply
        finally:
            del self._waiters[rid]
            if not self._reading:
                self._wake_all()
            if self.retired and not self._waiters:
                self.close()

    def _wake_all(self) -> None:
        # Someone must take over reading: every waiter still without a reply checks.
        for other in self._waiters.values():
            if other.frame is None:
                other.event.set()

    async def _wait_reply(self, w: _Waiter) -> Frame:
        while True:
            if w.frame is not None:
                return w.frame
            if w.error is not None:
                raise w.error
            if self._reading:
                w.event = trio.Event()
                await w.event.wait()
                continue
            self._reading = True
            try:
                while w.frame is None:
                    await self.fs.wait_readable()  # cancellable: nothing consumed yet
                    # A reply that started arriving is read whole even if this request
                    # is given up meanwhile (a hedged read's loser, a write's grace):
                    # cut short, it would leave the connection out of step.
                    with trio.CancelScope(shield=True), trio.fail_after(FRAME_FINISH):
                        f = await self.fs.recv_frame()
                    if f is None:
                        raise NodeUnavailable(f"node {self.node_id} closed the connection")
                    if not f.op & REPLY:
                        raise ProtocolError(f"node {self.node_id} sent a request, not a reply")
                    target = self._waiters.get(f.request_id)
                    if target is None:
                        continue  # its requester gave up (timeout); drop the late reply
                    target.frame = f
                    target.event.set()
            except trio.TooSlowError:
                err = NodeSlow(f"node {self.node_id} stopped sending within a reply")
                self._break(err)
                raise err from None
            except (OSError, DfsError, trio.ClosedResourceError, trio.BrokenResourceError) as e:
                err = self._as_unavailable(e)
                self._break(err)
                raise err from None
            finally:
                self._reading = False
                self._wake_all()
            return w.frame


class NodePool:
    """A few connections to one node; requests go to the least busy one."""

    def __init__(self, node_id: str, address: str, key: bytes, size: int = POOL_SIZE,
                 connect_timeout: float = CONNECT_TIMEOUT, tls: ssl.SSLContext | None = None):
        self.node_id = node_id
        self.address = address
        self.key = key
        self.tls = tls
        self.size = size
        self.connect_timeout = connect_timeout
        self.conns: list[NodeConnection] = []
        self._dial_lock = trio.Lock()

    async def get(self) -> NodeConnection:
        now = trio.current_time()
        for c in self.conns:
            if not c.inflight and now - c.last_used > POOL_IDLE:
                c.close()
        self.conns = [c for c in self.conns if not c.broken]
        best = min(self.conns, key=lambda c: c.inflight, default=None)
        if best is not None and (best.inflight < PIPELINE_DEPTH or len(self.conns) >= self.size):
            return best
        async with self._dial_lock:
            self.conns = [c for c in self.conns if not c.broken]
            if len(self.conns) >= self.size:
                return min(self.conns, key=lambda c: c.inflight)
            conn = await NodeConnection.open(self.node_id, self.address, key=self.key,
                                             connect_timeout=self.connect_timeout, tls=self.tls)
            self.conns.append(conn)
            return conn

    def retire(self) -> None:
        """The node closed one of these connections (it restarted, or they sat idle past
        its timeout): all of them are suspect. Those with nothing in flight close now;
        the others finish what they carry, and no new request goes to any of them."""
        for c in self.conns:
            c.retired = True
            if not c.inflight:
                c.close()
        self.conns = []

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.conns = []
