"""The storage node's TCP server: frames in, BlockStore calls in worker threads, frames out.

Per connection one task reads frames and starts a task per request (so requests
pipeline and complete out of order); replies go out under a per-connection send
lock. A frame that breaks the protocol (bad magic, oversized payload, unknown op,
malformed block id, impossible range) gets an EINVAL reply and the connection is
closed; other connections are unaffected.

Authentication (dfs/blocks/protocol.py): a connection's first frame must be a
HELLO; anything else is answered EACCES and the connection closed. Until the
peer's first MAC'd frame has checked out, frames are read with a tiny payload
limit, so a stranger costs the node a nonce, an HMAC and a few hundred bytes; a
refused peer is logged once a minute at most. COPY only pushes to a live node of
this filesystem (the node directory), at the address registered for it.

Bounded resources (NodeSettings, README "Node limits"): at most
`max_connections` connections, `max_peer_connections` from one address (more
are refused with an EMFILE reply saying which limit); a connection without a
request for `idle_timeout` s is closed; a frame must arrive within
`frame_timeout` s, or the connection is dropped with the payload it was
filling (a stalled PUT frees its 64 MiB). Idle connections hold no receive
buffer (dfs/blocks/connection.py). Bad frames are logged like refusals.

Shutdown (`drain`): stop accepting, stop reading new requests, let the requests
already in flight finish and send their replies, then close.
"""

import ctypes
import errno
import json
import logging
import os
import ssl
import time

import trio

from dfs.blocks.connection import FrameSocket, NodeConnection, open_socket
from dfs.blocks.nodedir import NodeDirectory
from dfs.blocks.protocol import (
    LIST_ENTRY,
    MAX_PAYLOAD,
    MORE,
    NONCE_SIZE,
    REPLY,
    BadMac,
    write_proof,
    Frame,
    FrameMac,
    Op,
    ProtocolError,
    TruncatedFrame,
    encode_block_id,
    node_proof,
)
from dfs.checksum import hash64, valid_block_id
from dfs.config import NodeSettings
from dfs.errors import DfsError
from dfs.metrics import NODE_READ, NODE_WRITTEN
from nodes.store import DIRECT_MIN, BlockBuffer, BlockStore

log = logging.getLogger(__name__)

try:  # glibc keeps freed heap pages; malloc_trim gives them back (no-op where absent)
    malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):
    malloc_trim = None

MAX_INFLIGHT_PER_CONN = 32
LIST_BATCH = 1024
NEEDS_BLOCK = {Op.PUT, Op.GET, Op.DELETE, Op.STAT, Op.COPY, Op.VERIFY}
HANDSHAKE_TIMEOUT = 10.0
UNTRUSTED_PAYLOAD = 64  # bytes a frame may carry before the peer proved the key
REFUSAL_LOG_EVERY = 60.0  # s: a refused peer is logged at most this often


class NodeServer:
    """Serves one BlockStore.

    Args:
      store: the opened block store.
      node_id: this node's id (PING answers it so clients know whom they reached).
      key: the cluster key every peer must prove it holds.
      peers: the live nodes, the only ones COPY pushes to.
      disk_threads: worker threads for disk I/O.
      tls, peer_tls: with --tls (dfs.tls), the server context it serves with and
        the client context it copies to other nodes with.
      settings: the node's knobs (connection limits and timeouts).
    """

    def __init__(self, store: BlockStore, node_id: str, key: bytes, peers: NodeDirectory, *,
                 disk_threads: int = 32, tls: ssl.SSLContext | None = None,
                 peer_tls: ssl.SSLContext | None = None, settings: NodeSettings = NodeSettings()):
        self.store = store
        self.settings = settings
        self.connections: dict[str, int] = {}  # peer address -> open connections
        self.node_id = node_id
        self.key = key
        self.tls = tls
        self.peer_tls = peer_tls
        self.peers = peers
        self._refusals: dict[str, tuple[float, int]] = {}  # peer host -> (last logged, since)
        self.disk = trio.CapacityLimiter(disk_threads)
        self.inflight = 0
        self.requests = 0  # served since start, for the load figure
        self._accepting: trio.CancelScope | None = None
        self._readers: set[trio.CancelScope] = set()

    async def serve(self, listeners: list[trio.SocketListener], *,
                    task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until `drain()`; returns once every connection is done."""
        async with trio.open_nursery() as conns:
            with trio.CancelScope() as self._accepting:
                async with trio.open_nursery() as acceptors:
                    for listener in listeners:
                        acceptors.start_soon(self._accept_loop, listener, conns)
                    task_status.started()
            for listener in listeners:
                await listener.aclose()

    async def _accept_loop(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # EMFILE and friends: back off, keep serving
                log.warning("accept failed: %s", e)
                await trio.sleep(0.1)
                continue
            conns.start_soon(self._connection, stream)

    def _over_limit(self, peer: str) -> str:
        """Why a new connection from `peer` is refused ("" if it is not)."""
        s = self.settings
        if sum(self.connections.values()) >= s.max_connections:
            return f"too many connections to this node (limit {s.max_connections})"
        if self.connections.get(peer, 0) >= s.max_peer_connections:
            return f"too many connections from {peer} (limit {s.max_peer_connections})"
        return ""

    def drain(self) -> None:
        """Stop accepting and reading; requests in flight still complete."""
        if self._accepting is not None:
            self._accepting.cancel()
        for scope in list(self._readers):
            scope.cancel()

    # -- one connection

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()[0]
        except OSError:
            peer = "?"
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                sock = await open_socket(stream, self.tls, server_side=True)
        except (ssl.SSLError, trio.BrokenResourceError, trio.TooSlowError, OSError) as e:
            self._refused(peer, f"TLS handshake failed: {e.__cause__ or e!r}")
            stream.socket.close()
            return
        fs = FrameSocket(sock, UNTRUSTED_PAYLOAD, alloc=self._alloc)
        send_lock = trio.Lock()
        slots = trio.Semaphore(MAX_INFLIGHT_PER_CONN)
        refusal = self._over_limit(peer)
        if refusal:
            self._refused(peer, refusal)
            with trio.move_on_after(1):  # read its HELLO first: closing on it would reset
                try:
                    if await fs.recv_frame() is not None:
                        await fs.send_frame(Frame(Op.HELLO | REPLY, status=errno.EMFILE,
                                                  payload=refusal.encode()))
                except (DfsError, OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                    pass
            fs.close()
            return
        self.connections[peer] = self.connections.get(peer, 0) + 1
        try:
            if not await self._handshake(fs, peer):
                return
            async with trio.open_nursery() as requests:
                with trio.CancelScope() as reading:
                    self._readers.add(reading)
                    try:
                        await self._read_loop(fs, peer, send_lock, slots, requests)
                    finally:
                        self._readers.discard(reading)
                # requests still running finish before the nursery exits
        finally:
            fs.close()
            self.connections[peer] -= 1
            if not self.connections[peer]:
                del self.connections[peer]

    async def _handshake(self, fs: FrameSocket, peer: str) -> bool:
        """Answer the peer's HELLO and set up the connection's MACs; False: close it."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                hello = await fs.recv_frame()
                if hello is None:
                    return False
                if hello.op != Op.HELLO or len(hello.payload) != NONCE_SIZE:
                    self._refused(peer, f"op {hello.op} before authenticating")
                    await fs.send_frame(hello.reply(errno.EACCES, b"authenticate first: HELLO"))
                    return False
                client_nonce = bytes(hello.payload)
                nonce = os.urandom(NONCE_SIZE)
                await fs.send_frame(hello.reply(payload=nonce + node_proof(self.key, client_nonce,
                                                                           nonce)))
        except ProtocolError as e:
            self._refused(peer, e.message)
            return False
        except trio.TooSlowError:
            self._refused(peer, f"no HELLO within {HANDSHAKE_TIMEOUT:g} s")
            return False
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        fs.mac = FrameMac(self.key, client_nonce, nonce, client=False)
        return True

    def _refused(self, peer: str, why: str) -> None:
        """Log a refused peer, at most once per REFUSAL_LOG_EVERY (counting the rest)."""
        now = time.monotonic()
        last, since = self._refusals.get(peer, (-REFUSAL_LOG_EVERY, 0))
        if now - last < REFUSAL_LOG_EVERY:
            self._refusals[peer] = (last, since + 1)
            return
        log.warning("refused %s: %s (%d more refusals since the last report)", peer, why, since)
        if len(self._refusals) > 10000:  # many peers: forget the quiet ones
            self._refusals = {p: v for p, v in self._refusals.items()
                              if now - v[0] < REFUSAL_LOG_EVERY}
        self._refusals[peer] = (now, 0)

    def _alloc(self, frame: Frame, plen: int) -> BlockBuffer | None:
        if frame.op == Op.PUT and plen >= DIRECT_MIN and self.store.direct:
            return self.store.buffers.get(plen)
        return None

    async def _read_loop(self, fs: FrameSocket, peer: str, send_lock: trio.Lock,
                         slots: trio.Semaphore, requests: trio.Nursery) -> None:
        s = self.settings
        while True:
            await slots.acquire()
            try:
                while True:
                    with trio.move_on_after(s.idle_timeout) as idle:
                        await fs.wait_readable()
                    if not idle.cancelled_caught:
                        break
                    if slots.value == MAX_INFLIGHT_PER_CONN - 1:
                        slots.release()
                        return  # nothing asked, nothing in flight: closed, the client redials
                with trio.move_on_after(s.frame_timeout) as late:
                    frame = await fs.recv_frame()
                if late.cancelled_caught:
                    slots.release()
                    self._refused(peer, f"a frame took more than {s.frame_timeout:g} s to arrive")
                    if malloc_trim is not None:  # the dropped payload's pages go back to the system
                        malloc_trim(0)
                    return
                if frame is None:
                    slots.release()
                    return
                fs.max_payload = MAX_PAYLOAD  # its MAC checked out: the peer holds the key
                self._precheck(frame)
            except TruncatedFrame:
                slots.release()
                return
            except BadMac as e:  # a wrong key, a replayed handshake, an injected frame
                slots.release()
                self._refused(peer, e.message)
                return
            except ProtocolError as e:
                slots.release()
                self._refused(peer, f"bad frame: {e.message}")
                await self._send_error(fs, send_lock, Frame(Op.PING, e.request_id), e)
                return
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                slots.release()
                return
            requests.start_soon(self._request, fs, send_lock, slots, frame)

    def _precheck(self, frame: Frame) -> None:
        """Reject frames that are hostile rather than merely failing (connection closes)."""
        try:
            op = Op(frame.op)
        except ValueError:
            raise ProtocolError(f"unknown op {frame.op}", frame.request_id) from None
        if op in NEEDS_BLOCK and not valid_block_id(frame.block_id.decode("latin-1")):
            raise ProtocolError(f"invalid block id {frame.block_id[:32]!r}", frame.request_id)
        if op == Op.GET and (frame.offset > MAX_PAYLOAD or frame.length > MAX_PAYLOAD):
            raise ProtocolError(f"impossible range {frame.offset}+{frame.length}", frame.request_id)
        if op == Op.PUT and frame.length != len(frame.payload):
            raise ProtocolError("PUT length does not match its payload", frame.request_id)
        if op not in (Op.PUT, Op.COPY) and len(frame.payload):
            raise ProtocolError(f"{op.name} carries no payload", frame.request_id)

    async def _send_error(self, fs: FrameSocket, send_lock: trio.Lock, frame: Frame,
                          e: DfsError) -> None:
        reply = frame.reply(e.errno, e.message.encode("utf-8", "replace")[:1024])
        with trio.move_on_after(5):
            try:
                async with send_lock:
                    await fs.send_frame(reply)
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                pass

    async def _request(self, fs: FrameSocket, send_lock: trio.Lock, slots: trio.Semaphore,
                       frame: Frame) -> None:
        self.inflight += 1
        self.requests += 1
        try:
            if frame.op == Op.LIST:
                await self._list(fs, send_lock, frame)
                return
            try:
                reply = await self._handle(frame)
            except DfsError as e:
                reply = frame.reply(e.errno, e.message.encode("utf-8", "replace")[:1024])
            except Exception as e:  # a bug must not take the node down
                log.exception("request %s failed", Op(frame.op).name)
                reply = frame.reply(errno.EIO, repr(e).encode()[:1024])
            if not reply.status and frame.op in (Op.GET, Op.PUT):
                (NODE_READ if frame.op == Op.GET else NODE_WRITTEN).inc(
                    len(reply.payload) if frame.op == Op.GET else reply.length)
            try:
                async with send_lock:
                    await fs.send_frame(reply)
            except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
                fs.close()  # the reader notices and ends the connection
        finally:
            self.inflight -= 1
            slots.release()

    async def _thread(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.disk)

    async def _handle(self, frame: Frame) -> Frame:
        op = frame.op
        bid = frame.block_id_str
        if op == Op.PUT:
            try:
                info = await self._thread(self.store.put, bid, frame.payload, frame.checksum)
            finally:
                if isinstance(frame.payload, BlockBuffer):
                    self.store.buffers.put(frame.payload)
                    frame.payload = b""
            return frame.reply(length=info.length, checksum=info.checksum,
                               payload=write_proof(self.key, bid, info.length, info.checksum))
        if op == Op.GET:
            return await self._thread(self._get, frame, bid)
        if op == Op.DELETE:
            await self._thread(self.store.delete, bid)
            return frame.reply()
        if op == Op.STAT:
            info = await self._thread(self.store.stat, bid)
            return frame.reply(length=info.length, checksum=info.checksum,
                               offset=int(info.mtime * 1e9))
        if op == Op.VERIFY:
            info = await self._thread(self.store.verify, bid)
            return frame.reply(length=info.length, checksum=info.checksum)
        if op == Op.PING:
            return frame.reply(payload=json.dumps({
                "node_id": self.node_id, "blocks": self.store.block_count,
                "inflight": self.inflight, "time": time.time()}).encode())
        if op == Op.COPY:
            await self._copy(frame, bid)
            return frame.reply()
        raise DfsError(errno.EINVAL, f"unsupported op {op}")

    def _get(self, frame: Frame, bid: str) -> Frame:
        # Runs in a worker thread: read, verify chunks, and hash a partial range.
        length = frame.length or None
        data, hdr = self.store.get(bid, frame.offset, length)
        whole = frame.offset == 0 and len(data) == hdr.length
        checksum = hdr.checksum if whole else hash64(data)
        return frame.reply(payload=data, length=hdr.length, checksum=checksum)

    async def _copy(self, frame: Frame, bid: str) -> None:
        """Push our verified replica to another node (repair)."""
        try:
            target = json.loads(bytes(frame.payload))
            dst_id, dst_addr = str(target["node_id"]), str(target["address"])
        except (ValueError, KeyError, TypeError):
            raise DfsError(errno.EINVAL, "COPY payload must be JSON {node_id, address}") from None
        dst = self.peers.get(dst_id)
        if dst is None or dst.address != dst_addr:
            await self.peers.refresh()  # a node that came up since our last look?
            dst = self.peers.get(dst_id)
        if dst is None or dst.address != dst_addr:
            raise DfsError(errno.EACCES, f"{dst_addr} is not the address of a live node {dst_id} "
                                         "of this filesystem")
        data, hdr = await self._thread(self.store.get, bid, 0, None)
        conn = await NodeConnection.open(dst_id, dst_addr, key=self.key, tls=self.peer_tls)
        try:
            with trio.fail_after(60):
                reply = await conn.request(Frame(Op.PUT, block_id=encode_block_id(bid),
                                                 length=hdr.length, checksum=hdr.checksum,
                                                 payload=data))
        except trio.TooSlowError:
            raise DfsError(errno.ETIMEDOUT, f"node {dst_id} did not take block {bid} in time") from None
        finally:
            conn.close()
        if reply.status:
            raise DfsError(reply.status, f"node {dst_id} refused block {bid}: "
                           + bytes(reply.payload).decode("utf-8", "replace"))

    async def _list(self, fs: FrameSocket, send_lock: trio.Lock, frame: Frame) -> None:
        """Stream every block in frames of LIST_BATCH records; MORE on all but the last."""
        it = self.store.list()

        def batch() -> bytes:
            out = bytearray()
            for info in it:
                out += LIST_ENTRY.pack(encode_block_id(info.block_id), info.length,
                                       info.checksum, info.mtime)
                if len(out) >= LIST_BATCH * LIST_ENTRY.size:
                    break
            return bytes(out)

        try:
            while True:
                chunk = await self._thread(batch)
                last = len(chunk) < LIST_BATCH * LIST_ENTRY.size
                async with send_lock:
                    await fs.send_frame(frame.reply(payload=chunk, flags=0 if last else MORE))
                if last:
                    return
        except (OSError, trio.ClosedResourceError, trio.BrokenResourceError):
            fs.close()
        except DfsError as e:
            await self._send_error(fs, send_lock, frame, e)


assert REPLY & max(Op) == 0
