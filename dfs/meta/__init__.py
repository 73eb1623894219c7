"""The namespace and block map of one filesystem, kept in ZooKeeper; knows no cache.

`Meta` is composed of a `MetaStore` (the session, paths, config and the commit,
with an optional CommitHook a client view attaches) and the parts that act on
it: `inodes`, `namespace`, `blockmap`, `xattrs`. gc and fsck use a plain Meta
(no hook); a mount's `dfs.client.view.ClientView` puts its knowledge in front.
"""

import stat
import uuid
from typing import Callable

from dfs.config import FsConfig
from dfs.meta.blockmap import BlockMap, Prefetched
from dfs.meta.inodes import Inode, Inodes
from dfs.meta.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, Namespace, check_target
from dfs.meta.store import CommitHook, MetaStore
from dfs.meta.xattrs import XATTR_CREATE, XATTR_REPLACE, Xattrs
from dfs.paths import FsPaths
from dfs.records import BlockRef, DirEntry
from dfs.zk import ZkClient

__all__ = ["Meta", "Inode", "RENAME_EXCHANGE", "RENAME_NOREPLACE", "XATTR_CREATE", "XATTR_REPLACE"]


class Meta:
    """Namespace operations on one filesystem.

    Args:
      zk: the ZooKeeper session.
      paths: the filesystem's znode paths.
      config: the filesystem's settings (`dfs.mkfs.load_config`).
      mount_id: identifies this client in `open/<ino>/<mount_id>`.
      is_open: tells whether this client still has an inode open; an unlinked
        inode that is open stays (nlink 0) until `release_orphan`.
      hook: told of every read and commit (a client view); None for gc and fsck.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, *, mount_id: str | None = None,
                 is_open: Callable[[int], bool] = lambda ino: False, hook: CommitHook | None = None):
        self.store = MetaStore(zk, paths, config, hook)
        self.zk = zk
        self.paths = paths
        self.config = config
        self.mount_id = mount_id or uuid.uuid4().hex[:16]
        self.stats = self.store.stats
        self.inodes = Inodes(self.store)
        self.blockmap = BlockMap(self.store)
        self.xattrs = Xattrs(self.store, self.inodes)
        self.namespace = Namespace(self.store, self.inodes, self.blockmap, self.xattrs,
                                   mount_id=self.mount_id, is_open=is_open)

    @property
    def is_open(self) -> Callable[[int], bool]:
        return self.namespace.is_open

    @is_open.setter
    def is_open(self, fn: Callable[[int], bool]) -> None:
        self.namespace.is_open = fn

    # -- inodes

    async def getattr(self, ino: int) -> Inode:
        return await self.inodes.getattr(ino)

    async def setattr(self, ino: int, **fields: int | None) -> Inode:
        return await self.inodes.setattr(ino, **fields)

    async def readlink(self, ino: int) -> bytes:
        return await self.inodes.readlink(ino)

    async def inode_count(self) -> int:
        return await self.inodes.count()

    # -- names

    async def lookup(self, parent: int, name: bytes) -> Inode:
        return (await self.namespace.lookup(parent, name)).node

    async def mknod(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                    rdev: int = 0, target: bytes = b"") -> Inode:
        made = await self.namespace.mknod(parent, name, mode, uid=uid, gid=gid, rdev=rdev, target=target)
        return made.node

    async def mkdir(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), uid=uid, gid=gid)

    async def create(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFLNK | 0o777, uid=uid, gid=gid, target=check_target(target))

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        return await self.namespace.link(ino, new_parent, new_name)

    async def unlink(self, parent: int, name: bytes) -> int:
        """Remove a non-directory entry; returns the inode number it named."""
        return (await self.namespace.unlink(parent, name)).ino

    async def rmdir(self, parent: int, name: bytes) -> int:
        return (await self.namespace.rmdir(parent, name)).ino

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        await self.namespace.rename(old_parent, old_name, new_parent, new_name, flags)

    async def release_orphan(self, ino: int) -> None:
        await self.namespace.release_orphan(ino)

    async def readdir(self, ino: int, *, with_attrs: bool = False
                      ) -> list[tuple[bytes, DirEntry, Inode | None]]:
        """A snapshot of a directory: (name, entry, inode or None) sorted by name (see list_dir)."""
        listing = await self.namespace.list_dir(ino, with_attrs=with_attrs)
        return [(e.name, e.entry, e.node) for e in listing.entries]

    async def count_entries(self, ino: int) -> int:
        return await self.namespace.count_entries(ino)

    # -- xattrs

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        return await self.xattrs.get(ino, name)

    async def listxattr(self, ino: int) -> list[bytes]:
        return await self.xattrs.names(ino)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        await self.xattrs.set(ino, name, value, flags)

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self.xattrs.remove(ino, name)

    # -- block map

    async def commit_blocks(self, ino: int, updates: dict[int, BlockRef | None], **kw) -> Inode:
        return await self.blockmap.commit_blocks(ino, updates, **kw)

    async def read_block_map(self, ino: int) -> dict[int, BlockRef]:
        return await self.blockmap.read_block_map(ino)

    async def open_file(self, ino: int) -> tuple[Inode, dict[int, BlockRef], bytes | None]:
        return await self.blockmap.open_file(ino)

    async def prefetch_commit(self, ino: int, indices: list[int]) -> Prefetched:
        return await self.blockmap.prefetch_commit(ino, indices)
