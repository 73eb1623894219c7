"""pyfuse3 Operations: kernel requests translated into dfs.client and dfs.meta calls.

Thin on purpose: no znode paths, no sockets, no knowledge of its own. What the
mount knows is the client view's (dfs.client.view), what the kernel is told is
mount.kernel's, and every error becomes a FUSEError in mount.errors.
"""

import errno
import fcntl
import os
import stat
from dataclasses import dataclass

import pyfuse3
from dfs.blocks.nodedir import NodeDirectory
from dfs.client.attrs import AttrJournal
from dfs.client.creates import Creates
from dfs.client.files import FileData
from dfs.client.leases import DirLeases
from dfs.client.locks import MountLocks
from dfs.client.removals import Removals
from dfs.client.view import ClientView
from dfs.errors import DfsError
from dfs.meta.namespace import breathe
from dfs.names import NAME_MAX
from mount.errors import fuse_errors
from mount.kernel import Kernel

FILE_CAPS = b"security.capability"  # file capabilities: not supported on dfs
# the system.* names dfs stores (POSIX ACLs); as on ext4, any other is EOPNOTSUPP
SYSTEM_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")
FALLOC_FL_KEEP_SIZE = 0x01  # <linux/falloc.h>
FALLOC_FL_PUNCH_HOLE = 0x02


@dataclass
class DirHandle:
    ino: int
    entries: list  # snapshot: [(name, EntryAttributes)]
    pinned: list  # the inodes the view keeps while the handle is open (ClientView.pin)


class Operations(pyfuse3.Operations):
    """Args:
      view: what this mount knows, and its namespace calls.
      files: open files' data.
      kernel: what the kernel is told (attributes, grants, invalidations).
      nodedir: the storage nodes (statfs).
      creates: asynchronous creates (None: every create waits for its commit).
      removals: asynchronous unlink/rmdir (None: synchronous).
      locks: flock and POSIX locks across mounts.
      journal: chmod / chown / utimens in the background (None: each waits for its commit).
      leases: directory leases, under which O_EXCL creates are answered here (None: never).
    """

    # No kernel writeback cache: with it the kernel keeps its own i_size and
    # mtime for regular files and ignores ours, so a file rewritten on another
    # mount keeps its old size here forever (breaks close-to-open).
    enable_writeback_cache = False
    supports_dot_lookup = True
    # The kernel checks POSIX ACLs; it leaves us the umask (applied only without
    # a default ACL to inherit), the inheritance, and the mode and ACL in step
    # (dfs.meta.acl). Needs our pyfuse3 patch for dont_mask.
    enable_acl = True
    enable_dont_mask = True

    def __init__(self, view: ClientView, files: FileData, kernel: Kernel, nodedir: NodeDirectory,
                 locks: MountLocks, *, creates: Creates | None = None, removals: Removals | None = None,
                 journal: AttrJournal | None = None, leases: DirLeases | None = None):
        super().__init__()
        self.view = view
        self.meta = view.meta
        self.files = files
        self.kernel = kernel
        self.nodedir = nodedir
        self.creates = creates
        self.removals = removals
        self.journal = journal
        self.leases = leases
        self.locks = locks
        self._fh_ino: dict[int, int] = {}
        self._appending: set[int] = set()  # handles opened with O_APPEND
        self._dirs: dict[int, DirHandle] = {}
        self._next_fh = 1

    def _new_fh(self, ino: int, flags: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._fh_ino[fh] = ino
        if flags & os.O_APPEND:
            self._appending.add(fh)
        return fh

    async def _before_change(self, *dirs: int) -> None:
        """A namespace change in these directories: order it after their pending removals."""
        for d in dirs:
            self.view.dir_changed(d)
        if self.removals is not None:
            await self.removals.wait_dir(*dirs)

    # ------------------------------------------------------------------ namespace

    @fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        removals = self.removals
        try:
            if removals is not None and removals.hidden(parent_inode, name):
                raise DfsError(errno.ENOENT, "being removed")
            node = await self.view.lookup(parent_inode, name)
            if removals is not None and removals.changing(node.ino):
                # another name of it is being removed: its nlink is about to change
                await removals.wait_inode(node.ino)
                node = await self.view.getattr(node.ino)
            return self.kernel.attrs(node, parent=parent_inode, name=name)
        except DfsError as e:
            if e.errno == errno.ENOENT:
                return self.kernel.negative_entry()
            raise

    @fuse_errors
    async def getattr(self, inode, ctx=None):
        # The kernel drops a directory's attributes after each entry change we
        # make in it; what we know (read < attr_timeout ago, plus our own
        # changes) answers without a round trip, cached only for the rest of
        # that attr_timeout: the staleness bound stays the kernel cache's.
        if self.removals is not None and self.removals.changing(inode):
            await self.removals.wait_inode(inode)  # a link of it is being removed (nlink)
        node, age = await self.view.attrs(inode)
        return self.kernel.attrs(node, age)

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
        if fields.update_ctime:
            kw["ctime_ns"] = attr.st_ctime_ns
        if kw:
            done = await self.files.fold_attrs(inode, kw)  # with the file's writes, at close or fsync
            if done is None and node is None and self.journal is not None:
                await self.journal.admit()
                done = self.journal.queue(inode, kw)  # in the background (dfs.client.attrs)
            if done is None:
                if "mtime_ns" in kw:
                    # a later flush of buffered writes must not overwrite the time set here
                    await self.files.flush(inode)
                journal = self.journal.take(inode) if self.journal is not None else {}
                done = await self.view.setattr(inode, **{**journal, **self.files.take_attrs(inode), **kw})
                self.files.saw_own_change(done)
            node = done
        if node is None:
            node = await self.view.getattr(inode)
        return self.kernel.attrs(node)

    @fuse_errors
    async def readlink(self, inode, ctx):
        return await self.meta.inodes.readlink(inode)

    @fuse_errors
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        await self._before_change(parent_inode)
        mode, xattrs = await self.view.inherit(parent_inode, mode, ctx.umask)
        node = await self.view.mknod(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, rdev=rdev,
                                     xattrs=xattrs)
        return self.kernel.attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        await self._before_change(parent_inode)
        mode, xattrs = await self.view.inherit(parent_inode, stat.S_IFDIR | stat.S_IMODE(mode), ctx.umask)
        if (self.creates is not None and self.view.feed.active and self.view.may_predict(parent_inode)
                and await self._excl_here(parent_inode, name)):
            # under the parent's lease: answered here, committed in the background (dfs.client.creates)
            node, _ = await self.creates.create(
                parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, xattrs=xattrs,
                on_failed=lambda e: self.kernel.forget_entry(parent_inode, name))
        else:
            node = await self.view.mknod(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, xattrs=xattrs)
        return self.kernel.attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        await self._before_change(parent_inode)
        node = await self.view.mknod(parent_inode, name, stat.S_IFLNK | 0o777, uid=ctx.uid, gid=ctx.gid,
                                     target=target)
        return self.kernel.attrs(node, parent=parent_inode, name=name)

    @fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        await self._before_change(new_parent_inode)
        return self.kernel.attrs(await self.view.link(inode, new_parent_inode, new_name))

    @fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        if self.removals is not None:
            await self.removals.unlink(parent_inode, name)
        else:
            await self.view.unlink(parent_inode, name)

    @fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        if self.removals is not None:
            await self.removals.rmdir(parent_inode, name)
        else:
            await self.view.rmdir(parent_inode, name)

    @fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._before_change(parent_inode_old, parent_inode_new)
        if self.journal is not None and self.journal.pending:
            # the name appears with its attributes (rsync renames its finished file into place)
            moved = self.view.hints.get((parent_inode_old, name_old))
            await self.journal.drain(moved if moved is not None else None)
        await self.view.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # ------------------------------------------------------------------ directories

    @fuse_errors
    async def opendir(self, inode, ctx):
        this, entries = await self.view.list_dir(inode, with_attrs=True, pin=True)
        pinned = [node.ino for _, _, node in entries if node is not None]  # (by list_dir)
        try:
            # readdirplus ignores the attributes of . and ..; only inode and type matter
            dotdot = pyfuse3.EntryAttributes()
            dotdot.st_ino = this.rec.parent or pyfuse3.ROOT_INODE
            dotdot.st_mode = stat.S_IFDIR | 0o755
            snapshot = [(b".", self.kernel.attrs(this)), (b"..", dotdot)]
            if self.removals is not None:
                entries = [e for e in entries if not self.removals.hidden(inode, e[0])]
            self.view.saw_listing(inode, len(entries))
            attrs = self.kernel.attrs
            for i, (name, _, node) in enumerate(entries):
                await breathe(i)  # (a huge directory: see dfs.meta.namespace)
                snapshot.append((name, attrs(node, parent=inode, name=name)))
        except BaseException:
            self.view.unpin(pinned)
            raise
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirHandle(inode, snapshot, pinned)
        return fh

    @fuse_errors
    async def readdir(self, fh, start_id, token):
        d = self._dirs[fh]
        for i in range(start_id, len(d.entries)):
            name, attrs = d.entries[i]
            if not pyfuse3.readdir_reply(token, name, attrs, i + 1):
                break

    async def releasedir(self, fh):
        d = self._dirs.pop(fh, None)
        if d is not None:
            self.view.unpin(d.pinned)

    @fuse_errors
    async def fsyncdir(self, fh, datasync):
        # every other namespace change is committed before it returns
        failed = 0
        if self.journal is not None:
            await self.journal.drain()
            failed += self.journal.take_failures()
        if self.creates is not None:
            await self.creates.drain()
            failed += self.creates.take_failures()
        if self.removals is not None:
            await self.removals.drain()
            failed += self.removals.take_failures()
        if failed:
            raise DfsError(errno.EIO, "a background create, removal or attribute change failed "
                                      "(see the mount log)")

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
            self.kernel.forget_attrs(inode)
        elif flags & os.O_ACCMODE != os.O_WRONLY:
            self.files.accessed(inode)  # (relatime) its reads may come from the kernel's cache
        fi = pyfuse3.FileInfo(fh=self._new_fh(inode, flags))
        fi.keep_cache = keep
        return fi

    @fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        await self._before_change(parent_inode)
        mode, xattrs = await self.view.inherit(parent_inode, stat.S_IFREG | stat.S_IMODE(mode), ctx.umask)
        pending = None
        if self.creates is not None and self.view.feed.active and (
                not flags & os.O_EXCL or await self._excl_here(parent_inode, name)):
            # The create's transaction goes out now; the data's commit at close
            # follows it on the same session and reports a create that failed.
            # O_EXCL keeps the synchronous create (its EEXIST is the point) unless
            # this mount holds the directory's lease (dfs.client.leases).
            node, pending = await self.creates.create(
                parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, xattrs=xattrs,
                on_failed=lambda e: self.kernel.forget_entry(parent_inode, name))
        else:
            node = await self.view.mknod(parent_inode, name, mode, uid=ctx.uid, gid=ctx.gid, xattrs=xattrs)
        f, _ = await self.files.open(node.ino, node, created=True, pending=pending)
        fi = pyfuse3.FileInfo(fh=self._new_fh(node.ino, flags))
        fi.keep_cache = True
        return fi, self.kernel.attrs(node, parent=parent_inode, name=name)

    async def _excl_here(self, parent: int, name: bytes) -> bool:
        """O_EXCL create: True if it may be answered here (EEXIST is raised here)."""
        leases = self.leases
        if leases is None or not await leases.take(parent):
            return False
        if leases.taken(parent, name):
            raise pyfuse3.FUSEError(errno.EEXIST)
        leases.stats["local_excl"] += 1
        leases.used(parent)
        return True

    @fuse_errors
    async def read(self, fh, off, size):
        return await self.files.read(self._fh_ino[fh], off, size)

    @fuse_errors
    async def write(self, fh, off, buf):
        return await self.files.write(self._fh_ino[fh], off, buf, append=fh in self._appending)

    @fuse_errors
    async def flush(self, fh, lock_owner=None):
        ino = self._fh_ino[fh]
        try:
            await self.files.flush(ino)
        finally:  # a close that fails still drops the locks
            await self.locks.closed(ino, lock_owner)

    @fuse_errors
    async def fsync(self, fh, datasync):
        await self.files.flush(self._fh_ino[fh])

    @fuse_errors
    async def lseek(self, fh, off, whence):
        # the kernel answers SEEK_SET/CUR/END itself
        return self.files.seek_data_hole(self._fh_ino[fh], off, hole=whence == os.SEEK_HOLE)

    @fuse_errors
    async def fallocate(self, fh, mode, off, length):
        ino = self._fh_ino[fh]
        if mode == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE:
            await self.files.punch_hole(ino, off, length)
        elif mode in (0, FALLOC_FL_KEEP_SIZE):
            # Blocks are written when data is, so there is nothing to allocate;
            # what we can promise is that the space is free now (later writes
            # can still meet ENOSPC if others fill the nodes first).
            if length > self._free_bytes():
                raise pyfuse3.FUSEError(errno.ENOSPC)
            if mode == 0 and off + length > self.files.local_attrs(ino)[0]:
                await self.files.truncate(ino, off + length)
        else:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)

    @fuse_errors
    async def release(self, fh):
        ino = self._fh_ino.pop(fh, None)
        self._appending.discard(fh)
        try:
            if ino is not None:
                await self.files.release(ino)
        finally:
            await self.locks.release(fh)

    # ------------------------------------------------------------------ locks (dfs.client.locks)

    @fuse_errors
    async def getlk(self, fh, owner, lock_type, start, length, ctx):
        return await self.locks.getlk(self._fh_ino[fh], owner, lock_type, start, length)

    @fuse_errors
    async def setlk(self, fh, owner, lock_type, start, length, sleep, ctx):
        ino = self._fh_ino[fh]
        await self.locks.setlk(fh, ino, owner, lock_type, start, length, wait=sleep, pid=ctx.pid)
        if lock_type != fcntl.F_UNLCK:
            await self.kernel.catch_up(ino)

    @fuse_errors
    async def flock(self, fh, owner, op, ctx):
        ino = self._fh_ino[fh]
        await self.locks.flock(fh, ino, owner, op)
        if not op & fcntl.LOCK_UN:
            await self.kernel.catch_up(ino)

    async def forget(self, inode_list):
        pass  # no per-inode state outside open handles (see FileData)

    # ------------------------------------------------------------------ xattrs

    @fuse_errors
    async def getxattr(self, inode, name, ctx):
        if name == FILE_CAPS or await self.view.without_xattrs(inode):
            # The kernel asks for security.capability before every write(2) (to
            # drop file capabilities); answering from ZooKeeper cost a round trip per write.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self.meta.xattrs.get(inode, name)

    @fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if name == FILE_CAPS or name.startswith(b"system.") and name not in SYSTEM_XATTRS:
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)  # FILE_CAPS: see getxattr
        if name == SYSTEM_XATTRS[0]:  # cp -a's chmod, as an ACL (see dfs.meta.acl.is_minimal)
            if await self.files.fold_access_acl(inode, value):
                return  # committed with the file at close
            if self.journal is not None and (await self.journal.admit() or
                                             self.journal.queue_access_acl(inode, value)):
                return  # committed in the background
        await self.view.setxattr(inode, name, value)

    @fuse_errors
    async def listxattr(self, inode, ctx):
        if await self.view.without_xattrs(inode):
            return []
        return await self.meta.xattrs.names(inode)

    @fuse_errors
    async def removexattr(self, inode, name, ctx):
        if await self.view.without_xattrs(inode):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)  # (cp -a removes a default ACL from each directory)
        await self.view.removexattr(inode, name)

    # ------------------------------------------------------------------ misc

    @fuse_errors
    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        live = self.nodedir.live()
        capacity = sum(n.capacity for n in live.values()) // max(1, self.meta.config.replicas)
        s.f_bsize = 1 << 17
        s.f_frsize = 4096
        s.f_blocks = capacity // s.f_frsize
        s.f_bfree = self._free_bytes() // s.f_frsize
        s.f_bavail = s.f_bfree
        used_inodes = await self.meta.inodes.count()
        s.f_files = max(used_inodes * 2, 1 << 32)
        s.f_ffree = s.f_files - used_inodes
        s.f_favail = s.f_ffree
        s.f_namemax = NAME_MAX
        return s

    def _free_bytes(self) -> int:
        """What the live nodes can still store, per replica."""
        live = self.nodedir.live()
        return sum(n.free for n in live.values()) // max(1, self.meta.config.replicas)

    async def access(self, inode, mode, ctx):
        return True  # default_permissions: the kernel checks modes
