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
import struct
from dataclasses import dataclass
from enum import IntEnum

from dfs.errors import DfsError

MAGIC = b"DFS\x01"
HEADER = struct.Struct("!4sBBHQ32sQQQIQ")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 64 * 1024 * 1024 + 64 * 1024  # a 64 MiB block and a little room
NO_BLOCK = bytes(32)

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


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
