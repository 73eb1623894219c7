"""The namespace and block map of one filesystem, kept in ZooKeeper.

Every change is one ZooKeeper transaction with version checks on everything it
read. A conflict (BadVersion, or NoNode/NodeExists/NotEmpty from a concurrent
change) makes the operation re-read and try again; the re-read decides which
POSIX error, if any, the caller gets. Each retried step is therefore idempotent.

Concurrency invariants:
- An inode znode's version guards every field of the inode (nlink, size, times,
  the `parent` of a directory). Whoever changes one of them checks the version.
- A directory's `dirs/<ino>` znode has one child per entry; ZooKeeper refuses to
  delete it while it has children, which makes rmdir's emptiness check atomic.
- Directories record their parent (`InodeRecord.parent`): rename checks the
  version of every ancestor of the destination so that no concurrent rename can
  slip in a cycle.
"""

import dataclasses
import errno
import logging
import os
import stat
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Iterable

import trio

from dfs.client.feed import MetaCache
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.names import NAME_MAX, check_name, unescape
from dfs.paths import ROOT_INO, FsPaths
from dfs.records import BlockGroup, BlockRef, DirEntry, GcEntry, InodeRecord
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError, Txn, ZkClient
from dfs.zk.retry import retrying

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
XATTR_CREATE = 1
XATTR_REPLACE = 2
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536



class Conflict(Exception):
    """What an attempt read changed under it (e.g. a dirent's inode vanished): read again."""


CONFLICTS = (BadVersionError, NoNodeError, NodeExistsError, NotEmptyError, Conflict)
MAX_ATTEMPTS = 100
INO_RANGE = 1024
GC_BATCH = 2000  # block refs per gc/ entry (keeps each znode well under 1 MiB)
INLINE_GC_LIMIT = 4 * GC_BATCH  # larger files are handed to gc as a whole inode


class PendingCreate:
    """The outcome of a create_async: `done` is set once it landed or failed (`error`)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: DfsError | None = None


class _Version:
    """A stand-in for a ZnodeStat of which only the version is used."""

    __slots__ = ("version",)

    def __init__(self, version: int):
        self.version = version


@dataclass
class Inode:
    """An inode as read from ZooKeeper: its number, record and znode version."""

    ino: int
    rec: InodeRecord
    version: int


def now_ns() -> int:
    return time.time_ns()


class Meta:
    """Namespace operations on one filesystem.

    Args:
      zk: the ZooKeeper session.
      paths: the filesystem's znode paths.
      config: the filesystem's settings (`dfs.mkfs.load_config`).
      mount_id: identifies this client in `open/<ino>/<mount_id>`.
      is_open: tells whether this client still has an inode open; an unlinked
        inode that is open stays (nlink 0) until `release_orphan`.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, *, mount_id: str | None = None,
                 is_open: Callable[[int], bool] = lambda ino: False):
        self.zk = zk
        self.paths = paths
        self.config = config
        self.mount_id = mount_id or uuid.uuid4().hex[:16]
        self.is_open = is_open
        self._ino_next = 0
        self._ino_end = 0
        self._ino_lock = trio.Lock()
        self.stats = {"retries": 0}
        # (parent, name) -> inode last seen there. Only a guess that lets one
        # multi-read fetch a name's inode together with its dirent; every use
        # checks it against the dirent just read, so a stale hint costs a round
        # trip, never a wrong answer.
        self.hints: dict[tuple[int, bytes], int] = {}
        # inodes this client unlinked (or renamed over) while it had them open:
        # it holds them in open/<ino>/<mount_id> until release_orphan
        self.held: set[int] = set()
        # ino -> (when we read it, the inode as read plus our own changes since).
        # Within FRESH_FOR of that read it answers getattr (the kernel re-asks
        # for a directory after every entry change) and stands in for the read
        # before a version-checked change (a stale one fails the check: retried).
        self.fresh: dict[int, tuple[float, Inode, bool]] = {}
        # (parent, name) -> inode of a create_async still on its way
        self.creating: dict[tuple[int, bytes], Inode] = {}
        self._vmax: dict[int, int] = {}  # ino -> highest znode version remembered
        self._creates_changed = trio.Condition()
        # kept exact by ZooKeeper's change feed when enabled (enable_cache)
        self.cache: MetaCache | None = None

    HINTS_MAX = 200_000
    FRESH_FOR = 1.0  # seconds; the mount sets it to its attr_timeout

    def enable_cache(self) -> MetaCache:
        """Cache lookups, attributes and listings exactly (needs a ZooKeeper client
        with `add_feed`, e.g. dfs.zk.session.WireZk); run `cache.run(zk)` in a nursery."""
        self.cache = MetaCache(self.paths.root, self._invalidate)
        return self.cache

    def _invalidate(self, kind: str, ino: int) -> None:
        if kind == "all":
            self.fresh.clear()
        else:
            self.fresh.pop(ino, None)

    def _mark(self):
        return self.cache.mark() if self.cache is not None else None

    def _clean(self, mark, *paths: str) -> bool:
        return self.cache is not None and self.cache.clean(mark, *paths)

    async def _commit(self, txn: Txn) -> bool:
        """Commit txn; True if this client's cache may take its result as exact."""
        if self.cache is None:
            await self.zk.commit(txn)
            return False
        paths = [args[0] for op, args in txn.ops if op != "check"]
        mark = self.cache.begin(paths)
        applied = False
        try:
            await self.zk.commit(txn)
            applied = True
        finally:
            ok = self.cache.settle(mark, paths, applied)
        return ok

    def remember(self, node: Inode, seen: float | None = None, exact: bool = False) -> Inode:
        """Cache node, unless we already saw a later version of it (concurrent tasks
        finish in any order; an inode's znode version only grows)."""
        if node.version < self._vmax.get(node.ino, -1):
            return node
        if len(self.fresh) >= self.HINTS_MAX:
            self.fresh.clear()
            self._vmax.clear()
        self._vmax[node.ino] = node.version
        self.fresh[node.ino] = (time.monotonic() if seen is None else seen, node, exact)
        return node

    def known(self, ino: int) -> tuple[Inode, float] | None:
        """The inode as this client knows it and that knowledge's age, if fresh.

        Exact entries (kept by the change feed) have age 0 while the feed runs.
        """
        got = self.fresh.get(ino)
        if got is None:
            return None
        if got[2] and self.cache is not None and self.cache.active:
            return got[1], 0.0
        age = time.monotonic() - got[0]
        if age >= self.FRESH_FOR:
            del self.fresh[ino]
            return None
        return got[1], age

    @staticmethod
    def _with_entry_change(p: Inode, t: int, nlink_delta: int) -> Inode:
        """Directory p after an entry change at t (an nlink change is a version-checked write)."""
        rec = dataclasses.replace(p.rec, mtime_ns=t, ctime_ns=max(p.rec.ctime_ns, t),
                                  nlink=p.rec.nlink + nlink_delta)
        return Inode(p.ino, rec, p.version + (1 if nlink_delta else 0))

    def _changed_dir(self, ino: int, t: int, nlink_delta: int = 0, exact: bool | None = None) -> None:
        """This client changed directory ino's entries at time t: keep its cached inode current."""
        got = self.fresh.get(ino)
        if got is None:
            return
        seen, node, was_exact = got
        self.remember(self._with_entry_change(node, t, nlink_delta), seen=seen,
                      exact=was_exact if exact is None else was_exact and exact)

    def hint(self, parent: int, name: bytes, ino: int | None) -> None:
        if ino is None:
            self.hints.pop((parent, name), None)
            return
        if len(self.hints) >= self.HINTS_MAX:
            self.hints.clear()
        self.hints[(parent, name)] = ino

    # ------------------------------------------------------------------ helpers

    async def _retrying(self, attempt: Callable, what: str):
        """Run a namespace change's idempotent `attempt()` until it does not
        conflict (at most MAX_ATTEMPTS times; dfs.zk.retry)."""
        return await retrying(attempt, attempts=MAX_ATTEMPTS, what=what, conflicts=CONFLICTS,
                              on_retry=self._count_retry)

    def _count_retry(self, _conflict: BaseException) -> None:
        self.stats["retries"] += 1

    async def _alloc_ino(self) -> int:
        async with self._ino_lock:
            if self._ino_next >= self._ino_end:
                await self._reserve_inodes()
            ino = self._ino_next
            self._ino_next += 1
            return ino

    async def _reserve_inodes(self) -> None:
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

    async def getattr(self, ino: int) -> Inode:
        # One round trip reads the inode and, for a directory, the time of its
        # last content change (see _touch).
        mark = self._mark()
        got = await self.zk.get_many([self.paths.inode(ino), self.paths.dir(ino)])
        if got[0] is None:
            self.fresh.pop(ino, None)
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        return self.remember(self._inode(ino, got[0], got[1]),
                             exact=self._clean(mark, self.paths.inode(ino), self.paths.dir(ino)))

    @staticmethod
    def _inode(ino: int, got: tuple, dir_times: tuple | None) -> Inode:
        data, st = got
        rec = InodeRecord.decode(data)
        if rec.is_dir and dir_times is not None and dir_times[0]:
            t = int(dir_times[0])
            rec.mtime_ns = t
            rec.ctime_ns = max(rec.ctime_ns, t)
        return Inode(ino, rec, st.version)

    async def _dir(self, ino: int) -> Inode:
        mark = self._mark()
        got = await self.zk.get_many([self.paths.inode(ino), self.paths.dir(ino)])
        return self.remember(self._as_dir(ino, got[0], got[1]),
                             exact=self._clean(mark, self.paths.inode(ino), self.paths.dir(ino)))

    def _attr_reads(self, ino: int) -> list[tuple[str, str]]:
        """The reads of `getattr(ino)`, to put into a larger multi-read."""
        return [("get", self.paths.inode(ino)), ("get", self.paths.dir(ino))]

    def _as_dir(self, ino: int, got: tuple | None, dir_times: tuple | None) -> Inode:
        """The directory `ino` from the results of `_attr_reads`, or ENOENT / ENOTDIR."""
        if got is None:
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        node = self._inode(ino, got, dir_times)
        if not node.rec.is_dir:
            raise DfsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        return node

    async def _dirent(self, parent: int, name: bytes) -> tuple[DirEntry, int] | None:
        try:
            data, st = await self.zk.get(self.paths.dirent(parent, name))
        except NoNodeError:
            return None
        return DirEntry.decode(data), st.version

    def _touch(self, txn: Txn, node: Inode, *, nlink_delta: int = 0, t: int | None = None) -> None:
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

    # ------------------------------------------------------------------ lookup

    async def lookup(self, parent: int, name: bytes) -> Inode:
        if len(name) > NAME_MAX:
            raise DfsError(errno.ENAMETOOLONG, "name too long")
        if name == b".":
            return await self._dir(parent)
        if name == b"..":
            p = await self._dir(parent)
            return await self.getattr(p.rec.parent or ROOT_INO)
        creating = self.creating.get((parent, name))
        if creating is not None:
            seen = self.known(creating.ino)
            return seen[0] if seen is not None else creating
        cache = self.cache
        if cache is not None and cache.active:
            # answered from what the change feed keeps exact, when we know it
            ent = cache.dirents.get((parent, name))
            if ent is not None:
                seen = self.known(ent[0])
                if seen is not None and seen[1] == 0.0:
                    return seen[0]
            names = cache.names.get(parent)
            if names is not None and ent is None and name not in names:
                raise DfsError(errno.ENOENT, f"no entry {name!r}")
        guess = self.hints.get((parent, name))
        dirent_path = self.paths.dirent(parent, name)
        reads = [("get", dirent_path), ("get", self.paths.inode(parent))]
        if guess is not None:
            reads += [("get", self.paths.inode(guess)), ("get", self.paths.dir(guess))]
        mark = self._mark()
        got = await self.zk.read_many(reads)
        if got[0] is None:
            self.hint(parent, name, None)
            self._check_parent(parent, got[1])
            raise DfsError(errno.ENOENT, f"no entry {name!r}")
        dirent = DirEntry.decode(got[0][0])
        ino = dirent.ino
        if cache is not None and self._clean(mark, dirent_path):
            cache.trust(parent, name, ino, dirent.mode)
        if ino == guess and got[2] is not None:
            # read after the dirent in the same multi-read: consistent with it
            return self.remember(self._inode(ino, got[2], got[3]), exact=self._clean(
                mark, dirent_path, self.paths.inode(ino), self.paths.dir(ino)))
        try:
            node = await self.getattr(ino)
        except DfsError:
            # dirent raced with a rename/unlink: read again once, consistently
            ent = await self._dirent(parent, name)
            if ent is None:
                raise DfsError(errno.ENOENT, f"no entry {name!r}") from None
            node = await self.getattr(ent[0].ino)
        self.hint(parent, name, node.ino)
        return node

    @staticmethod
    def _check_parent(parent: int, got: tuple | None) -> None:
        """ENOENT / ENOTDIR for a parent read as ("get", inode(parent))."""
        if got is None:
            raise DfsError(errno.ENOENT, f"no inode {parent}")
        if not InodeRecord.decode(got[0]).is_dir:
            raise DfsError(errno.ENOTDIR, f"inode {parent} is not a directory")

    # ------------------------------------------------------------------ create

    async def _plan(self, mode: int, uid: int, gid: int, rdev: int = 0, target: bytes = b""
                    ) -> tuple[int, InodeRecord, int]:
        ino = await self._alloc_ino()
        t = now_ns()
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        rec = InodeRecord(
            mode=kind | stat.S_IMODE(mode), uid=uid, gid=gid,
            atime_ns=t, mtime_ns=t, ctime_ns=t,
            nlink=2 if kind == stat.S_IFDIR else 1,
            rdev=rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0,
            target=os.fsdecode(target), size=len(target),
        )
        return ino, rec, t

    async def create_async(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                           nursery: trio.Nursery,
                           on_failed: Callable[[DfsError], None] | None = None
                           ) -> tuple[Inode, "PendingCreate"]:
        """Create a regular file without waiting for its transaction.

        Returns once the transaction is on its way (a session's requests apply
        in order, so anything this client sends later, such as the commit of
        the file's data, applies after it). Until it lands, this client answers
        lookups of the name from `creating`. If it fails (another client took
        the name meanwhile, the directory went away), `PendingCreate.error`
        says why, and the file's first flush reports it; `on_failed` runs too.
        """
        check_name(name)
        ino, rec, t = await self._plan(stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
        node = Inode(ino, rec, 0)
        pending = PendingCreate()
        key = (parent, name)
        self.creating[key] = node
        self.remember(node)
        self.hint(parent, name, ino)
        sent = trio.Event()

        async def run() -> None:
            try:
                await self.mknod(parent, name, rec.mode, uid=uid, gid=gid, planned=(ino, rec, t),
                                 on_sent=sent.set)
            except Exception as e:
                pending.error = e if isinstance(e, DfsError) else DfsError(errno.EIO, repr(e))
                log.warning("create of %r in directory %d failed after open returned: %s",
                            name, parent, pending.error)
                self.fresh.pop(ino, None)
                if on_failed is not None:
                    on_failed(pending.error)
            finally:
                if self.creating.get(key) is node:
                    del self.creating[key]
                pending.done.set()
                sent.set()
                async with self._creates_changed:
                    self._creates_changed.notify_all()

        nursery.start_soon(run)
        await sent.wait()
        return node, pending

    async def drain_creates(self) -> None:
        """Wait until every create_async has landed (or failed)."""
        async with self._creates_changed:
            while self.creating:
                await self._creates_changed.wait()

    async def mknod(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                    rdev: int = 0, target: bytes = b"",
                    planned: tuple[int, InodeRecord, int] | None = None,
                    on_sent: Callable[[], None] | None = None) -> Inode:
        """Create a file, directory, symlink, fifo, socket or device node.

        Raises EEXIST, ENOENT (parent gone), ENOTDIR, ENAMETOOLONG, EINVAL.
        `planned` (from create_async): the inode number, record and time to use;
        `on_sent` runs just before the first attempt's transaction is sent.
        """
        check_name(name)
        ino, rec, t = planned or await self._plan(mode, uid, gid, rdev, target)
        kind = stat.S_IFMT(rec.mode)
        first = True

        async def attempt() -> Inode:
            nonlocal first
            p = None
            if kind == stat.S_IFDIR:
                cached = self.known(parent) if first else None
                first = False
                p = cached[0] if cached is not None and cached[0].rec.is_dir else await self._dir(parent)
                if p.rec.nlink == 0:
                    raise DfsError(errno.ENOENT, "parent directory was removed")
                rec.parent = parent
            txn = Txn()
            txn.create(self.paths.inode(ino), rec.encode())
            txn.create(self.paths.dirent(parent, name), DirEntry(ino, kind).encode())
            if kind == stat.S_IFDIR:
                txn.create(self.paths.dir(ino))
            elif kind == stat.S_IFREG:
                txn.create(self.paths.block_map(ino))
            if p is not None:
                self._touch(txn, p, nlink_delta=1, t=t)
            else:
                txn.set(self.paths.dir(parent), str(t).encode())
            nonlocal on_sent
            if on_sent is not None:
                on_sent()  # (the transaction is written before the commit first yields)
                on_sent = None
            try:
                exact = await self._commit(txn)
            except (NodeExistsError, NoNodeError):
                existing = await self._dirent(parent, name)
                if existing is not None:
                    if existing[0].ino == ino:  # our own commit, whose reply was lost
                        return await self.getattr(ino)
                    raise DfsError(errno.EEXIST, f"{name!r} exists") from None
                await self._dir(parent)  # ENOENT / ENOTDIR
                raise
            if p is not None:
                # our version check passed: p was the parent's latest state
                self.remember(self._with_entry_change(p, t, 1), exact=exact)
            else:
                self._changed_dir(parent, t, exact=exact)
            node = Inode(ino, rec, 0)
            self.remember(node, exact=exact)
            if exact and self.cache is not None:
                self.cache.trust(parent, name, ino, kind)
            return node

        node = await self._retrying(attempt, "create")
        self.hint(parent, name, node.ino)
        return node

    async def mkdir(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFDIR | stat.S_IMODE(mode), uid=uid, gid=gid)

    async def create(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int) -> Inode:
        return await self.mknod(parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid)

    async def symlink(self, parent: int, name: bytes, target: bytes, *, uid: int, gid: int) -> Inode:
        if not target or len(target) > 4095:
            raise DfsError(errno.ENAMETOOLONG if target else errno.ENOENT, "bad symlink target")
        return await self.mknod(parent, name, stat.S_IFLNK | 0o777, uid=uid, gid=gid, target=target)

    async def readlink(self, ino: int) -> bytes:
        node = await self.getattr(ino)
        if not node.rec.is_link:
            raise DfsError(errno.EINVAL, "not a symlink")
        return node.rec.target_bytes

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        check_name(new_name)
        self.fresh.pop(new_parent, None)
        self.fresh.pop(ino, None)

        async def attempt() -> Inode:
            got = await self.zk.read_many([("get", self.paths.inode(ino)),
                                           *self._attr_reads(new_parent),
                                           ("get", self.paths.dirent(new_parent, new_name))])
            if got[0] is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            node = self._inode(ino, got[0], None)
            if node.rec.is_dir:
                raise DfsError(errno.EPERM, "hard links to directories are not allowed")
            if node.rec.nlink == 0:
                raise DfsError(errno.ENOENT, "inode was removed")
            p = self._as_dir(new_parent, got[1], got[2])
            if p.rec.nlink == 0:
                raise DfsError(errno.ENOENT, "parent directory was removed")
            if got[3] is not None:
                raise DfsError(errno.EEXIST, f"{new_name!r} exists")
            t = now_ns()
            rec = dataclasses.replace(node.rec, nlink=node.rec.nlink + 1, ctime_ns=t)
            txn = Txn()
            txn.create(self.paths.dirent(new_parent, new_name),
                       DirEntry(ino, stat.S_IFMT(rec.mode)).encode())
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            self._touch(txn, p, t=t)
            await self._commit(txn)
            return Inode(ino, rec, node.version + 1)

        node = await self._retrying(attempt, "link")
        self.hint(new_parent, new_name, ino)
        return node

    # ------------------------------------------------------------------ remove

    def _extras_reads(self, ino: int) -> list[tuple[str, str]]:
        """What `_delete_inode` needs besides the inode; list them after the inode's read.

        The first block group is read speculatively: most files have only that one.
        """
        return [("children", self.paths.xattr_dir(ino)), ("children", self.paths.block_map(ino)),
                ("get", self.paths.block_group(ino, 0))]

    async def _drop_inode(self, txn: Txn, node: Inode, t: int,
                          extras: tuple[list[str] | None, list[str] | None] | None = None,
                          group0: tuple | None = None) -> None:
        """Add to txn: one link of `node` goes away (and the inode with the last one).

        `extras`: the results of `_extras_reads(node.ino)`, read after the inode.
        """
        if node.rec.nlink > 1 and not node.rec.is_dir:
            rec = dataclasses.replace(node.rec, nlink=node.rec.nlink - 1, ctime_ns=t)
            txn.set(self.paths.inode(node.ino), rec.encode(), node.version)
            return
        if not node.rec.is_dir and self.is_open(node.ino):
            # Unlinked while open here: keep it (nlink 0) until release_orphan.
            rec = dataclasses.replace(node.rec, nlink=0, ctime_ns=t)
            txn.set(self.paths.inode(node.ino), rec.encode(), node.version)
            await self._ensure(self.paths.open_dir(node.ino))
            txn.create(self.paths.open_holder(node.ino, self.mount_id), ephemeral=True)
            self.held.add(node.ino)  # (a failed commit only leaves a harmless extra entry)
            return
        await self._delete_inode(txn, node, extras, group0)

    async def _ensure(self, path: str) -> None:
        try:
            await self.zk.create(path)
        except NodeExistsError:
            pass

    async def _delete_inode(self, txn: Txn, node: Inode,
                            extras: tuple[list[str] | None, list[str] | None] | None = None,
                            group0: tuple | None = None) -> None:
        """Add to txn: delete the inode, its xattrs and block map (blocks to gc/).

        The xattr names and block groups must have been read after `node`: every
        change to them also writes the inode, so the inode's version check makes
        the deletes of what we saw complete (unversioned deletes are safe).
        """
        ino = node.ino
        txn.delete(self.paths.inode(ino), node.version)
        if extras is None:
            extras = tuple(await self.zk.children_many(
                [self.paths.xattr_dir(ino), self.paths.block_map(ino)]))
        xattrs, groups = extras
        if xattrs is not None:
            for x in xattrs:
                txn.delete(f"{self.paths.xattr_dir(ino)}/{x}")
            txn.delete(self.paths.xattr_dir(ino))
        if node.rec.is_dir:
            txn.delete(self.paths.dir(ino))  # NotEmpty if an entry appeared: retried
            return
        if groups is None:
            return
        refs: list[BlockRef] = []
        group_paths = [f"{self.paths.block_map(ino)}/{g}" for g in groups]
        group_deletes = []
        if group0 is not None and groups == ["0"]:
            fetched = [group0]  # read in the same multi-read, after the inode
        else:
            fetched = await self.zk.get_many(group_paths)
        for path, got in zip(group_paths, fetched):
            if got is None:
                raise Conflict(f"block group {path} vanished")
            refs.extend(BlockGroup.decode(got[0]).blocks.values())
            group_deletes.append((path, got[1].version))
            if len(refs) > INLINE_GC_LIMIT:
                # Too many refs for one transaction: gc takes the whole map later
                # (blocks/<ino> stays, for gc only).
                txn.create(self.paths.gc_entry(f"inode-{ino}"),
                           GcEntry(inode=ino, queued=time.time()).encode())
                return
        for path, version in group_deletes:
            txn.delete(path, version)
        txn.delete(self.paths.block_map(ino))
        self._queue_gc(txn, refs)

    def _queue_gc(self, txn: Txn, refs: Iterable[BlockRef]) -> None:
        refs = list(refs)
        for i in range(0, len(refs), GC_BATCH):
            batch = {r.id: list(r.replicas) for r in refs[i:i + GC_BATCH]}
            txn.create(self.paths.gc_entry(uuid.uuid4().hex),
                       GcEntry(blocks=batch, queued=time.time()).encode())

    async def _children(self, path: str) -> list[str] | None:
        try:
            return await self.zk.get_children(path)
        except NoNodeError:
            return None

    async def unlink(self, parent: int, name: bytes) -> int:
        """Remove a non-directory entry; returns the inode number it named."""
        check_name(name)
        dirent_path = self.paths.dirent(parent, name)

        async def attempt() -> int:
            guess = self.hints.get((parent, name))
            reads = [("get", dirent_path), ("get", self.paths.inode(parent))]
            if guess is not None:
                reads += [("get", self.paths.inode(guess)), *self._extras_reads(guess)]
            got = await self.zk.read_many(reads)
            if got[0] is None:
                self._check_parent(parent, got[1])
                raise DfsError(errno.ENOENT, f"no entry {name!r}")
            dirent, dver = DirEntry.decode(got[0][0]), got[0][1].version
            if stat.S_ISDIR(dirent.mode):
                raise DfsError(errno.EISDIR, f"{name!r} is a directory")
            if dirent.ino != guess or got[2] is None:
                got = [None, None] + await self.zk.read_many(
                    [("get", self.paths.inode(dirent.ino)), *self._extras_reads(dirent.ino)])
            if got[2] is None:
                raise Conflict(f"inode {dirent.ino} of {name!r} vanished")
            node = self._inode(dirent.ino, got[2], None)
            if node.rec.is_dir:
                raise DfsError(errno.EISDIR, f"{name!r} is a directory")
            t = now_ns()
            txn = Txn()
            txn.delete(dirent_path, dver)
            txn.set(self.paths.dir(parent), str(t).encode())
            await self._drop_inode(txn, node, t, (got[3], got[4]), got[5])
            await self._commit(txn)
            self.hint(parent, name, None)
            self.fresh.pop(node.ino, None)
            self._changed_dir(parent, t)
            return node.ino

        return await self._retrying(attempt, "unlink")

    async def remove_many(self, items: list[tuple[str, int, bytes]]) -> list[tuple[str, int, bytes]]:
        """Several unlinks/rmdirs, in order, in one read trip and one transaction.

        Args:
          items: ("unlink" | "rmdir", parent, name), applied in this order (an
            rmdir may follow the removals that empty its directory).
        Returns the items left out (no inode hint, or what the read showed does
        not fit): the caller does those one by one. Raises what the transaction
        raised if it failed (then nothing of it applied).
        """
        reads: list[tuple[str, str]] = []
        plan = []
        left: list[tuple[str, int, bytes]] = []
        for item in items:
            op, parent, name = item
            guess = self.hints.get((parent, name))
            if guess is None:
                left.append(item)
                continue
            first = len(reads)
            reads += [("get", self.paths.dirent(parent, name)), ("get", self.paths.inode(guess))]
            if op == "unlink":
                reads += self._extras_reads(guess)
            else:
                reads += [("children", self.paths.xattr_dir(guess)), ("get", self.paths.inode(parent))]
            plan.append((item, guess, first))
        if not plan:
            return left
        got = await self.zk.read_many(reads)
        t = now_ns()
        txn = Txn()
        state: dict[int, Inode] = {}  # inodes as this transaction leaves them so far
        done: list[tuple[str, int, bytes]] = []
        for item, guess, k in plan:
            op, parent, name = item
            ent, inode_got = got[k], got[k + 1]
            if ent is None or inode_got is None or DirEntry.decode(ent[0]).ino != guess:
                left.append(item)
                continue
            node = state.get(guess) or self._inode(guess, inode_got, None)
            if node.rec.is_dir != (op == "rmdir") or op == "rmdir" and got[k + 3] is None:
                left.append(item)
                continue
            txn.delete(self.paths.dirent(parent, name), ent[1].version)
            txn.set(self.paths.dir(parent), str(t).encode())
            if op == "unlink":
                await self._drop_inode(txn, node, t, (got[k + 2], got[k + 3]), got[k + 4])
            else:
                p = state.get(parent) or self._inode(parent, got[k + 3], None)
                rec = dataclasses.replace(p.rec, nlink=p.rec.nlink - 1)
                txn.set(self.paths.inode(parent), rec.encode(), p.version)
                state[parent] = Inode(parent, rec, p.version + 1)
                await self._delete_inode(txn, node, (got[k + 2], None))
            state.pop(guess, None)
            done.append(item)
        if done:
            exact = await self._commit(txn)
            for op, parent, name in done:
                ino = self.hints.pop((parent, name), None)
                if ino is not None:
                    self.fresh.pop(ino, None)
            # the parents as this transaction left them (their reads plus our changes)
            for op, parent, name in done:
                p = state.get(parent)
                if p is not None:
                    rec = dataclasses.replace(p.rec, mtime_ns=t, ctime_ns=max(p.rec.ctime_ns, t))
                    self.remember(Inode(parent, rec, p.version), exact=exact)
                else:
                    self._changed_dir(parent, t, exact=exact)
        return left

    async def rmdir(self, parent: int, name: bytes) -> int:
        check_name(name)
        dirent_path = self.paths.dirent(parent, name)

        guess = self.hints.get((parent, name))

        def child_reads(ino: int) -> list[tuple[str, str]]:
            return [*self._attr_reads(ino), ("children", self.paths.xattr_dir(ino))]

        async def attempt() -> int:
            nonlocal guess
            reads = [*self._attr_reads(parent), ("get", dirent_path)]
            got = await self.zk.read_many(reads + (child_reads(guess) if guess is not None else []))
            p = self._as_dir(parent, got[0], got[1])
            if got[2] is None:
                raise DfsError(errno.ENOENT, f"no entry {name!r}")
            dirent, dver = DirEntry.decode(got[2][0]), got[2][1].version
            if not stat.S_ISDIR(dirent.mode):
                raise DfsError(errno.ENOTDIR, f"{name!r} is not a directory")
            if guess is not None and dirent.ino == guess and got[3] is not None:
                got = got[3:]  # the child, read in the same trip (after its dirent)
            else:
                got = await self.zk.read_many(child_reads(dirent.ino))
            guess = None
            if got[0] is None:
                raise Conflict(f"inode {dirent.ino} of {name!r} vanished")
            node = self._inode(dirent.ino, got[0], got[1])
            if not node.rec.is_dir:
                raise DfsError(errno.ENOTDIR, f"{name!r} is not a directory")
            if got[1] is not None and got[1][1].numChildren:
                raise DfsError(errno.ENOTEMPTY, f"{name!r} is not empty")
            t = now_ns()
            txn = Txn()
            txn.delete(dirent_path, dver)
            self._touch(txn, p, nlink_delta=-1, t=t)
            await self._delete_inode(txn, node, (got[2], None))
            try:
                exact = await self._commit(txn)
            except NotEmptyError:
                raise DfsError(errno.ENOTEMPTY, f"{name!r} is not empty") from None
            self.fresh.pop(node.ino, None)
            self.remember(self._with_entry_change(p, t, -1), exact=exact)
            return node.ino

        self.hint(parent, name, None)
        return await self._retrying(attempt, "rmdir")

    async def release_orphan(self, ino: int) -> None:
        """This client closed an unlinked inode: drop it if no other client holds it."""
        self.held.discard(ino)
        try:
            await self.zk.delete(self.paths.open_holder(ino, self.mount_id))
        except NoNodeError:
            pass

        async def attempt() -> None:
            try:
                node = await self.getattr(ino)
            except DfsError:
                return
            if node.rec.nlink > 0:
                return
            holders = await self._children(self.paths.open_dir(ino))
            if holders:
                return
            txn = Txn()
            await self._delete_inode(txn, node)
            if holders is not None:
                txn.delete(self.paths.open_dir(ino))
            await self._commit(txn)

        await self._retrying(attempt, "release")

    # ------------------------------------------------------------------ rename

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        """rename(2) / renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, atomically."""
        check_name(old_name)
        check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise DfsError(errno.EINVAL, "bad rename flags")

        async def attempt() -> None:
            # Our cached view of the parents and of what moves is dropped first (a
            # failed attempt may have committed after all).
            for ino in (old_parent, new_parent, self.hints.get((old_parent, old_name)),
                        self.hints.get((new_parent, new_name))):
                self.fresh.pop(ino, None)
            # Round trip 1: both parents and both entries.
            same_dir = new_parent == old_parent
            got = await self.zk.read_many([
                *self._attr_reads(old_parent),
                ("get", self.paths.dirent(old_parent, old_name)),
                ("get", self.paths.dirent(new_parent, new_name)),
                *([] if same_dir else self._attr_reads(new_parent)),
            ])
            op = self._as_dir(old_parent, got[0], got[1])
            np = op if same_dir else self._as_dir(new_parent, got[4], got[5])
            if got[2] is None:
                raise DfsError(errno.ENOENT, f"no entry {old_name!r}")
            src_ent, src_ver = DirEntry.decode(got[2][0]), got[2][1].version
            if same_dir and old_name == new_name:
                return
            dst = (DirEntry.decode(got[3][0]), got[3][1].version) if got[3] else None
            if dst is not None and dst[0].ino == src_ent.ino and not flags & RENAME_EXCHANGE:
                return  # two links to one inode: POSIX says do nothing
            if flags & RENAME_EXCHANGE and dst is None:
                raise DfsError(errno.ENOENT, f"no entry {new_name!r} to exchange with")
            if flags & RENAME_NOREPLACE and dst is not None:
                raise DfsError(errno.EEXIST, f"{new_name!r} exists")
            # Round trip 2: both inodes (and what dropping a replaced one needs).
            reads = self._attr_reads(src_ent.ino)
            if dst is not None:
                reads += self._attr_reads(dst[0].ino)
                if not flags & RENAME_EXCHANGE:
                    reads += self._extras_reads(dst[0].ino)
            got = await self.zk.read_many(reads)
            if got[0] is None or (dst is not None and got[2] is None):
                raise Conflict("an inode vanished under its entry")
            src_node = self._inode(src_ent.ino, got[0], got[1])
            dst_node = self._inode(dst[0].ino, got[2], got[3]) if dst else None
            dst_dir_stat = got[3][1] if dst is not None and got[3] is not None else None
            dst_extras = (got[4], got[5]) if len(got) == 6 else None
            if np.rec.nlink == 0:
                raise DfsError(errno.ENOENT, "target directory was removed")

            txn = Txn()
            # No directory may move below itself: check every ancestor of the
            # destinations (and pin their versions against concurrent renames).
            moving_dirs = [n for n in (src_node, dst_node if flags & RENAME_EXCHANGE else None)
                           if n is not None and n.rec.is_dir]
            if moving_dirs and old_parent != new_parent:
                for moving, dest_parent in ((src_node, new_parent), (dst_node, old_parent)):
                    if moving is None or not moving.rec.is_dir:
                        continue
                    await self._check_not_ancestor(txn, moving.ino, dest_parent)

            t = now_ns()
            if flags & RENAME_EXCHANGE:
                assert dst is not None and dst_node is not None
                txn.set(self.paths.dirent(old_parent, old_name),
                        DirEntry(dst_node.ino, stat.S_IFMT(dst_node.rec.mode)).encode(), src_ver)
                txn.set(self.paths.dirent(new_parent, new_name),
                        DirEntry(src_node.ino, stat.S_IFMT(src_node.rec.mode)).encode(), dst[1])
                delta = int(src_node.rec.is_dir) - int(dst_node.rec.is_dir)
                self._set_moved(txn, src_node, new_parent, t)
                self._set_moved(txn, dst_node, old_parent, t)
                if old_parent == new_parent:
                    self._touch(txn, op, t=t)
                else:
                    self._touch(txn, op, nlink_delta=-delta, t=t)
                    self._touch(txn, np, nlink_delta=delta, t=t)
                await self._commit(txn)
                return

            src_is_dir = src_node.rec.is_dir
            np_delta = int(src_is_dir)
            if dst is not None:
                assert dst_node is not None
                if dst_node.rec.is_dir:
                    if not src_is_dir:
                        raise DfsError(errno.EISDIR, f"{new_name!r} is a directory")
                    if dst_dir_stat is not None and dst_dir_stat.numChildren:
                        raise DfsError(errno.ENOTEMPTY, f"{new_name!r} is not empty")
                    np_delta -= 1
                elif src_is_dir:
                    raise DfsError(errno.ENOTDIR, f"{new_name!r} is not a directory")
                txn.set(self.paths.dirent(new_parent, new_name),
                        DirEntry(src_node.ino, stat.S_IFMT(src_node.rec.mode)).encode(), dst[1])
                await self._drop_inode(txn, dst_node, t, dst_extras)
            else:
                txn.create(self.paths.dirent(new_parent, new_name),
                           DirEntry(src_node.ino, stat.S_IFMT(src_node.rec.mode)).encode())
            txn.delete(self.paths.dirent(old_parent, old_name), src_ver)
            self._set_moved(txn, src_node, new_parent, t)
            if old_parent == new_parent:
                self._touch(txn, op, nlink_delta=np_delta - int(src_is_dir), t=t)
            else:
                self._touch(txn, op, nlink_delta=-int(src_is_dir), t=t)
                self._touch(txn, np, nlink_delta=np_delta, t=t)
            try:
                await self._commit(txn)
            except NotEmptyError:
                raise DfsError(errno.ENOTEMPTY, f"{new_name!r} is not empty") from None

        self.hint(old_parent, old_name, None)
        self.hint(new_parent, new_name, None)
        await self._retrying(attempt, "rename")

    def _set_moved(self, txn: Txn, node: Inode, new_parent: int, t: int) -> None:
        rec = dataclasses.replace(node.rec, ctime_ns=t)
        if rec.is_dir:
            rec.parent = new_parent
        txn.set(self.paths.inode(node.ino), rec.encode(), node.version)

    async def _check_not_ancestor(self, txn: Txn, moving: int, dest_parent: int) -> None:
        """EINVAL if `moving` is `dest_parent` or one of its ancestors; pins the chain."""
        ino = dest_parent
        seen = 0
        while True:
            if ino == moving:
                raise DfsError(errno.EINVAL, "cannot move a directory into its own subtree")
            if ino == ROOT_INO:
                return
            node = await self.getattr(ino)
            txn.check(self.paths.inode(ino), node.version)
            ino = node.rec.parent or ROOT_INO
            seen += 1
            if seen > 100_000:
                raise DfsError(errno.ELOOP, "directory cycle")

    # ------------------------------------------------------------------ attributes

    async def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                      gid: int | None = None, atime_ns: int | None = None,
                      mtime_ns: int | None = None, ctime_ns: int | None = None) -> Inode:
        """chmod / chown / utimens (size changes go through `commit_blocks`)."""

        async def attempt() -> Inode:
            node = await self.getattr(ino)
            rec = dataclasses.replace(node.rec)
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
            txn = Txn().set(self.paths.inode(ino), rec.encode(), node.version)
            if rec.is_dir:
                # node.rec already merged the content-change time: from now on the
                # inode's times are the truth again (see _touch / getattr)
                txn.set(self.paths.dir(ino), b"")
            exact = await self._commit(txn)
            return self.remember(Inode(ino, rec, node.version + 1), exact=exact)

        return await self._retrying(attempt, "setattr")

    # ------------------------------------------------------------------ readdir

    async def readdir(self, ino: int, *, with_attrs: bool = False) -> list[tuple[bytes, DirEntry, Inode | None]]:
        """A snapshot of a directory: (name, entry, inode or None) sorted by name.

        Entries that vanish while we read are left out; the snapshot is what a
        directory handle pages through, so concurrent changes never make it skip
        or repeat an entry.
        """
        return (await self.list_dir(ino, with_attrs=with_attrs))[1]

    async def list_dir(self, ino: int, *, with_attrs: bool = False
                       ) -> tuple[Inode, list[tuple[bytes, DirEntry, Inode | None]]]:
        """The directory's own inode and its snapshot (see readdir): 0 to 3 round trips."""
        cached = self._cached_listing(ino, with_attrs)
        if cached is not None:
            return cached
        mark = self._mark()
        got = await self.zk.read_many([*self._attr_reads(ino), ("children", self.paths.dir(ino))])
        if got[0] is None:
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        this = self.remember(self._inode(ino, got[0], got[1]),
                             exact=self._clean(mark, self.paths.inode(ino), self.paths.dir(ino)))
        if not this.rec.is_dir:
            raise DfsError(errno.ENOTDIR, f"inode {ino} is not a directory")
        if got[2] is None:
            raise DfsError(errno.ENOENT, f"directory {ino} was removed")
        children = got[2]
        children.sort()
        base = self.paths.dir(ino)
        names = [unescape(c) for c in children]
        if self.cache is not None:
            self.cache.install_names(mark, ino, names)
        mark = self._mark()
        # Each dirent, and (with_attrs) the inode our hint says it names, in one
        # trip: read after its dirent, a guessed inode that matches is consistent
        # with it. Only entries without a good guess need another trip.
        reads: list[tuple[str, str]] = []
        for c, name in zip(children, names):
            reads.append(("get", f"{base}/{c}"))
            if with_attrs:
                guess = self.hints.get((ino, name), 0)
                reads += [("get", self.paths.inode(guess)), ("get", self.paths.dir(guess))]
        got = await self.zk.read_many(reads) if reads else []
        step = 3 if with_attrs else 1
        entries = []
        attrs: dict[int, Inode | None] = {}
        missing: list[int] = []
        for k, name in enumerate(names):
            d = got[k * step]
            if d is None:
                continue  # removed while we listed
            ent = DirEntry.decode(d[0])
            entries.append((name, ent))
            self.hint(ino, name, ent.ino)
            dirent_path = reads[k * step][1]
            if self.cache is not None and self._clean(mark, dirent_path):
                self.cache.trust(ino, name, ent.ino, ent.mode)
            if not with_attrs:
                continue
            guessed, times = got[k * step + 1], got[k * step + 2]
            if guessed is not None and reads[k * step + 1][1] == self.paths.inode(ent.ino):
                node = self._inode(ent.ino, guessed, times if stat.S_ISDIR(ent.mode) else None)
                attrs[len(entries) - 1] = self.remember(node, exact=self._clean(
                    mark, dirent_path, self.paths.inode(ent.ino), self.paths.dir(ent.ino)))
            else:
                missing.append(len(entries) - 1)
        if not with_attrs:
            return this, [(name, ent, None) for name, ent in entries]
        if missing:
            mark = self._mark()
            wanted: list[str] = []
            for k in missing:
                ent = entries[k][1]
                wanted.append(self.paths.inode(ent.ino))
                wanted.append(self.paths.dir(ent.ino) if stat.S_ISDIR(ent.mode) else self.paths.inode(ent.ino))
            more = await self.zk.get_many(wanted)
            for j, k in enumerate(missing):
                node, times = more[2 * j], more[2 * j + 1]
                ent = entries[k][1]
                attrs[k] = None if node is None else self.remember(self._inode(
                    ent.ino, node, times if stat.S_ISDIR(ent.mode) else None), exact=self._clean(
                        mark, self.paths.inode(ent.ino), self.paths.dir(ent.ino)))
        out = []
        for k, (name, ent) in enumerate(entries):
            node = attrs.get(k)
            if node is None:
                continue  # removed while we listed
            out.append((name, ent, node))
        return this, out

    def _cached_listing(self, ino: int, with_attrs: bool):
        """list_dir's answer from the change-fed cache, or None if anything is not known."""
        cache = self.cache
        if cache is None or not cache.active:
            return None
        names = cache.names.get(ino)
        this = self.known(ino)
        if names is None or this is None or this[1] != 0.0:
            return None
        out = []
        for name in sorted(names):
            ent = cache.dirents.get((ino, name))
            if ent is None:
                return None
            node = None
            if with_attrs:
                seen = self.known(ent[0])
                if seen is None or seen[1] != 0.0:
                    return None
                node = seen[0]
            out.append((name, DirEntry(ent[0], ent[1]), node))
        self.stats["cached_listings"] = self.stats.get("cached_listings", 0) + 1
        return this[0], out

    async def count_entries(self, ino: int) -> int:
        st = await self.zk.exists(self.paths.dir(ino))
        return st.numChildren if st else 0

    # ------------------------------------------------------------------ xattrs

    async def getxattr(self, ino: int, name: bytes) -> bytes:
        try:
            data, _ = await self.zk.get(self.paths.xattr(ino, name))
        except NoNodeError:
            await self.getattr(ino)
            raise DfsError(errno.ENODATA, "no such attribute") from None
        return data

    async def listxattr(self, ino: int) -> list[bytes]:
        await self.getattr(ino)
        names = await self._children(self.paths.xattr_dir(ino)) or []
        return sorted(unescape(n) for n in names)

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        if not name or len(name) > XATTR_NAME_MAX:
            raise DfsError(errno.ERANGE, "bad attribute name length")
        if len(value) > XATTR_SIZE_MAX:
            raise DfsError(errno.E2BIG, "attribute value too large")
        path = self.paths.xattr(ino, name)

        async def attempt() -> None:
            got = await self.zk.read_many([*self._attr_reads(ino), ("get", self.paths.xattr_dir(ino)),
                                           ("get", path)])
            if got[0] is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            node = self._inode(ino, got[0], got[1])
            exists = got[3]
            if exists and flags & XATTR_CREATE:
                raise DfsError(errno.EEXIST, "attribute exists")
            if not exists and flags & XATTR_REPLACE:
                raise DfsError(errno.ENODATA, "no such attribute")
            txn = Txn()
            if got[2] is None:
                # in the transaction, so that no empty xattrs/<ino> outlives a failed attempt
                txn.create(self.paths.xattr_dir(ino))
            if exists:
                txn.set(path, value, exists[1].version)
            else:
                txn.create(path, value)
            rec = dataclasses.replace(node.rec, ctime_ns=now_ns(),
                                      xattrs=node.rec.xattrs + (0 if exists else 1))
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            await self._commit(txn)

        await self._retrying(attempt, "setxattr")

    async def removexattr(self, ino: int, name: bytes) -> None:
        path = self.paths.xattr(ino, name)

        async def attempt() -> None:
            got = await self.zk.read_many([*self._attr_reads(ino), ("get", path)])
            if got[0] is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            node = self._inode(ino, got[0], got[1])
            if not got[2]:
                raise DfsError(errno.ENODATA, "no such attribute")
            txn = Txn()
            txn.delete(path, got[2][1].version)
            rec = dataclasses.replace(node.rec, ctime_ns=now_ns(), xattrs=max(0, node.rec.xattrs - 1))
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            await self._commit(txn)

        await self._retrying(attempt, "removexattr")

    # ------------------------------------------------------------------ block map

    def group_of(self, index: int) -> int:
        return index // self.config.group_blocks

    async def read_group(self, ino: int, group: int) -> tuple[BlockGroup, int]:
        """One block-map group and its znode version (-1: does not exist)."""
        try:
            data, st = await self.zk.get(self.paths.block_group(ino, group))
        except NoNodeError:
            return BlockGroup(), -1
        return BlockGroup.decode(data), st.version

    async def open_file(self, ino: int) -> tuple[Inode, dict[int, BlockRef], bytes | None]:
        """A file's inode, whole block map and inline bytes, usually in one round trip.

        A small file's bytes may live inline, as the data of its `blocks/<ino>`
        znode (see FsConfig.inline_max): they are the file's content from offset
        0, the rest up to its size reads as zeros. They count only while the
        file has no block refs. Returns (inode, refs, inline bytes or None).
        """
        mark = self._mark()
        got = await self.zk.read_many([("get", self.paths.inode(ino)), ("get", self.paths.dir(ino)),
                                       ("get", self.paths.block_map(ino)),
                                       ("children", self.paths.block_map(ino)),
                                       ("get", self.paths.block_group(ino, 0))])
        if got[0] is None:
            raise DfsError(errno.ENOENT, f"no inode {ino}")
        node = self.remember(self._inode(ino, got[0], got[1]),
                             exact=self._clean(mark, self.paths.inode(ino), self.paths.dir(ino)))
        groups = sorted(int(g) for g in got[3] or [])
        refs: dict[int, BlockRef] = {}
        if groups == [0] and got[4] is not None:
            refs.update(BlockGroup.decode(got[4][0]).blocks)
        elif groups:
            refs = await self.read_block_map(ino)
        inline = got[2][0] if got[2] is not None and got[2][0] and not refs else None
        return node, refs, inline

    async def read_block_map(self, ino: int) -> dict[int, BlockRef]:
        """All blocks of a file (holes absent)."""
        groups = sorted(await self._children(self.paths.block_map(ino)) or [], key=int)
        out: dict[int, BlockRef] = {}
        for got in await self.zk.get_many([self.paths.block_group(ino, int(g)) for g in groups]):
            if got is not None:
                out.update(BlockGroup.decode(got[0]).blocks)
        return out

    async def read_file_map(self, ino: int) -> tuple[dict[int, BlockRef], bytes | None]:
        """A file's block refs and inline bytes (see open_file)."""
        _, refs, inline = await self.open_file(ino)
        return refs, inline

    def _commit_reads(self, ino: int, indices: Iterable[int], truncate: bool) -> list[tuple[str, str]]:
        touched = {self.group_of(i) for i in indices}
        reads = [("get", self.paths.inode(ino)), ("get", self.paths.block_map(ino))]
        if truncate:
            reads.append(("children", self.paths.block_map(ino)))
        return reads + [("get", self.paths.block_group(ino, g)) for g in sorted(touched)]

    async def prefetch_commit(self, ino: int, indices: Iterable[int]) -> tuple[list, list]:
        """The reads `commit_blocks(ino, updates with these indices)` starts with.

        A writer can run them while its blocks upload and pass the result as
        `prefetched`; the commit's version checks make an early read safe.
        """
        reads = self._commit_reads(ino, indices, False)
        return reads, await self.zk.read_many(reads)

    async def commit_blocks(self, ino: int, updates: dict[int, BlockRef | None], *,
                            size: int | None = None, truncate_from: int | None = None,
                            mtime_ns: int | None = None, expect_size: int | None = None,
                            prefetched: tuple[list, list] | None = None,
                            inline: bytes | None = None, known: Inode | None = None) -> Inode:
        """Commit new block refs (and size/mtime) of a file in one transaction.

        Args:
          updates: block index -> new ref, or None to punch a hole.
          size: the new file size (None: keep the current one, or grow to cover updates).
          truncate_from: drop every block with index >= this (a shrinking truncate).
          mtime_ns: new mtime (and ctime); None leaves the times alone.
          inline: the file's new inline bytes (b"" clears them; None keeps them
            unless the commit adds block refs, which clears them).
          known: the inode as this client last committed or read it. A commit
            that touches no block groups then needs no reads: the inode's
            version check catches anyone who changed the file since (and the
            commit retries with fresh reads).
        Replaced and dropped refs are queued in gc/ in the same transaction.
        Raises ENOENT if the inode is gone.
        """

        async def attempt() -> Inode:
            # One round trip: the inode, then (guarded by its version) whether the
            # block map exists, its groups if truncating, and the groups we change.
            nonlocal prefetched, known
            touched = {self.group_of(i) for i in updates}
            reads = self._commit_reads(ino, updates, truncate_from is not None)
            if known is not None and not touched and truncate_from is None:
                got = [(known.rec.encode(), _Version(known.version)), None]
                map_known = True
            elif prefetched is not None and prefetched[0] == reads:
                got = prefetched[1]  # read while the blocks uploaded (first attempt only)
                map_known = False
            else:
                got = await self.zk.read_many(reads)
                map_known = False
            prefetched = known = None
            if got[0] is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            node = self._inode(ino, got[0], None)
            if not node.rec.is_reg:
                raise DfsError(errno.EISDIR if node.rec.is_dir else errno.EINVAL,
                               f"inode {ino} is not a regular file")
            groups: dict[int, tuple | None] = dict(zip(sorted(touched), got[3 if truncate_from is not None else 2:]))
            if truncate_from is not None:
                more = sorted(int(g) for g in got[2] or []
                              if (int(g) + 1) * self.config.group_blocks > truncate_from
                              and int(g) not in groups)
                groups.update(zip(more, await self.zk.get_many([self.paths.block_group(ino, g) for g in more])))
            rec = dataclasses.replace(node.rec)
            txn = Txn()
            garbage: list[BlockRef] = []
            new_inline = inline
            if new_inline is None and any(ref is not None for ref in updates.values()):
                new_inline = b""  # block refs replace inline bytes
            if map_known:
                # blind: the inode's version check guards it (mknod creates the znode)
                if new_inline is not None:
                    txn.set(self.paths.block_map(ino), new_inline)
            elif got[1] is None:
                if groups or new_inline:
                    # in the transaction: a concurrent unlink must not leave a block map behind
                    txn.create(self.paths.block_map(ino), new_inline or b"")
            elif new_inline is not None and got[1][0] != new_inline:
                txn.set(self.paths.block_map(ino), new_inline)
            for g in sorted(groups):
                grp, ver = (BlockGroup.decode(groups[g][0]), groups[g][1].version) if groups[g] else (BlockGroup(), -1)
                before = dict(grp.blocks)
                for i, ref in updates.items():
                    if self.group_of(i) != g:
                        continue
                    if ref is None:
                        grp.blocks.pop(i, None)
                    else:
                        grp.blocks[i] = ref
                if truncate_from is not None:
                    for i in [i for i in grp.blocks if i >= truncate_from and i not in updates]:
                        del grp.blocks[i]
                new_ids = {r.id for r in grp.blocks.values()}
                garbage.extend(r for r in before.values() if r.id not in new_ids)
                path = self.paths.block_group(ino, g)
                if ver == -1:
                    if grp.blocks:
                        txn.create(path, grp.encode())
                elif grp.blocks:
                    txn.set(path, grp.encode(), ver)
                else:
                    txn.delete(path, ver)
            if size is not None:
                rec.size = size
            else:
                bs = self.config.block_size
                for i, ref in updates.items():
                    if ref is not None:
                        rec.size = max(rec.size, i * bs + ref.length)
            if mtime_ns is not None:
                rec.mtime_ns = mtime_ns
                rec.ctime_ns = max(mtime_ns, now_ns())
            txn.set(self.paths.inode(ino), rec.encode(), node.version)
            self._queue_gc(txn, garbage)
            exact = await self._commit(txn)
            return self.remember(Inode(ino, rec, node.version + 1), exact=exact)

        return await self._retrying(attempt, "commit blocks")

    # ------------------------------------------------------------------ statfs

    async def inode_count(self) -> int:
        """An upper bound of the inodes in use (numbers handed out so far)."""
        data, _ = await self.zk.get(self.paths.inode_counter)
        return int(data)
