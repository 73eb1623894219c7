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

Authentication (README "Security"). Every connection starts with a handshake;
the node accepts no other frame before it:

    client -> node   HELLO, payload = client nonce (32 random bytes)
    node -> client   HELLO reply, payload = node nonce (32) + node_proof (32)

`node_proof` is an HMAC-SHA256 under the cluster key over both nonces, so the
client knows the node holds the key (its own nonce is fresh: no replay). From
then on every frame in either direction is followed by a TAG_SIZE trailer (not
counted in payload_len): a Poly1305 tag (ChaCha20-Poly1305 of RFC 8439, with
nothing to encrypt) under that direction's session key (an HMAC-SHA256 of the
key and both nonces), whose nonce is the frame's sequence number on the
connection, over its header and the tag of its payload (`FrameMac`). Poly1305
runs at ~10 GB/s where SHA-256 ran at 1.3 (tools/benches/blockbench.py: the
MAC of a 4 MiB block is ~0.4 ms, not 3 ms). The node
checks the client by its first frame's trailer: its nonce is fresh, so a
captured handshake cannot be replayed, and the sequence number means no frame
can be dropped, repeated, reordered or injected. A frame whose trailer does not
match ends the connection.
"""

import errno
import hmac
import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

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
    HELLO = 9   # payload = client nonce -> node nonce + node proof (the handshake, above)


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


NONCE_SIZE = 32
TAG_SIZE = 16
# a tag's 96-bit nonce: what it covers (b"H" header, b"P" payload) and the sequence number
_NONCE = struct.Struct("!4sQ")
# One byte per purpose of an HMAC under the cluster key, so no value made for
# one purpose (a node's proof, one direction's session key) serves another.
_NODE_PROOF, _CLIENT_TO_NODE, _NODE_TO_CLIENT = b"P", b"C", b"N"


def _keyed(key: bytes, purpose: bytes, client_nonce: bytes, node_nonce: bytes) -> bytes:
    return hmac.digest(key, b"dfs-auth-1" + purpose + client_nonce + node_nonce, "sha256")


def node_proof(key: bytes, client_nonce: bytes, node_nonce: bytes) -> bytes:
    """What the node answers a HELLO with, besides its nonce: proof that it holds `key`."""
    return _keyed(key, _NODE_PROOF, client_nonce, node_nonce)


PROOF_SIZE = 16


def write_proof(key: bytes, block_id: str, length: int, checksum: int) -> bytes:
    """What a node answers a PUT with once the block is on its disk (TernFS's write
    proofs): a MAC under the cluster key over (block id, length, checksum). The
    client puts it into the block's ref in the commit, and fsck --verify-data and the
    repair leader check it, so that no bug can make a file reference a block that no
    node confirmed storing with that checksum (see BlockClient.proven)."""
    msg = b"dfs-proof-1" + block_id.encode("ascii", "replace") + struct.pack("!QQ", length, checksum)
    return hmac.digest(key, msg, "sha256")[:PROOF_SIZE]


class BadMac(ProtocolError):
    """A frame whose trailer does not match: the connection is not to be trusted."""


class FrameMac:
    """Seals and checks the frames of one authenticated connection (see the module docstring).

    Args:
      key: the cluster key.
      client_nonce, node_nonce: the handshake's nonces.
      client: True on the side that sent the HELLO.
    """

    def __init__(self, key: bytes, client_nonce: bytes, node_nonce: bytes, *, client: bool):
        to_node = _keyed(key, _CLIENT_TO_NODE, client_nonce, node_nonce)
        to_client = _keyed(key, _NODE_TO_CLIENT, client_nonce, node_nonce)
        send, recv = (to_node, to_client) if client else (to_client, to_node)
        self._send = ChaCha20Poly1305(send)
        self._recv = ChaCha20Poly1305(recv)
        self.sent = 0
        self.received = 0

    @staticmethod
    def _tag(aead: ChaCha20Poly1305, seq: int, header: bytes,
             payload: bytes | bytearray | memoryview) -> bytes:
        # the payload is authenticated where it lies (no copy), the header with its tag
        body = aead.encrypt(_NONCE.pack(b"P", seq), b"", payload) if len(payload) else b""
        return aead.encrypt(_NONCE.pack(b"H", seq), b"", header + body)

    def seal(self, header: bytes, payload: bytes | bytearray | memoryview) -> bytes:
        """The trailer of the next frame sent (call in send order)."""
        tag = self._tag(self._send, self.sent, header, payload)
        self.sent += 1
        return tag

    def check(self, header: bytes, payload: bytes | bytearray | memoryview,
              tag: bytes | memoryview, request_id: int = 0) -> None:
        """Check the trailer of the next frame received.

        Raises:
          BadMac: it does not match (forged, replayed, reordered or damaged).
        """
        if not hmac.compare_digest(self._tag(self._recv, self.received, header, payload), tag):
            raise BadMac(f"frame {self.received} on this connection fails its MAC", request_id)
        self.received += 1


def split_address(address: str) -> tuple[str, int]:
    """'host:port' (or '[v6]:port') -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
