"""pyfuse3 Operations: kernel requests translated into dfs.meta.store and dfs.client.files calls.

Thin on purpose: no znode paths, no sockets. Every DfsError becomes a FUSEError
in `fuse_errors` (the one translation point); anything else is a bug, logged,
and reported to the caller as EIO so that the daemon keeps serving.
"""

import errno
import functools
import logging
import os
import stat
import time
from dataclasses import dataclass

import pyfuse3
import trio

from dfs.client.files import FileData
from dfs.client.removals import Removals
from dfs.errors import DfsError
from dfs.meta.store import Inode, Meta
from dfs.names import NAME_MAX

log = logging.getLogger(__name__)
FILE_CAPS = b"security.capability"  # file capabilities: not supported on dfs


OP_STATS: dict[str, list[float]] = {}  # handler -> [calls, seconds]; logged at unmount


def log_op_stats() -> None:
    for name, (calls, secs) in sorted(OP_STATS.items(), key=lambda kv: -kv[1][1]):
        if calls:
            log.info("op %-12s %8d calls %9.3f s %8.3f ms/call", name, calls, secs, secs / calls * 1e3)


def fuse_errors(fn):
    """The single place where errors become FUSEError."""
    stats = OP_STATS.setdefault(fn.__name__, [0, 0.0])

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except DfsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except trio.Cancelled:
            raise
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            stats[0] += 1
            stats[1] += time.perf_counter() - t

    return wrapper


@dataclass
class DirHandle:
    ino: int
    entries: list  # snapshot: [(name, EntryAttributes)]


class Operations(pyfuse3.Operations):
    # No kernel writeback cache: with it the kernel keeps its own i_size and
    # mtime for regular files and ignores ours, so a file rewritten on another
    # mount keeps its old size here forever (breaks close-to-open).
    enable_writeback_cache = False
    supports_dot_lookup = True

    def __init__(self, meta: Meta, files: FileData, nodedir, *, attr_timeout: float = 1.0,
                 entry_timeout: float = 1.0, removals: Removals | None = None,
                 async_creates: bool = False, feed_timeout: float = 0.0):
        super().__init__()
        self.meta = meta
        self.removals = removals
        self.async_creates = async_creates
        self.feed_timeout = feed_timeout
        self._long: dict[tuple, float] = {}
        if meta.cache is not None:
            meta.cache.kernel = self._kernel_forget
        self.files = files
        self.nodedir = nodedir
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        meta.FRESH_FOR = attr_timeout
        self._fh_ino: dict[int, int] = {}
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1
        # inodes seen in the last attr_timeout: lets getxattr/listxattr answer
        # "none" without ZooKeeper for inodes that have no xattrs (ls -l asks
        # for two of them per file). Same staleness bound as the kernel's cache.
        self._recent: dict[int, tuple[float, Inode]] = {}

    def _remember(self, node: Inode) -> None:
        if len(self._recent) > 100_000:
            self._recent.clear()
        self._recent[node.ino] = (time.monotonic() + self.attr_timeout, node)

    def _no_xattrs(self, ino: int) -> bool:
        seen = self._recent.get(ino)
        return seen is not None and seen[0] > time.monotonic() and seen[1].rec.xattrs == 0

    # ------------------------------------------------------------------ helpers

    # -- kernel caching while the change feed runs
    #
    # What the metadata cache knows exactly (dfs.client.feed), the kernel may keep
    # for `feed_timeout` instead of attr_timeout/entry_timeout: when someone
    # else changes it, the feed's event makes us invalidate the kernel's copy
    # (a reply racing with that invalidation is discarded by the kernel, which
    # versions attributes, and an entry invalidation waits for the directory's
    # lookups). `_long` lists what we handed out that way, so that a lost feed
    # can take it all back.

    LONG_MAX = 200_000

    def _long_ok(self) -> bool:
        cache = self.meta.cache
        if not self.feed_timeout or cache is None or not cache.active:
            return False
        if len(self._long) >= self.LONG_MAX:
            now = time.monotonic()
            self._long = {k: d for k, d in self._long.items() if d > now}
        return len(self._long) < self.LONG_MAX

    def _kernel_forget(self, kind: str, key: int, name: bytes | None) -> None:
        """Someone else changed something (or the feed dropped): drop the kernel's long-lived copies."""
        try:
            if kind == "entry":
                if self._long.pop(("e", key, name), None) is not None:
                    pyfuse3.invalidate_entry_async(key, name, ignore_enoent=True)
            elif kind == "inode":
                if self._long.pop(("i", key), None) is not None:
                    pyfuse3.invalidate_inode(key, attr_only=True)
            elif kind == "lost":
                now = time.monotonic()
                held, self._long = self._long, {}
                for k, deadline in held.items():
                    if deadline <= now:
                        continue
                    if k[0] == "e":
                        pyfuse3.invalidate_entry_async(k[1], k[2], ignore_enoent=True)
                    else:
                        try:
                            pyfuse3.invalidate_inode(k[1], attr_only=True)
                        except OSError:
                            pass
        except OSError:
            pass  # the kernel no longer has it
        except Exception:  # never let the feed's reader fail on this
            log.exception("kernel invalidation of %s %r %r", kind, key, name)

    def _attrs(self, node: Inode, age: float = 0.0, parent: int | None = None,
               name: bytes | None = None) -> pyfuse3.EntryAttributes:
        """Attributes for the kernel; `age`: how old our knowledge of them is;
        parent/name: the entry they answer (lookup, create, readdirplus)."""
        self._remember(node)
        r = node.rec
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.entry_timeout
        a.attr_timeout = max(0.0, self.attr_timeout - age)
        if self._long_ok():
            deadline = time.monotonic() + self.feed_timeout
            got = self.meta.fresh.get(node.ino)
            if got is not None and got[2] and got[1] is node:
                a.attr_timeout = self.feed_timeout
                self._long[("i", node.ino)] = deadline
            if parent is not None:
                ent = self.meta.cache.dirents.get((parent, name))
                if ent is not None and ent[0] == node.ino:
                    a.entry_timeout = self.feed_timeout
                    self._long[("e", parent, name)] = deadline
        a.st_mode = r.mode
        a.st_nlink = r.nlink
        a.st_uid = r.uid
        a.st_gid = r.gid
        a.st_rdev = r.rdev
        size = r.size
        if r.is_reg:
            local = self.files.local_size(node.ino)
            if local is not None:
                size = local
        a.st_size = size
        a.st_blksize = 1 << 17
        a.st_blocks = self.files.blocks_of(size) if r.is_reg else (8 if r.is_dir else 0)
        a.st_atime_ns = r.atime_ns
        a.st_mtime_ns = r.mtime_ns
        a.st_ctime_ns = r.ctime_ns
        return a

    def _new_fh(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._fh_ino[fh] = ino
        return fh

    # ------------------------------------------------------------------ namespace

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        try:
            if self.removals is not None and self.removals.hidden(parent_inode, name):
                raise DfsError(errno.ENOENT, "being removed")
            node = await self.meta.lookup(parent_inode, name)
            if self.removals is not None and self.removals.changing(node.ino):
                # another name of it is being removed: its nlink is about to change
                await self.removals.wait_inode(node.ino)
                node = await self.meta.getattr(node.ino)
            return self._attrs(node, parent=parent_inode, name=name)
        except DfsError as e:
            if e.errno == errno.ENOENT:
                # cache the negative entry for a short while (st_ino 0)
                a = pyfuse3.EntryAttributes()
                a.st_ino = 0
                a.entry_timeout = min(self.entry_timeout, 1.0)
                return a
            raise

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        # The kernel drops a directory's attributes after each entry change we
        # make in it; what we know (read < attr_timeout ago, plus our own
        # changes) answers without a round trip, cached only for the rest of
        # that attr_timeout: the staleness bound stays the kernel cache's.
        if self.removals is not None and self.removals.changing(inode):
            await self.removals.wait_inode(inode)  # a link of it is being removed (nlink)
        seen = self.meta.known(inode)
        if seen is not None:
            return self._attrs(*seen)
        return self._attrs(await self.meta.getattr(inode))

    @fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = None
        if fields.update_size:
            node = await self.files.truncate(inode, attr.st_size)
        kw = {}
        if fields.update_mode:
            kw["mode"] = attr.st_mode
        if fields.update_uid:
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            kw["gid"] = attr.st_gid
        if fields.update_atime:
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kw["mtime_ns"] = attr.st_mtime_ns
            f = self.files.files.get(inode)
            if f is not None:
                # a later flush of buffered writes must not overwrite the time set here
                await self.files.flush(inode)
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        if kw:
            node = await self.meta.setattr(inode, **kw)
        if node is None:
            node = await self.meta.getattr(inode)
        return self._attrs(node)

    @fuse_errors
    async def readlink(self, inode, ctx):
        return await self.meta.readlink(inode)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        await self._before_change(parent_inode)
        node = await self.meta.mknod(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, rdev=rdev)
        return self._attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        await self._before_change(parent_inode)
        node = await self.meta.mkdir(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid)
        return self._attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        await self._before_change(parent_inode)
        node = await self.meta.symlink(parent_inode, name, target, uid=ctx.uid, gid=ctx.gid)
        return self._attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        await self._before_change(new_parent_inode)
        return self._attrs(await self.meta.link(inode, new_parent_inode, new_name))

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        if self.removals is not None:
            await self.removals.unlink(parent_inode, name)
        else:
            await self.meta.unlink(parent_inode, name)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        if self.removals is not None:
            await self.removals.rmdir(parent_inode, name)
        else:
            await self.meta.rmdir(parent_inode, name)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._before_change(parent_inode_old, parent_inode_new)
        await self.meta.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    def _forget_entry(self, parent: int, name: bytes) -> None:
        try:
            pyfuse3.invalidate_entry_async(parent, name)
        except Exception as e:  # the kernel may have dropped it already
            log.debug("invalidate_entry_async(%d, %r): %r", parent, name, e)

    async def _before_change(self, *dirs: int) -> None:
        """A namespace change in these directories: order it after their pending removals."""
        if self.removals is not None:
            for d in dirs:
                self.removals.dir_changed(d)
            await self.removals.wait_dir(*dirs)

    # ------------------------------------------------------------------ directories

    @fuse_errors
    async def opendir(self, inode, ctx):
        this, entries = await self.meta.list_dir(inode, with_attrs=True)
        # readdirplus ignores the attributes of . and ..; only inode and type matter
        dotdot = pyfuse3.EntryAttributes()
        dotdot.st_ino = this.rec.parent or pyfuse3.ROOT_INODE
        dotdot.st_mode = stat.S_IFDIR | 0o755
        snapshot = [(b".", self._attrs(this)), (b"..", dotdot)]
        if self.removals is not None:
            entries = [e for e in entries if not self.removals.hidden(inode, e[0])]
            self.removals.saw_listing(inode, len(entries))
        snapshot += [(name, self._attrs(node, parent=inode, name=name)) for name, _, node in entries]
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirHandle(inode, snapshot)
        return fh

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        d = self._dirs[fh]
        for i in range(start_id, len(d.entries)):
            name, attrs = d.entries[i]
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                break

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        # every other namespace change is committed before it returns
        await self.meta.drain_creates()
        if self.removals is not None:
            await self.removals.drain()
            if self.removals.take_failures():
                raise DfsError(errno.EIO, "a background removal failed (see the mount log)")

    # ------------------------------------------------------------------ files

    @fuse_errors
    async def open(self, inode, flags, ctx):
        f, keep = await self.files.open(inode)  # the kernel sends opendir for directories
        if flags & os.O_TRUNC and f.size:
            # libfuse enables atomic O_TRUNC: the truncate is ours to do
            try:
                await self.files.truncate(inode, 0)
            except BaseException:
                await self.files.release(inode)
                raise
            keep = False
        if not keep:
            # Changed since this mount last saw it (close-to-open): make the
            # kernel drop its cached attributes now, before the caller's fstat.
            try:
                pyfuse3.invalidate_inode(inode, attr_only=True)
            except OSError:
                pass
        fi = pyfuse3.FileInfo(fh=self._new_fh(inode))
        fi.keep_cache = keep
        return fi

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        await self._before_change(parent_inode)
        if self.async_creates and not flags & os.O_EXCL and self.meta.cache is not None \
                and self.meta.cache.active:
            # The create's transaction goes out now; the data's commit at close
            # follows it on the same session and reports a create that failed.
            # O_EXCL (lock files) keeps the synchronous create: its EEXIST is the point.
            node, pending = await self.meta.create_async(
                parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, nursery=self.files.nursery,
                on_failed=lambda e: self._forget_entry(parent_inode, name))
        else:
            node = await self.meta.create(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid)
            pending = None
        f, _ = await self.files.open(node.ino, node, created=True)
        f.pending_create = pending
        fi = pyfuse3.FileInfo(fh=self._new_fh(node.ino))
        fi.keep_cache = True
        return fi, self._attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def read(self, fh, off, size):
        return await self.files.read(self._fh_ino[fh], off, size)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self.files.write(self._fh_ino[fh], off, buf)

    @fuse_errors
    async def flush(self, fh):
        await self.files.flush(self._fh_ino[fh])

    @fuse_errors
    async def fsync(self, fh, datasync):
        await self.files.fsync(self._fh_ino[fh])

    @fuse_errors
    async def release(self, fh):
        ino = self._fh_ino.pop(fh, None)
        if ino is not None:
            await self.files.release(ino)

    async def forget(self, inode_list):
        pass  # no per-inode state outside open handles (see FileData)

    # ------------------------------------------------------------------ xattrs

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if name == FILE_CAPS or self._no_xattrs(inode):
            # The kernel asks for security.capability before every write(2) (to
            # drop file capabilities); answering from ZooKeeper cost a round trip per write.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        try:
            return await self.meta.getxattr(inode, name)
        except DfsError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if name == FILE_CAPS:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # see getxattr
        self._recent.pop(inode, None)
        await self.meta.setxattr(inode, name, value)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        if self._no_xattrs(inode):
            return []
        return await self.meta.listxattr(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        self._recent.pop(inode, None)
        try:
            await self.meta.removexattr(inode, name)
        except DfsError as e:
            if e.errno == errno.ENODATA:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None
            raise

    # ------------------------------------------------------------------ misc

    @fuse_errors
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        live = self.nodedir.live()
        replicas = max(1, self.meta.config.replicas)
        capacity = sum(n.capacity for n in live.values()) // replicas
        free = sum(n.free for n in live.values()) // replicas
        s.f_bsize = 1 << 17
        s.f_frsize = 4096
        s.f_blocks = capacity // s.f_frsize
        s.f_bfree = free // s.f_frsize
        s.f_bavail = s.f_bfree
        used_inodes = await self.meta.inode_count()
        s.f_files = max(used_inodes * 2, 1 << 32)
        s.f_ffree = s.f_files - used_inodes
        s.f_favail = s.f_ffree
        s.f_namemax = NAME_MAX
        return s

    async def access(self, inode, mode, ctx):
        return True  # default_permissions: the kernel checks modes
