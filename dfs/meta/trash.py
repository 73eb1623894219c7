"""The trash: removed files kept, with their blocks, for `trash_days` (FsConfig).

With the trash on, the transaction that removes a regular file's last link
(unlink, rm -r, a rename over it) does not delete the inode: it sets its nlink
to 0 and creates `trash/<ino>` (a TrashEntry: where it was, when, its size), in
that same transaction, so a mount killed at any point leaves either the file
or its trash entry, never half of one. The inode, its xattrs and block map stay
where they were, outside the namespace (no entry names them). `restore` gives
it a name again (never over an existing one); `purge` deletes it as an unlink
without the trash would (its blocks go to gc/); the repair leader purges the
entries older than `trash_days` (nodes/leader/gc.py). O_TRUNC is not a removal.

An inode that is in the trash and also open on a mount is held as an unlinked
open file is (`open/<ino>/<mount>`): a purge then only drops the trash entry
and the last close (`release_orphan`) deletes the inode.
"""

import dataclasses
import errno
import stat
import time
from typing import Protocol

from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.meta.inodes import AttrReads, Inode, Inodes, decode
from dfs.meta.store import MetaStore, now_ns
from dfs.names import check_name
from dfs.paths import FsPaths
from dfs.records import DirEntry, TrashEntry
from dfs.zk import NoNodeError, NodeExistsError, Txn, ZkClient, ZnodeStat
from dfs.zk.reads import Reads

ENTRY_BATCH = 256  # trash entries read in one multi-read


def trash_on(config: tuple[bytes, ZnodeStat] | None) -> bool:
    """Whether the config znode, as read, has the trash on."""
    return config is not None and FsConfig.decode(config[0]).trash_days > 0


def to_trash(txn: Txn, paths: FsPaths, node: Inode, where: tuple[int, bytes], t: int) -> None:
    """Add to txn: the file's last link is gone; keep it in the trash (version-checked)."""
    rec = dataclasses.replace(node.rec, nlink=0, ctime_ns=t)
    txn.set(paths.inode(node.ino), rec.encode(), node.version)
    entry = TrashEntry(parent=where[0], name=where[1].decode("utf-8", "surrogateescape"),
                       deleted=t / 1e9, size=node.rec.size)
    txn.create(paths.trash_entry(node.ino), entry.encode())


async def trash_entries(zk: ZkClient, paths: FsPaths) -> dict[int, tuple[TrashEntry, int]]:
    """Every trash entry: inode -> (entry, znode version)."""
    try:
        names = await zk.get_children(paths.trash)
    except NoNodeError:
        return {}
    inos = sorted(int(n) for n in names if n.isdigit())
    out: dict[int, tuple[TrashEntry, int]] = {}
    for i in range(0, len(inos), ENTRY_BATCH):
        part = inos[i:i + ENTRY_BATCH]
        for ino, item in zip(part, await zk.get_many([paths.trash_entry(n) for n in part])):
            if item is not None:
                out[ino] = (TrashEntry.decode(item[0]), item[1].version)
    return out


async def trash_usage(zk: ZkClient, paths: FsPaths) -> tuple[int, int]:
    """(entries, bytes) in the trash, for `dfs status` and `df`."""
    entries = await trash_entries(zk, paths)
    return len(entries), sum(e.size for e, _ in entries.values())


class InodeDeleter(Protocol):
    async def delete_inode(self, txn: Txn, node: Inode, extras: tuple | None = None) -> None: ...


class Trash:
    """Args: store: the session and its commit; inodes: for the parent's times;
    deleter: deletes an inode with its xattrs and block map (dfs.meta.namespace)."""

    def __init__(self, store: MetaStore, inodes: Inodes, deleter: InodeDeleter):
        self.store = store
        self.zk = store.zk
        self.paths = store.paths
        self.inodes = inodes
        self.deleter = deleter

    async def entries(self) -> dict[int, tuple[TrashEntry, int]]:
        """Every trash entry: inode -> (entry, znode version)."""
        return await trash_entries(self.zk, self.paths)

    async def restore(self, ino: int, parent: int, name: bytes) -> Inode:
        """Give trashed inode `ino` the name `parent`/`name` again.

        Raises ENOENT (not in the trash, or the directory is gone), EEXIST (the
        name exists: a restore never replaces anything), ENOTDIR.
        """
        check_name(name)
        paths = self.paths

        async def attempt() -> Inode:
            reads = Reads()
            entry = reads.get(paths.trash_entry(ino))
            inode = reads.get(paths.inode(ino))
            p_attrs = AttrReads(reads, paths, parent)
            existing = reads.get(paths.dirent(parent, name))
            got = await reads.run(self.zk)
            if got[entry] is None or got[inode] is None:
                raise DfsError(errno.ENOENT, f"inode {ino} is not in the trash")
            node = decode(ino, got[inode], None)
            p = p_attrs.as_dir(got)
            if p.rec.nlink == 0:
                raise DfsError(errno.ENOENT, "the directory to restore into was removed")
            if got[existing] is not None:
                raise DfsError(errno.EEXIST, f"{name!r} exists (a restore never replaces a file)")
            t = now_ns()
            rec = dataclasses.replace(node.rec, nlink=node.rec.nlink + 1, ctime_ns=t)
            txn = Txn()
            txn.delete(paths.trash_entry(ino), got[entry][1].version)
            txn.create(paths.dirent(parent, name), DirEntry(ino, stat.S_IFMT(rec.mode)).encode())
            txn.set(paths.inode(ino), rec.encode(), node.version)
            self.inodes.touch(txn, p, t=t)
            try:
                await self.store.commit(txn)
            except NodeExistsError:
                if (await self.zk.exists(paths.dirent(parent, name))) is not None:
                    raise DfsError(errno.EEXIST, f"{name!r} exists (a restore never replaces a file)") from None
                raise
            return Inode(ino, rec, node.version + 1)

        return await self.store.retrying(attempt, "restore")

    async def purge(self, ino: int) -> bool:
        """Delete trashed inode `ino` as a removal without the trash would. False: not in the trash."""
        paths = self.paths

        async def attempt() -> bool:
            reads = Reads()
            entry = reads.get(paths.trash_entry(ino))
            inode = reads.get(paths.inode(ino))
            holders = reads.children(paths.open_dir(ino))
            got = await reads.run(self.zk)
            if got[entry] is None:
                return False
            txn = Txn()
            txn.delete(paths.trash_entry(ino), got[entry][1].version)
            if got[inode] is not None:
                node = decode(ino, got[inode], None)
                if node.rec.nlink == 0 and not got[holders]:
                    await self.deleter.delete_inode(txn, node)
                    if got[holders] is not None:
                        txn.delete(paths.open_dir(ino))
                else:
                    txn.check(paths.inode(ino), node.version)  # open: release_orphan deletes it
            await self.store.commit(txn)
            return True

        return await self.store.retrying(attempt, "purge")

    async def purge_older(self, age: float, now: float | None = None) -> tuple[int, int]:
        """Purge the entries deleted more than `age` seconds ago: (entries, bytes)."""
        cutoff = (time.time() if now is None else now) - age
        count = size = 0
        for ino, (entry, _) in (await self.entries()).items():
            if entry.deleted <= cutoff:
                try:
                    if await self.purge(ino):
                        count += 1
                        size += entry.size
                except NoNodeError:
                    pass  # purged by someone else meanwhile
        return count, size
