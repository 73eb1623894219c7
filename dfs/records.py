"""Typed payloads of every znode: small JSON documents with a format revision.

Each record has `encode() -> bytes` and `decode(bytes) -> record`. Unknown keys
from a newer revision are ignored when decoding so that old clients keep reading.
Byte strings (symlink targets, xattr values live in their own znodes raw) are
stored as surrogate-escaped str so any byte survives JSON.
"""

import dataclasses
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Record")

FORMAT_REVISION = 1


class Record:
    REVISION: ClassVar[int] = FORMAT_REVISION

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        d["revision"] = self.REVISION
        return d

    def encode(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def decode(cls: type[T], data: bytes) -> T:
        return cls.from_dict(json.loads(data))


@dataclass
class InodeRecord(Record):
    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    nlink: int = 1
    rdev: int = 0
    target: str = ""  # symlink target, os.fsdecode()d
    parent: int = 0  # directories only: the one directory that holds it
    xattrs: int = 0  # number of extended attributes (0: getxattr needs no lookup)
    stored: int = -1  # bytes in its block refs and inline (st_blocks); -1: written before they were counted

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def target_bytes(self) -> bytes:
        return os.fsencode(self.target)


@dataclass
class DirEntry(Record):
    ino: int
    mode: int  # S_IFMT bits of the child, for readdir without a getattr


@dataclass
class BlockRef(Record):
    """One committed block: immutable content on `replicas`."""

    id: str  # 32 hex digits (128 bits)
    length: int
    checksum: str  # xxh3_64 of the whole block, 16 hex digits
    replicas: list[str] = field(default_factory=list)  # node ids
    gen: int = 1


@dataclass
class BlockGroup(Record):
    """The block map of blocks group*G .. group*G+G-1 of one file. Holes are absent."""

    blocks: dict[int, BlockRef] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.REVISION,
            "blocks": {str(i): dataclasses.asdict(b) for i, b in sorted(self.blocks.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BlockGroup":
        return cls(blocks={int(i): BlockRef.from_dict(b) for i, b in d.get("blocks", {}).items()})


@dataclass
class NodeRegistration(Record):
    """Persistent: nodes/registry/<id>."""

    node_id: str
    address: str
    zone: str = ""
    state: str = "active"  # active | draining | retired
    first_seen: float = 0.0


@dataclass
class NodeLive(Record):
    """Ephemeral: nodes/live/<id>, refreshed every few seconds."""

    node_id: str
    address: str  # "host:port"
    zone: str = ""
    capacity: int = 0
    used: int = 0
    free: int = 0
    blocks: int = 0
    load: float = 0.0
    updated: float = 0.0
    state: str = "active"
    metrics: str = ""  # "host:port" of its Prometheus endpoint, "" if none
    scrub: dict = field(default_factory=dict)  # coverage figures (nodes/scrub.py), {} unknown


@dataclass
class GcEntry(Record):
    """gc/<id>: blocks no longer referenced, to delete from the nodes that hold them.

    Either `blocks` (block id -> node ids holding it), queued in the same
    transaction that dropped the references, or `inode`: the whole map under
    blocks/<inode> is garbage (a file too large to list in one transaction).
    """

    blocks: dict[str, list[str]] = field(default_factory=dict)
    inode: int = 0
    queued: float = 0.0


@dataclass
class CorruptReport(Record):
    """repair/corrupt/<block>-<node>: a replica failed its checksum."""

    block_id: str
    node_id: str
    ino: int = 0
    reporter: str = ""
    reason: str = ""
    reported: float = 0.0
