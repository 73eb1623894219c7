"""What the mount tells the kernel: entry attributes, long grants, invalidations.

While the change feed runs, what the client view knows exactly the kernel may
keep for `feed_timeout` instead of attr_timeout/entry_timeout: when someone
else changes it, the feed's event makes us invalidate the kernel's copy (a
reply racing with that invalidation is discarded by the kernel, which versions
attributes, and an entry invalidation waits for the directory's lookups).
`_long` lists what we handed out that way, so that a lost feed can take it all back.
"""

import logging
import stat
import time
from typing import Protocol

import pyfuse3
import trio

from dfs.client.attrs import AttrJournal
from dfs.client.files import FileData
from dfs.client.view import ClientView
from dfs.meta.inodes import Inode

log = logging.getLogger(__name__)
LONG_MAX = 200_000


class Notify(Protocol):
    """The kernel's invalidation calls (pyfuse3's; a test passes a recorder)."""

    def invalidate_entry_async(self, parent: int, name: bytes, ignore_enoent: bool = False) -> None: ...

    def invalidate_inode(self, ino: int, attr_only: bool = False) -> None: ...


class Kernel:
    """Args:
      view: what this client knows (exactness, its feed).
      files: open files (local sizes).
      attr_timeout, entry_timeout: how long the kernel keeps what we tell it.
      feed_timeout: how long it keeps what the feed vouches for (0: never longer).
      notify: the kernel's invalidation calls.
      journal: attribute changes not committed yet (shown as made).
    """

    def __init__(self, view: ClientView, files: FileData, *, attr_timeout: float = 1.0,
                 entry_timeout: float = 1.0, feed_timeout: float = 0.0, notify: Notify = pyfuse3,
                 journal: AttrJournal | None = None):
        self.view = view
        self.files = files
        self.journal = journal
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.feed_timeout = feed_timeout
        self.notify = notify
        self._long: dict[tuple, float] = {}
        self._next_purge = 0.0  # (time.monotonic) see _long_ok
        view.kernel_notice = self.forget
        files.on_merged = self._drop_pages

    def detach(self) -> None:
        """The kernel side is gone (unmounted): tell it nothing more."""
        self.view.kernel_notice = None

    def _long_ok(self) -> bool:
        if not self.feed_timeout or not self.view.feed.active:
            return False
        if len(self._long) >= LONG_MAX:
            now = time.monotonic()
            # At most once a second: the purge reads all LONG_MAX entries, and a listing of
            # 100,000 entries (two each) that purged at every entry once the map was full
            # and nothing had expired yet took ls -l minutes and held the event loop long
            # enough for the ZooKeeper session to expire. Full: short timeouts meanwhile.
            if now >= self._next_purge:
                self._long = {k: d for k, d in self._long.items() if d > now}
                self._next_purge = now + 1.0
        return len(self._long) < LONG_MAX

    def forget(self, kind: str, key: int, name: bytes | None) -> None:
        """Someone else changed something (or the feed dropped): drop the kernel's long-lived copies."""
        notify = self.notify
        try:
            if kind == "entry":
                if self._long.pop(("e", key, name), None) is not None:
                    notify.invalidate_entry_async(key, name, ignore_enoent=True)
            elif kind == "inode":
                self.files.follow(key, self._drop_pages)  # if it is open here
                if self._long.pop(("i", key), None) is not None:
                    notify.invalidate_inode(key, attr_only=True)
            elif kind == "lost":
                now = time.monotonic()
                held, self._long = self._long, {}
                for k, deadline in held.items():
                    if deadline <= now:
                        continue
                    if k[0] == "e":
                        notify.invalidate_entry_async(k[1], k[2], ignore_enoent=True)
                    else:
                        try:
                            notify.invalidate_inode(k[1], attr_only=True)
                        except OSError:
                            pass
        except OSError:
            pass  # the kernel no longer has it
        except Exception:  # never let the feed's reader fail on this
            log.exception("kernel invalidation of %s %r %r", kind, key, name)

    async def catch_up(self, ino: int) -> None:
        """Another mount's last commit of `ino` is read here from now on (a lock was granted)."""
        await self.files.catch_up(ino, self._drop_pages)

    async def _drop_pages(self, ino: int) -> None:
        """The kernel drops an inode's cached pages and attributes (in a thread: it
        waits for pages under read, which this loop must stay free to answer)."""
        try:
            await trio.to_thread.run_sync(self.notify.invalidate_inode, ino)
        except OSError:
            pass

    def forget_entry(self, parent: int, name: bytes) -> None:
        """Make the kernel drop an entry (a create that failed after it was answered)."""
        try:
            self.notify.invalidate_entry_async(parent, name)
        except Exception as e:  # the kernel may have dropped it already
            log.debug("invalidate_entry_async(%d, %r): %r", parent, name, e)

    def forget_attrs(self, ino: int) -> None:
        """Make the kernel drop an inode's cached attributes now."""
        try:
            self.notify.invalidate_inode(ino, attr_only=True)
        except OSError:
            pass

    def negative_entry(self) -> pyfuse3.EntryAttributes:
        """A name that does not exist, cached for a short while (st_ino 0)."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = 0
        a.entry_timeout = min(self.entry_timeout, 1.0)
        return a

    def attrs(self, node: Inode, age: float = 0.0, parent: int | None = None,
              name: bytes | None = None) -> pyfuse3.EntryAttributes:
        """Attributes for the kernel; `age`: how old our knowledge of them is;
        parent/name: the entry they answer (lookup, create, readdirplus)."""
        r = node.rec
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = self.entry_timeout
        a.attr_timeout = max(0.0, self.attr_timeout - age)
        if self._long_ok():
            deadline = time.monotonic() + self.feed_timeout
            if self.view.is_exact(node):
                a.attr_timeout = self.feed_timeout
                self._long[("i", node.ino)] = deadline
            if parent is not None and self.view.entry_exact(parent, name, node.ino):
                a.entry_timeout = self.feed_timeout
                self._long[("e", parent, name)] = deadline
        a.st_mode = r.mode
        a.st_nlink = r.nlink
        a.st_uid = r.uid
        a.st_gid = r.gid
        a.st_rdev = r.rdev
        size, atime_ns, mtime_ns, ctime_ns = r.size, r.atime_ns, r.mtime_ns, r.ctime_ns
        queued = self.journal.fields_of(node.ino) if self.journal is not None else None
        local = self.files.local_attrs(node.ino) if r.is_reg else None
        written = folded = None
        if local is not None:
            size, written, folded = local
        for changes in (queued, folded):  # not committed yet: the journal's, the open file's
            if changes:
                a.st_mode = stat.S_IFMT(r.mode) | stat.S_IMODE(changes.get("mode", a.st_mode))
                a.st_uid = changes.get("uid", a.st_uid)
                a.st_gid = changes.get("gid", a.st_gid)
                atime_ns = changes.get("atime_ns", atime_ns)
                mtime_ns = changes.get("mtime_ns", mtime_ns)
                ctime_ns = max(ctime_ns, changes["ctime_ns"])
        if written is not None:
            mtime_ns, ctime_ns = written, max(ctime_ns, written)
        a.st_size = size
        a.st_blksize = 1 << 17
        if r.is_reg:
            stored = self.files.local_stored(node.ino)
            stored = r.stored if stored is None else stored
            a.st_blocks = self.files.blocks_of(size if stored < 0 else stored)
        else:
            a.st_blocks = 8 if r.is_dir else 0
        a.st_atime_ns = atime_ns
        a.st_mtime_ns = mtime_ns
        a.st_ctime_ns = ctime_ns
        return a
