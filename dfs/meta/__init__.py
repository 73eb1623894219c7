"""The namespace and block map of one filesystem, kept in ZooKeeper; knows no cache.

`Meta` is composed of a `MetaStore` (the session, paths, config and the commit,
with an optional CommitHook a client view attaches) and the parts that act on
it: `inodes`, `namespace`, `blockmap`, `xattrs`, `trash`; call them directly. gc and fsck
use a plain Meta (no hook); a mount's `dfs.client.view.ClientView` puts its
knowledge in front. The few methods here are the plain answers fsck and the
benches want from the namespace's richer results.
"""

import stat
import uuid
from typing import Callable

from dfs.config import FsConfig
from dfs.meta.blockmap import BlockMap
from dfs.meta.inodes import Inode, Inodes
from dfs.meta.leases import Leases
from dfs.meta.namespace import RENAME_EXCHANGE, RENAME_NOREPLACE, Namespace
from dfs.meta.store import CommitHook, MetaStore
from dfs.meta.trash import Trash
from dfs.meta.writers import Writer
from dfs.meta.xattrs import XATTR_CREATE, XATTR_REPLACE, Xattrs
from dfs.paths import FsPaths
from dfs.records import DirEntry
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
      writer: the mount's writer record, which commits of its blocks fence on
        (dfs.meta.writers); None for clients that write blocks of no writer.
      leases: the directory leases (dfs.meta.leases); None: a plain client's,
        which holds none and reads each one it needs.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, *, mount_id: str | None = None,
                 is_open: Callable[[int], bool] = lambda ino: False, hook: CommitHook | None = None,
                 writer: Writer | None = None, leases: Leases | None = None):
        self.store = MetaStore(zk, paths, config, hook, leases)
        self.zk, self.paths, self.config, self.stats = zk, paths, config, self.store.stats
        self.inodes = Inodes(self.store)
        self.blockmap = BlockMap(self.store, writer)
        self.xattrs = Xattrs(self.store, self.inodes)
        self.namespace = Namespace(self.store, self.inodes, self.blockmap, self.xattrs,
                                   mount_id=mount_id or uuid.uuid4().hex[:16], is_open=is_open)
        self.trash = Trash(self.store, self.inodes, self.namespace)

    async def lookup(self, parent: int, name: bytes) -> Inode:
        return (await self.namespace.lookup(parent, name)).node

    async def mknod(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                    rdev: int = 0, target: bytes = b"") -> Inode:
        return (await self.namespace.mknod(parent, name, mode, uid=uid, gid=gid, rdev=rdev, target=target)).node

    async def mkdir(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), uid=uid, gid=gid)

    async def create(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid)

    async def unlink(self, parent: int, name: bytes) -> int:
        """Remove a non-directory entry; returns the inode number it named."""
        return (await self.namespace.unlink(parent, name)).ino

    async def rmdir(self, parent: int, name: bytes) -> int:
        return (await self.namespace.rmdir(parent, name)).ino

    async def readdir(self, ino: int, *, with_attrs: bool = False
                      ) -> list[tuple[bytes, DirEntry, Inode | None]]:
        """A snapshot of a directory: (name, entry, inode or None) sorted by name (see list_dir)."""
        listing = await self.namespace.list_dir(ino, with_attrs=with_attrs)
        return [(e.name, e.entry, e.node) for e in listing.entries]
