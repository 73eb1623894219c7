"""Asynchronous creates: `open(O_CREAT)` answered once the create's transaction is on its way.

A session's requests apply in order, so anything this client sends later (the
commit of the file's data at close, above all) applies after the create. Until
it lands, the view answers lookups of the name from `ClientView.creating`. If
it fails (another client took the name meanwhile, the directory went away,
ZooKeeper unreachable for longer than the mount waits), `PendingCreate.error`
says why, the file's flushes report it (close() and fsync() never succeed
before the create has landed), the next fsyncdir reports EIO, and `on_failed`
runs (the mount makes the kernel forget the entry).
O_EXCL creates and mkdir come here only in a directory whose lease this
mount holds (dfs.client.leases: it knows the names exactly); elsewhere they
stay synchronous (their EEXIST is the point). What is created inside a
directory whose own create is still on its way goes out after it on the same
session; if that directory's create had to be retried (its first transaction
conflicted), theirs fail on the missing directory and are retried once after it.
"""

import collections
import errno
import logging
import stat
from typing import Callable

import trio

from dfs.client.view import ClientView
from dfs.errors import DfsError, ZkUnavailable
from dfs.meta.inodes import Inode
from dfs.names import check_name

log = logging.getLogger(__name__)


class PendingCreate:
    """The outcome of an asynchronous create: `done` is set once it landed or failed (`error`)."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: DfsError | None = None


class Creates:
    """Args: view: the client's namespace; nursery: where the creates' transactions run."""

    def __init__(self, view: ClientView, nursery: trio.Nursery):
        self.view = view
        self.nursery = nursery
        self._in_flight = 0
        self._per_dir: collections.Counter[int] = collections.Counter()
        self._by_ino: dict[int, PendingCreate] = {}  # the creates on their way, by inode
        self._changed = trio.Condition()
        self.failures = 0  # creates that failed after open returned (fsyncdir reports them)

    async def create(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                     xattrs: dict[bytes, bytes] | None = None,
                     on_failed: Callable[[DfsError], None] | None = None
                     ) -> tuple[Inode, PendingCreate]:
        """Create a regular file (or, `mode` saying so, a directory) without waiting
        for its transaction (see the module)."""
        check_name(name)
        view = self.view
        view.capacity.admit()
        kind = stat.S_IFDIR if stat.S_ISDIR(mode) else stat.S_IFREG
        ino, rec, t = await view.meta.inodes.plan(kind | stat.S_IMODE(mode), uid, gid)
        rec.xattrs = len(xattrs or ())
        if kind == stat.S_IFDIR:
            rec.parent = parent
        # (a directory: nobody else can know of it before it lands, and then only under
        # its lease, so what is made here is exact: what is made in it builds on it)
        node = Inode(ino, rec, 0, exact=kind == stat.S_IFDIR and view.feed.active, has_map=False)
        pending = PendingCreate()
        view.creating_started(parent, name, node)
        self._in_flight += 1
        self._per_dir[parent] += 1
        self._by_ino[ino] = pending
        sent = trio.Event()

        async def run() -> None:
            failed = False
            try:
                try:
                    await view.mknod(parent, name, rec.mode, uid=uid, gid=gid, planned=(ino, rec, t),
                                     on_sent=sent.set, xattrs=xattrs)
                except DfsError as e:
                    above = self._by_ino.get(parent)
                    if e.errno != errno.ENOENT or above is None:
                        raise
                    await above.done.wait()  # (see the module)
                    if above.error is not None:
                        raise
                    await view.mknod(parent, name, rec.mode, uid=uid, gid=gid, planned=(ino, rec, t),
                                     xattrs=xattrs)
            except Exception as e:
                failed = True
                self.failures += 1
                pending.error = e if isinstance(e, DfsError) else DfsError(errno.EIO, repr(e))
                # (an unreachable ZooKeeper is logged once per outage, by the session)
                (log.debug if isinstance(e, ZkUnavailable) else log.warning)(
                    "create of %r in directory %d failed after open returned: %s",
                    name, parent, pending.error)
                view.creating_done(parent, name, node, failed)
                if on_failed is not None:
                    on_failed(pending.error)
            finally:
                if not failed:
                    view.creating_done(parent, name, node, failed)
                self._in_flight -= 1
                self._by_ino.pop(ino, None)
                self._per_dir[parent] -= 1
                if not self._per_dir[parent]:
                    del self._per_dir[parent]
                pending.done.set()
                sent.set()
                async with self._changed:
                    self._changed.notify_all()

        self.nursery.start_soon(run)
        await sent.wait()
        return node, pending

    async def drain(self) -> None:
        """Wait until every asynchronous create has landed (or failed)."""
        async with self._changed:
            while self._in_flight:
                await self._changed.wait()

    def busy(self, d: int) -> bool:
        """Whether something of this client's is pending in directory d."""
        return self._per_dir[d] > 0

    async def wait_dir(self, *dirs: int) -> None:
        """Wait until the asynchronous creates in these directories have landed (or failed)."""
        async with self._changed:
            while any(self._per_dir[d] for d in dirs):
                await self._changed.wait()

    def take_failures(self) -> int:
        n, self.failures = self.failures, 0
        return n
