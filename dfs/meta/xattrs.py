"""Extended attributes: one znode per attribute under `xattrs/<ino>`.

Every change also writes the inode (ctime, its `xattrs` count), version-checked,
so that deleting an inode with the names read after it is complete (see
`Xattrs.drop`).
"""

import dataclasses
import errno

from dfs.errors import DfsError
from dfs.meta import acl
from dfs.meta.inodes import AttrReads, Inodes
from dfs.meta.store import MetaStore, now_ns
from dfs.names import unescape
from dfs.paths import child
from dfs.zk import NoNodeError, Txn
from dfs.zk.reads import Reads

XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536


class Xattrs:
    """Args: store: the session and its commit; inodes: for the inode's version and ENOENT."""

    def __init__(self, store: MetaStore, inodes: Inodes):
        self.store = store
        self.zk = store.zk
        self.paths = store.paths
        self.inodes = inodes

    async def get(self, ino: int, name: bytes) -> bytes:
        try:
            data, _ = await self.zk.get(self.paths.xattr(ino, name))
        except NoNodeError:
            await self.inodes.getattr(ino)  # ENOENT
            raise DfsError(errno.ENODATA, "no such attribute") from None
        return data

    async def names(self, ino: int) -> list[bytes]:
        await self.inodes.getattr(ino)
        names = await self.store.children(self.paths.xattr_dir(ino)) or []
        return sorted(unescape(n) for n in names)

    async def set(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > XATTR_NAME_MAX:
            raise DfsError(errno.ERANGE, "bad attribute name length")
        if len(value) > XATTR_SIZE_MAX:
            raise DfsError(errno.E2BIG, "attribute value too large")
        path = self.paths.xattr(ino, name)
        minimal = name == acl.ACCESS and acl.is_minimal(value)

        async def attempt() -> None:
            reads = Reads()
            attrs = AttrReads(reads, self.paths, ino)
            folder = reads.get(self.paths.xattr_dir(ino))
            current = reads.get(path)
            got = await reads.run(self.zk)
            node = attrs.node(got)
            if node is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            exists = got[current]
            if exists and flags & XATTR_CREATE:
                raise DfsError(errno.EEXIST, "attribute exists")
            if not exists and flags & XATTR_REPLACE:
                raise DfsError(errno.ENODATA, "no such attribute")
            txn = Txn()
            if minimal:  # a chmod: the mode says it all (an ACL stored before goes)
                count = node.rec.xattrs - (1 if exists else 0)
                if exists:
                    txn.delete(path, exists[1].version)
            else:
                count = node.rec.xattrs + (0 if exists else 1)
                if got[folder] is None:
                    # in the transaction, so that no empty xattrs/<ino> outlives a failed attempt
                    txn.create(self.paths.xattr_dir(ino))
                if exists:
                    txn.set(path, value, exists[1].version)
                else:
                    txn.create(path, value)
            rec = dataclasses.replace(node.rec, ctime_ns=now_ns(), xattrs=max(0, count))
            if name == acl.ACCESS:  # the kernel leaves the mode to us (fs/fuse/acl.c)
                rec.mode = acl.mode_of(value, rec.mode)
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            await self.store.commit(txn)

        await self.store.retrying(attempt, "setxattr")

    async def remove(self, ino: int, name: bytes) -> None:
        path = self.paths.xattr(ino, name)

        async def attempt() -> None:
            reads = Reads()
            attrs = AttrReads(reads, self.paths, ino)
            current = reads.get(path)
            got = await reads.run(self.zk)
            node = attrs.node(got)
            if node is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            if not got[current]:
                raise DfsError(errno.ENODATA, "no such attribute")
            txn = Txn()
            txn.delete(path, got[current][1].version)
            rec = dataclasses.replace(node.rec, ctime_ns=now_ns(), xattrs=max(0, node.rec.xattrs - 1))
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            await self.store.commit(txn)

        await self.store.retrying(attempt, "removexattr")

    def drop(self, txn: Txn, ino: int, names: list[str] | None) -> None:
        """Add to txn: delete every attribute of ino (`names`: its children, read after the inode)."""
        if names is None:
            return
        folder = self.paths.xattr_dir(ino)
        for x in names:
            txn.delete(child(folder, x))
        txn.delete(folder)
