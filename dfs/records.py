"""Typed payloads of every znode: small JSON documents with a format revision.

Each record has `encode() -> bytes` and `decode(bytes) -> record`. Unknown keys
from a newer revision are ignored when decoding so that old clients keep reading.
Byte strings (symlink targets, xattr values live in their own znodes raw) are
stored as surrogate-escaped str so any byte survives JSON.

The records every file has (InodeRecord, DirEntry) are `Compact`: ZooKeeper keeps
every znode's data in its heap, so they use one-letter keys and leave out fields
at their usual value (format revision 2). Their decode reads revision 1's long
keys too, so filesystems made before keep working; a record is rewritten compact
the next time it changes. Revision 3 added an inode's own replica count (key "k",
left out at 0: the filesystem's); revision-2 records are revision-3 records without it.
"""

import dataclasses
import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="Record")

FORMAT_REVISION = 3


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


class Compact(Record):
    """Encoded as {KEYS[field]: value} without the fields equal to `usual()`'s;
    a dict with a "revision" key is the long form of revision 1."""

    KEYS: ClassVar[dict[str, str]]
    _FIELDS: ClassVar[dict[str, str]]  # key -> field

    def __init_subclass__(cls, **kw: Any):
        super().__init_subclass__(**kw)
        cls._FIELDS = {k: f for f, k in cls.KEYS.items()}

    def usual(self) -> dict[str, Any]:
        """The values a compact dict leaves out (may depend on the fields it keeps)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        usual = self.usual()
        out = {}
        for name, key in self.KEYS.items():
            v = getattr(self, name)
            if name not in usual or v != usual[name]:
                out[key] = v
        return out

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        if "revision" in d:
            return super().from_dict(d)  # type: ignore[misc]
        fields, keys = cls._FIELDS, cls.KEYS  # type: ignore[attr-defined]
        rec = cls(**{fields[k]: v for k, v in d.items() if k in fields})
        for name, v in rec.usual().items():  # type: ignore[attr-defined]
            if keys[name] not in d:
                setattr(rec, name, v)
        return rec


@dataclass
class InodeRecord(Compact):
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
    # `dfs setrep`: copies of each block (a file), or what new entries inherit (a directory);
    # 0: the filesystem's `replicas` (left out of the record, so it costs nothing)
    replicas: int = 0

    KEYS = {"mode": "m", "uid": "u", "gid": "g", "size": "s", "atime_ns": "a", "mtime_ns": "t",
            "ctime_ns": "c", "nlink": "n", "rdev": "r", "target": "l", "parent": "p", "xattrs": "x",
            "stored": "b", "replicas": "k"}

    def usual(self) -> dict[str, Any]:
        # a new inode's three times are one; most files have one link and no xattrs
        return {"uid": 0, "gid": 0, "size": 0, "atime_ns": self.mtime_ns, "ctime_ns": self.mtime_ns,
                "nlink": 1, "rdev": 0, "target": "", "parent": 0, "xattrs": 0, "stored": 0,
                "replicas": 0}

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
class DirEntry(Compact):
    ino: int
    mode: int = stat.S_IFREG  # S_IFMT bits of the child, for readdir without a getattr

    KEYS = {"ino": "i", "mode": "m"}

    def usual(self) -> dict[str, Any]:
        return {"mode": stat.S_IFREG}


@dataclass
class BlockRef(Record):
    """One committed block: immutable content on `replicas`."""

    id: str  # 32 hex digits (128 bits)
    length: int
    checksum: str  # xxh3_64 of the whole block, 16 hex digits
    replicas: list[str] = field(default_factory=list)  # node ids
    gen: int = 1
    # the nodes' write proof (dfs.blocks.protocol.write_proof), 32 hex digits; ""
    # for a block written before proofs existed (and then left out of the encoding)
    proof: str = ""


def _ref_dict(ref: BlockRef) -> dict[str, Any]:
    d = dataclasses.asdict(ref)
    if not d["proof"]:
        del d["proof"]
    return d


@dataclass
class BlockGroup(Record):
    """The block map of blocks group*G .. group*G+G-1 of one file. Holes are absent."""

    blocks: dict[int, BlockRef] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.REVISION,
            "blocks": {str(i): _ref_dict(b) for i, b in sorted(self.blocks.items())},
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
class TrashEntry(Record):
    """trash/<ino>: a removed file kept with its blocks (dfs.meta.trash).

    The inode stays (nlink 0) with its block map; `parent` and `name` are where
    it was (name: its bytes as surrogate-escaped UTF-8); `deleted`: seconds since
    the epoch; `size`: its bytes, for `dfs trash ls`, `df` and `dfs status`.
    """

    parent: int = 0
    name: str = ""
    deleted: float = 0.0
    size: int = 0

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("utf-8", "surrogateescape")


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
