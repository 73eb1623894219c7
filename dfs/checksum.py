"""Checksums of block content: xxh3_64 over a whole block and over 64 KiB chunks.

`block_checksum` is what `BlockRef.checksum` holds (16 hex digits). Nodes keep a
checksum per `CHUNK_SIZE` chunk next to each block so that a range read verifies
only the chunks it touches. On the wire the same hash travels as a u64.
"""

import re
import struct

import xxhash

CHUNK_SIZE = 64 * 1024

BLOCK_ID_RE = re.compile(r"[0-9a-f]{32}")

_intdigest = xxhash.xxh3_64_intdigest


def hash64(data: bytes | bytearray | memoryview) -> int:
    """xxh3_64 of `data` as an unsigned 64-bit integer (the wire form)."""
    return _intdigest(data)


def to_hex(value: int) -> str:
    return f"{value:016x}"


def from_hex(text: str) -> int:
    if len(text) != 16:
        raise ValueError(f"not a 64-bit hex checksum: {text!r}")
    return int(text, 16)


def block_checksum(data: bytes | bytearray | memoryview) -> str:
    """xxh3_64 hex digest of a whole block, as stored in `BlockRef.checksum`."""
    return f"{_intdigest(data):016x}"


def chunk_checksums(data: bytes | bytearray | memoryview) -> list[int]:
    """One xxh3_64 per CHUNK_SIZE chunk of `data` (the last chunk may be short)."""
    mv = memoryview(data)
    return [_intdigest(mv[i:i + CHUNK_SIZE]) for i in range(0, len(mv), CHUNK_SIZE)]


def pack_chunk_checksums(sums: list[int]) -> bytes:
    return struct.pack(f"<{len(sums)}Q", *sums)


def unpack_chunk_checksums(raw: bytes | memoryview, count: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{count}Q", raw)


def valid_block_id(block_id: str) -> bool:
    """True for 32 lowercase hex digits; anything else never becomes a path."""
    return BLOCK_ID_RE.fullmatch(block_id) is not None
