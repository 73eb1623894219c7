"""The block wire protocol shared by storage nodes and clients (DESIGN.md section 3).

Every message is one frame: a fixed big-endian header followed by `payload_len`
bytes. Requests and replies use the same header; a reply has the request's op
with `REPLY` set and the same request id, so requests may be pipelined on one
connection and answered in any order.

    magic      4s   b"DFS\\x01"
    op         B    Op (| REPLY in replies)
    flags      B    MORE: a streamed reply continues (LIST)
    reserved   H    0
    request_id Q    chosen by the client, echoed in replies
    block_id   32s  32 lowercase hex digits (ASCII), NUL bytes when unused
    offset     Q    GET: first byte; STAT reply: mtime in ns
    length     Q    GET: bytes wanted; PUT/STAT reply: block length
    checksum   Q    xxh3_64 of the payload (PUT, GET reply); block checksum (STAT, VERIFY reply)
    status     I    errno of a reply, 0 on success
    payload_len Q   bytes that follow, at most MAX_PAYLOAD

A frame that cannot be parsed (wrong magic, payload too large) raises
ProtocolError; the node answers it with EINVAL and closes that connection.
"""

import errno
import json
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Callable, Sequence

import trio

from dfs.errors import DfsError

MAGIC = b"DFS\x01"
HEADER = struct.Struct("!4sBBHQ32sQQQIQ")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 1024 * 1024 + 64 * 1024  # a 64 MiB block and a little room
NO_BLOCK = bytes(32)
RECV_BUFFER = 256 * 1024
U64_MAX = (1 << 64) - 1

REPLY = 0x80
MORE = 0x01  # flags: more reply frames follow for this request


class Op(IntEnum):
    PUT = 1     # payload = block; checksum = xxh3 of payload
    GET = 2     # offset, length -> payload
    DELETE = 3
    STAT = 4    # -> length, checksum, offset = mtime_ns
    LIST = 5    # -> frames of LIST_ENTRY records, MORE on all but the last
    COPY = 6    # payload = JSON {"node_id", "address"}: push the block there
    PING = 7    # -> payload = JSON with the node id and a few counters
    VERIFY = 8  # node re-reads and re-hashes the block -> status 0 or EIO


# LIST reply records: block id, length, checksum, mtime (s)
LIST_ENTRY = struct.Struct("!32sQQd")


class ProtocolError(DfsError):
    """A frame that violates the protocol; the connection cannot be trusted any more."""

    def __init__(self, message: str, request_id: int = 0):
        super().__init__(errno.EINVAL, message)
        self.request_id = request_id


class TruncatedFrame(ProtocolError):
    """The peer closed the connection in the middle of a frame."""


@dataclass
class Frame:
    op: int
    request_id: int = 0
    block_id: bytes = NO_BLOCK
    offset: int = 0
    length: int = 0
    checksum: int = 0
    status: int = 0
    flags: int = 0
    payload: bytes | bytearray | memoryview = b""

    def header(self) -> bytes:
        return HEADER.pack(MAGIC, self.op, self.flags, 0, self.request_id, self.block_id,
                           self.offset, self.length, self.checksum, self.status, len(self.payload))

    @property
    def block_id_str(self) -> str:
        """The block id as text (latin-1 never fails; the caller validates it)."""
        return self.block_id.rstrip(b"\0").decode("latin-1")

    def reply(self, status: int = 0, payload: bytes | bytearray | memoryview = b"", *,
              length: int = 0, checksum: int = 0, offset: int = 0, flags: int = 0) -> "Frame":
        return Frame(self.op | REPLY, self.request_id, self.block_id, offset, length, checksum,
                     status, flags, payload)


def encode_block_id(block_id: str) -> bytes:
    raw = block_id.encode("ascii")
    if len(raw) > 32:
        raise ValueError(f"block id too long: {block_id!r}")
    return raw.ljust(32, b"\0")


def parse_header(raw: bytes | bytearray | memoryview, max_payload: int = MAX_PAYLOAD
                 ) -> tuple[Frame, int]:
    """Decode a header; returns the frame (without payload) and the payload length."""
    magic, op, flags, _, rid, bid, off, length, csum, status, plen = HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}", rid)
    if plen > max_payload:
        raise ProtocolError(f"payload of {plen} bytes exceeds the limit of {max_payload}", rid)
    return Frame(op, rid, bid, off, length, csum, status, flags), plen


def json_payload(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class FrameSocket:
    """Frames over one connected trio socket, with few copies.

    Small frames are parsed out of one receive buffer; a large payload is
    received straight into its own bytearray (`recv_into`). Sends use `sendmsg`
    so a header and its payload go out in one system call without concatenation.

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
        self._buf = bytearray(RECV_BUFFER)
        self._lo = 0
        self._hi = 0

    async def _recv_more(self) -> bool:
        if self._lo == self._hi:
            self._lo = self._hi = 0
        elif self._hi == len(self._buf):
            n = self._hi - self._lo
            self._buf[:n] = self._buf[self._lo:self._hi]
            self._lo, self._hi = 0, n
        got = await self.sock.recv_into(memoryview(self._buf)[self._hi:])
        self._hi += got
        return got > 0

    async def recv_frame(self) -> Frame | None:
        """The next frame, or None at a clean end of stream between frames.

        Raises:
          ProtocolError: a bad header (the caller should reply and close).
          TruncatedFrame: the stream ended inside a frame.
          OSError: the connection broke.
        """
        while self._hi - self._lo < HEADER_SIZE:
            if not await self._recv_more():
                if self._hi == self._lo:
                    return None
                raise TruncatedFrame("connection closed inside a frame header")
        frame, plen = parse_header(memoryview(self._buf)[self._lo:self._lo + HEADER_SIZE],
                                   self.max_payload)
        self._lo += HEADER_SIZE
        if plen == 0:
            return frame
        have = min(plen, self._hi - self._lo)
        if have == plen:  # common for small frames: all in the buffer already
            frame.payload = bytes(self._buf[self._lo:self._lo + plen])
            self._lo += plen
            return frame
        holder = self.alloc(frame, plen) if self.alloc is not None else None
        payload = holder if holder is not None else bytearray(plen)
        view = holder.data if holder is not None else memoryview(payload)
        view[:have] = memoryview(self._buf)[self._lo:self._lo + have]
        self._lo += have
        while have < plen:
            got = await self.sock.recv_into(view[have:])
            if got == 0:
                raise TruncatedFrame(f"connection closed after {have} of {plen} payload bytes",
                                     frame.request_id)
            have += got
        frame.payload = payload
        return frame

    async def send_frame(self, frame: Frame) -> None:
        await self.send_buffers([frame.header(), frame.payload] if len(frame.payload)
                                else [frame.header()])

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
