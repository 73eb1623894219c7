"""Inodes: reading them (with "was this read exact"), numbering, attributes.

An inode znode's version guards every field of the inode (nlink, size, times,
the `parent` of a directory); whoever changes one of them checks the version.
A directory's content-change time lives in `dirs/<ino>`'s data (see `touch`).
"""

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass, field
from typing import Any

import trio

from dfs.errors import DfsError
from dfs.meta import acl
from dfs.meta.store import MAX_ATTEMPTS, MetaStore, now_ns
from dfs.paths import FsPaths
from dfs.records import InodeRecord
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, Txn
from dfs.zk.reads import Got, Reads
from dfs.zk.retry import retrying

INO_RANGE = 1024


@dataclass
class Inode:
    """An inode as read from ZooKeeper (or as this client's commit left it).

    `exact`: nothing raced with the read or commit it comes from, as the
    store's CommitHook tells (always False without one). `has_map`: whether a
    file's `blocks/<ino>` exists at this version (None: not known), see
    dfs.meta.blockmap.
    """

    ino: int
    rec: InodeRecord
    version: int
    exact: bool = field(default=False, compare=False)
    has_map: bool | None = field(default=None, compare=False)


def decode(ino: int, got: tuple, dir_times: tuple | None, exact: bool = False) -> Inode:
    """An inode from its znode's (data, stat); a directory's times merged from `dirs/<ino>`."""
    data, st = got
    rec = InodeRecord.decode(data)
    if rec.is_dir and dir_times is not None and dir_times[0]:
        t = int(dir_times[0])
        rec.mtime_ns = t
        rec.ctime_ns = max(rec.ctime_ns, t)
    return Inode(ino, rec, st.version, exact)


def with_attrs(rec: InodeRecord, mode: int | None = None, uid: int | None = None,
               gid: int | None = None, atime_ns: int | None = None, mtime_ns: int | None = None,
               ctime_ns: int | None = None) -> InodeRecord:
    """rec after chmod / chown / utimens (the file type bits of `mode` are kept);
    the ctime is `ctime_ns`, or now."""
    rec = dataclasses.replace(rec)
    if mode is not None:
        rec.mode = stat.S_IFMT(rec.mode) | stat.S_IMODE(mode)
    if uid is not None:
        rec.uid = uid
    if gid is not None:
        rec.gid = gid
    if atime_ns is not None:
        rec.atime_ns = atime_ns
    if mtime_ns is not None:
        rec.mtime_ns = mtime_ns
    rec.ctime_ns = ctime_ns if ctime_ns is not None else now_ns()
    return rec


def with_entry_change(p: Inode, t: int, nlink_delta: int = 0) -> Inode:
    """Directory p after an entry change at t (an nlink change is a version-checked write)."""
    rec = dataclasses.replace(p.rec, mtime_ns=t, ctime_ns=max(p.rec.ctime_ns, t),
                              nlink=p.rec.nlink + nlink_delta)
    return Inode(p.ino, rec, p.version + (1 if nlink_delta else 0), p.exact)


def as_dir(ino: int, node: Inode | None) -> Inode:
    """The directory, or ENOENT (None) / ENOTDIR."""
    if node is None:
        raise DfsError(errno.ENOENT, f"no inode {ino}")
    if not node.rec.is_dir:
        raise DfsError(errno.ENOTDIR, f"inode {ino} is not a directory")
    return node


def check_parent(parent: int, got: tuple | None) -> None:
    """ENOENT / ENOTDIR for a parent read as a get of its inode znode."""
    if got is None:
        raise DfsError(errno.ENOENT, f"no inode {parent}")
    if not InodeRecord.decode(got[0]).is_dir:
        raise DfsError(errno.ENOTDIR, f"inode {parent} is not a directory")


class AttrReads:
    """The reads of one inode's attributes (its znode, then `dirs/<ino>`) in a larger Reads."""

    __slots__ = ("ino", "inode", "dir")

    def __init__(self, reads: Reads, paths: FsPaths, ino: int):
        self.ino = ino
        self.inode = reads.get(paths.inode(ino))
        self.dir = reads.get(paths.dir(ino))

    @property
    def paths(self) -> tuple[str, str]:
        return self.inode.path, self.dir.path

    def node(self, got: Got, exact: bool = False) -> Inode | None:
        """The inode, or None if it does not exist."""
        g = got[self.inode]
        return None if g is None else decode(self.ino, g, got[self.dir], exact)

    def as_dir(self, got: Got, exact: bool = False) -> Inode:
        return as_dir(self.ino, self.node(got, exact))

    def entries(self, got: Got) -> Any:
        """The stat of `dirs/<ino>` (numChildren), or None."""
        d = got[self.dir]
        return None if d is None else d[1]


class Inodes:
    """Args: store: the session and its commit."""

    def __init__(self, store: MetaStore):
        self.store = store
        self.zk = store.zk
        self.paths = store.paths
        self._ino_next = 0
        self._ino_end = 0
        self._ino_lock = trio.Lock()

    async def getattr(self, ino: int) -> Inode:
        # One round trip reads the inode and, for a directory, the time of its
        # last content change (see touch).
        store = self.store
        mark = store.mark()
        reads = Reads()
        attrs = AttrReads(reads, self.paths, ino)
        got = await reads.run(self.zk)
        node = attrs.node(got, store.clean(mark, *attrs.paths))
        if node is None:
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        return node

    async def dir(self, ino: int) -> Inode:
        return as_dir(ino, await self.getattr(ino))

    def touch(self, txn: Txn, node: Inode, *, nlink_delta: int = 0, t: int | None = None) -> None:
        """Add to txn: a directory's contents changed (new mtime/ctime, maybe nlink).

        The times go into `dirs/<ino>`'s data as a blind write, so that many
        clients creating files in one directory do not conflict on its inode;
        only an nlink change (subdirectories) writes the inode, version-checked.
        """
        t = t or now_ns()
        txn.set(self.paths.dir(node.ino), str(t).encode())
        if nlink_delta:
            rec = dataclasses.replace(node.rec, nlink=node.rec.nlink + nlink_delta)
            txn.set(self.paths.inode(node.ino), rec.encode(), node.version)

    # -- numbering

    async def alloc(self) -> int:
        async with self._ino_lock:
            if self._ino_next >= self._ino_end:
                await self._reserve()
            ino = self._ino_next
            self._ino_next += 1
            return ino

    async def _reserve(self) -> None:
        """Reserve INO_RANGE inode numbers by compare-and-set on ids/inode."""
        async def attempt() -> int:
            data, st = await self.zk.get(self.paths.inode_counter)
            start = int(data)
            await self.zk.set(self.paths.inode_counter, str(start + INO_RANGE).encode(), st.version)
            return start

        start = await retrying(attempt, attempts=MAX_ATTEMPTS, what="reserve inode numbers",
                               conflicts=(BadVersionError,))
        for shard in {self.paths.inode_shard(start), self.paths.inode_shard(start + INO_RANGE - 1)}:
            try:
                await self.zk.create(shard)
            except NodeExistsError:
                pass
        self._ino_next, self._ino_end = start, start + INO_RANGE

    async def plan(self, mode: int, uid: int, gid: int, rdev: int = 0, target: bytes = b""
                   ) -> tuple[int, InodeRecord, int]:
        """A new inode's number, record and creation time (nothing written yet)."""
        ino = await self.alloc()
        t = now_ns()
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        rec = InodeRecord(
            mode=kind | stat.S_IMODE(mode), uid=uid, gid=gid,
            atime_ns=t, mtime_ns=t, ctime_ns=t,
            nlink=2 if kind == stat.S_IFDIR else 1,
            rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
            target=os.fsdecode(target), size=len(target), stored=0,
        )
        return ino, rec, t

    async def count(self) -> int:
        """An upper bound of the inodes in use (numbers handed out so far)."""
        data, _ = await self.zk.get(self.paths.inode_counter)
        return int(data)

    # -- attributes

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, ctime_ns: int | None = None) -> Inode:
        """chmod / chown / utimens (size changes go through `BlockMap.commit_blocks`)."""

        async def attempt() -> Inode:
            node = await self.getattr(ino)
            rec = with_attrs(node.rec, mode, uid, gid, atime_ns, mtime_ns, ctime_ns)
            txn = Txn().set(self.paths.inode(ino), rec.encode(), node.version)
            if mode is not None and rec.xattrs:
                await self._chmod_acl(txn, ino, rec.mode)
            if rec.is_dir:
                # node.rec already merged the content-change time: from now on the
                # inode's times are the truth again (see touch / getattr)
                txn.set(self.paths.dir(ino), b"")
            exact = await self.store.commit(txn)
            return Inode(ino, rec, node.version + 1, exact)

        return await self.store.retrying(attempt, "setattr")

    async def setattr_many(self, changes: list[tuple[Inode, dict[str, int]]]) -> list[Inode]:
        """Several inodes' chmod / chown / utimens (`with_attrs` fields) in one
        transaction, each on the inode as the caller knows it: if any changed
        since (its version), nothing is written (BadVersionError or NoNodeError).
        Not for a chmod of an inode with an ACL (see `setattr`)."""
        txn = Txn()
        made = []
        for node, fields in changes:
            rec = with_attrs(node.rec, **fields)
            txn.set(self.paths.inode(node.ino), rec.encode(), node.version)
            if rec.is_dir:  # as in setattr: the inode's times are the truth again
                txn.set(self.paths.dir(node.ino), b"")
            made.append((node.ino, rec, node.version + 1))
        exact = await self.store.commit(txn)
        return [Inode(ino, rec, version, exact) for ino, rec, version in made]

    async def set_atime(self, ino: int, t: int, known: Inode | None = None) -> Inode:
        """relatime's update: the atime alone (setattr would move the ctime too).
        `known`: the inode as the caller last saw it; tried first without a read (its
        version checked: if it changed since, the inode is read and the write retried)."""
        first = [known] if known is not None else []

        async def attempt() -> Inode:
            node = first.pop() if first else await self.getattr(ino)
            if node.rec.atime_ns >= t:
                return node
            rec = dataclasses.replace(node.rec, atime_ns=t)
            exact = await self.store.commit(Txn().set(self.paths.inode(ino), rec.encode(), node.version))
            return Inode(ino, rec, node.version + 1, exact)

        return await self.store.retrying(attempt, "atime")

    async def _chmod_acl(self, txn: Txn, ino: int, mode: int) -> None:
        """Add to txn: the access ACL follows a chmod (its version checked, like the inode's)."""
        path = self.paths.xattr(ino, acl.ACCESS)
        try:
            value, st = await self.zk.get(path)
        except NoNodeError:
            return
        txn.set(path, acl.chmod(value, mode), st.version)

    async def readlink(self, ino: int) -> bytes:
        node = await self.getattr(ino)
        if not node.rec.is_link:
            raise DfsError(errno.EINVAL, "not a symlink")
        return node.rec.target_bytes
