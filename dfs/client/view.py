"""What one mount knows about the namespace, in one place.

Every map of client-side knowledge lives here: name -> inode hints, inodes as
last seen (`known`: fresh for `fresh_for` seconds, or exact while the change
feed keeps them so), the entry names and entries the feed keeps exact,
inodes being created asynchronously, inodes this mount holds open after
their unlink, the versions of files as last seen (close-to-open), and what a
recent listing told about a directory's emptiness. ClientView is the
`FeedListener` of its `Feed` (dfs.client.feed), which is the `CommitHook` of
its `Meta` (dfs.meta), and the namespace calls of the mount go through it:
each asks `Meta` with what is known and keeps what it learns.

What is known is only ever a guess or a bounded-staleness answer unless the
feed vouches for it: a hint is checked against the dirent read with it (a stale
hint costs a round trip, never a wrong answer); a fresh inode stands in for a
read before a version-checked change (a stale one fails the check: retried).
"""

import collections
import contextlib
import dataclasses
import errno
import itertools
import stat
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from dfs.client.feed import CREATED, DELETED, Feed
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.maint.capacity import Gate
from dfs.meta import Meta, acl
from dfs.meta.inodes import Inode, with_entry_change
from dfs.meta.leases import Leases
from dfs.meta.namespace import breathe
from dfs.meta.store import Conflict
from dfs.meta.writers import Writer
from dfs.paths import FsPaths
from dfs.records import BlockRef, DirEntry
from dfs.zk import ZkClient

HINTS_MAX = 200_000  # inodes, and name -> inode hints, kept (then the oldest quarter goes)
MAX_DIRS = 100_000  # directories whose names are kept (then everything is dropped)
MAX_DIRENTS = 1_000_000  # entries whose inode is kept
LISTED_MAX = 10_000

Listing = tuple[Inode, list[tuple[bytes, DirEntry, Inode | None]]]
KernelNotice = Callable[[str, int, bytes | None], None]


def drop_oldest(d: dict, share: float = 0.25, keep: Any = ()) -> list:
    """Remove the first-inserted `share` of d's keys, except those in `keep`;
    returns them. A full map loses what was learnt longest ago, not everything:
    a listing just read (all of an `ls -l`'s inodes) survives the creates that
    filled the map before it."""
    want = max(1, int(len(d) * share))
    old = list(itertools.islice((k for k in d if k not in keep), want))
    for k in old:
        del d[k]
    return old


@dataclass
class Known:
    """An inode as this client knows it: how old that knowledge is, and whether
    the change feed vouches for it (then its age does not matter)."""

    inode: Inode
    age: float
    exact: bool


class ClientView:
    """Args:
      zk, paths, config: the filesystem (for its `Meta`).
      mount_id: identifies this client in `open/<ino>/<mount_id>`.
      fresh_for: seconds an inode read stands for the inode (the mount's attr_timeout).
      listing_ttl: how long a directory listing counts for the emptiness of an rmdir.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, *, mount_id: str | None = None,
                 fresh_for: float = 1.0, listing_ttl: float = 2.0):
        self.fresh_for = fresh_for
        self.listing_ttl = listing_ttl
        self.feed = Feed(paths, self)
        # the ids of this mount's blocks, and what its commits of them fence on
        # (`register()` before the first write; dfs.meta.writers)
        self.writer = Writer(zk, paths)
        # directory leases (dfs.meta.leases): held under the writer record; a mount
        # that answers O_EXCL creates locally (dfs.client.leases) sets `lease_births`
        self.lease_births = False
        self.leases = Leases(zk, paths, me=self._writer_name, remember=True,
                             birth=lambda: self.lease_births and self.feed.active)
        self.on_recalled: Callable[[int], None] | None = None  # (dfs.client.leases)
        self.meta = Meta(zk, paths, config, mount_id=mount_id, is_open=self._holds, hook=self.feed,
                         writer=self.writer, leases=self.leases)
        self.config = config
        # ENOSPC for creates while ZooKeeper is full (its `run()` keeps it current)
        self.capacity = Gate(zk, paths)
        # (parent, name) -> inode last seen there: lets one multi-read fetch a
        # name's inode together with its dirent
        self.hints: dict[tuple[int, bytes], int] = {}
        # ino -> (time.monotonic() of the read, inode as read plus our changes since, exact)
        self._fresh: dict[int, tuple[float, Inode, bool]] = {}
        self._vmax: dict[int, int] = {}  # ino -> highest znode version remembered
        # inodes of the listings open now (opendir .. releasedir), how many hold each: a
        # full _fresh does not drop them, or `ls -l` of a directory bigger than the
        # bound would read each inode again (the inodes are held by the listings anyway)
        self._pinned: collections.Counter[int] = collections.Counter()
        # kept exact by the feed: a directory's complete entry names, an entry's (inode, type)
        self.names: dict[int, set[bytes]] = {}
        self.dirents: dict[tuple[int, bytes], tuple[int, int]] = {}
        # (parent, name) -> inode of an asynchronous create still on its way
        self.creating: dict[tuple[int, bytes], Inode] = {}
        # directory -> asynchronous mkdirs in it on their way, whose outcome `known` shows
        self._predicted: collections.Counter[int] = collections.Counter()
        # inodes this client unlinked (or renamed over) while it had them open:
        # it holds them in open/<ino>/<mount_id> until release_orphan
        self.held: set[int] = set()
        self._holding = 0  # commits in flight that may hold an inode (see _may_hold)
        self.versions: dict[int, tuple[int, int]] = {}  # ino -> (version, size) last seen
        # directory -> (when listed, entries it had minus what we removed since)
        self.listed: dict[int, tuple[float, int]] = {}
        # whether this client has an inode open (set by dfs.client.files.FileData)
        self.is_open_file: Callable[[int], bool] = lambda ino: False
        # told of someone else's change (set by mount.kernel): ("entry", dir, name),
        # ("inode", ino, None), or ("lost", 0, None) when the feed dropped
        self.kernel_notice: KernelNotice | None = None
        self.stats = {"cached_listings": 0}

    # ------------------------------------------------------------------ the FeedListener

    def names_event(self, kind: int, dino: int, name: bytes | None) -> None:
        if name is None:
            if kind == CREATED:
                if len(self.names) >= MAX_DIRS:
                    self.names.clear()
                self.names[dino] = set()
            elif kind == DELETED:
                self.names.pop(dino, None)
            return
        names = self.names.get(dino)
        if names is not None:
            if kind == CREATED:
                names.add(name)
            elif kind == DELETED:
                names.discard(name)

    def recalled(self, dino: int) -> None:
        if self.on_recalled is not None:
            self.on_recalled(dino)

    def forget_entry(self, dino: int, name: bytes, foreign: bool) -> None:
        self.dirents.pop((dino, name), None)
        if foreign and self.kernel_notice is not None:
            self.kernel_notice("entry", dino, name)

    def forget_inode(self, ino: int, foreign: bool) -> None:
        self._fresh.pop(ino, None)
        if foreign and self.kernel_notice is not None:
            self.kernel_notice("inode", ino, None)

    async def feed_on(self) -> None:
        # the ephemeral holders of a session that expired are gone: make them again
        if self.held:
            async with self._may_hold():
                await self.meta.namespace.hold_again(sorted(self.held))

    def feed_lost(self) -> None:
        self.names.clear()
        self.dirents.clear()
        self._fresh.clear()
        if self.kernel_notice is not None:
            self.kernel_notice("lost", 0, None)

    def _writer_name(self) -> bytes | None:
        seq = self.writer.seq
        return None if seq is None else f"{seq:010d}".encode()

    # ------------------------------------------------------------------ what is known

    def remember(self, node: Inode, seen: float | None = None, exact: bool | None = None) -> Inode:
        """Keep node (exact: as its read or commit said, unless told otherwise), unless
        we already saw a later version of it (concurrent tasks finish in any order; an
        inode's znode version only grows)."""
        if node.version < self._vmax.get(node.ino, -1):
            return node
        if len(self._fresh) >= HINTS_MAX + len(self._pinned):
            for ino in drop_oldest(self._fresh, keep=self._pinned):
                self._vmax.pop(ino, None)
        self._vmax[node.ino] = node.version
        self._fresh.pop(node.ino, None)  # (to the end: the newest)
        self._fresh[node.ino] = (time.monotonic() if seen is None else seen, node,
                                 node.exact if exact is None else exact)
        return node

    def pin(self, inos: list[int]) -> None:
        """A listing of these inodes is open: keep what is known of them (until `unpin`)."""
        self._pinned.update(inos)

    def unpin(self, inos: list[int]) -> None:
        self._pinned.subtract(inos)
        for ino in inos:
            if self._pinned.get(ino, 1) <= 0:
                del self._pinned[ino]

    def known(self, ino: int) -> Known | None:
        """The inode as this client knows it, if exact (the feed runs) or fresh."""
        got = self._fresh.get(ino)
        if got is None:
            return None
        when, node, exact = got
        if exact and self.feed.active:
            return Known(node, 0.0, True)
        age = time.monotonic() - when
        if age >= self.fresh_for:
            del self._fresh[ino]
            return None
        return Known(node, age, False)

    def may_predict(self, ino: int) -> bool:
        """Whether an asynchronous mkdir in directory ino can build on what is known of
        it: known exactly, and no transaction of ours that changes its inode is in
        flight other than such mkdirs (whose outcome the view already shows)."""
        got = self.known(ino)
        if got is None or not got.exact:
            return False
        return self.feed.own.get(self.meta.paths.inode(ino), 0) <= self._predicted.get(ino, 0)

    def is_exact(self, node: Inode) -> bool:
        """Whether node is what this client keeps for its inode, vouched for by the feed."""
        got = self._fresh.get(node.ino)
        return got is not None and got[2] and got[1] is node

    def entry_exact(self, parent: int, name: bytes | None, ino: int) -> bool:
        """Whether the feed vouches that (parent, name) names ino."""
        ent = self.dirents.get((parent, name))  # type: ignore[arg-type]
        return ent is not None and ent[0] == ino

    def forget(self, ino: int | None) -> None:
        if ino is not None:
            self._fresh.pop(ino, None)

    def changed_dir(self, ino: int, t: int, nlink_delta: int = 0, exact: bool | None = None) -> None:
        """This client changed directory ino's entries at time t: keep its known inode current."""
        got = self._fresh.get(ino)
        if got is None:
            return
        seen, node, was_exact = got
        self.remember(with_entry_change(node, t, nlink_delta), seen=seen,
                      exact=was_exact if exact is None else was_exact and exact)

    def hint(self, parent: int, name: bytes, ino: int | None) -> None:
        if ino is None:
            self.hints.pop((parent, name), None)
            return
        if len(self.hints) >= HINTS_MAX:
            drop_oldest(self.hints)
        self.hints[(parent, name)] = ino

    def trust(self, parent: int, name: bytes, ino: int, mode: int) -> None:
        """Entry (parent, name) names inode ino of type mode, as of now (exact)."""
        if len(self.dirents) >= MAX_DIRENTS:
            self.dirents.clear()
        self.dirents[(parent, name)] = (ino, mode)

    # -- asynchronous creates (dfs.client.creates)

    def creating_started(self, parent: int, name: bytes, node: Inode) -> None:
        self.creating[(parent, name)] = node
        self.remember(node)
        self.hint(parent, name, node.ino)

    def creating_done(self, parent: int, name: bytes, node: Inode, failed: bool) -> None:
        if failed:
            self.forget(node.ino)
        if self.creating.get((parent, name)) is node:
            del self.creating[(parent, name)]

    # -- open files and the inodes held for them

    def _holds(self, ino: int) -> bool:
        """Meta's is_open: an open inode that loses its last name is held from then on."""
        if self.is_open_file(ino):
            self.held.add(ino)
            return True
        return False

    # -- file versions (close-to-open)

    def saw_version(self, node: Inode) -> bool:
        """Note the file's version as seen now; True if it is the one seen last time."""
        same = self.versions.get(node.ino) == (node.version, node.rec.size)
        self.versions[node.ino] = (node.version, node.rec.size)
        return same

    # -- what a listing told about emptiness (dfs.client.removals)

    def saw_listing(self, ino: int, entries: int) -> None:
        if len(self.listed) > LISTED_MAX:
            self.listed.clear()
        self.listed[ino] = (time.monotonic(), entries)

    def dir_changed(self, ino: int) -> None:
        """This client adds to directory ino: a listing of it no longer tells emptiness."""
        self.listed.pop(ino, None)

    def removed_from(self, parent: int) -> None:
        got = self.listed.get(parent)
        if got is not None:
            self.listed[parent] = (got[0], got[1] - 1)

    def known_empty(self, ino: int) -> bool:
        got = self.listed.get(ino)
        return got is not None and got[1] <= 0 and time.monotonic() - got[0] < self.listing_ttl

    # ------------------------------------------------------------------ namespace calls

    async def lookup(self, parent: int, name: bytes) -> Inode:
        creating = self.creating.get((parent, name))
        if creating is not None:
            seen = self.known(creating.ino)
            return seen.inode if seen is not None else creating
        if self.feed.active:
            # answered from what the change feed keeps exact, when we know it
            ent = self.dirents.get((parent, name))
            if ent is not None:
                seen = self.known(ent[0])
                if seen is not None and seen.exact:
                    return seen.inode
            names = self.names.get(parent)
            if names is not None and ent is None and name not in names:
                raise DfsError(errno.ENOENT, f"no entry {name!r}")
        try:
            found = await self.meta.namespace.lookup(parent, name, self.hints.get((parent, name)))
        except DfsError as e:
            if e.errno == errno.ENOENT:
                self.hint(parent, name, None)
            raise
        entry = found.entry
        if entry is not None:
            if found.entry_exact:
                self.trust(parent, name, entry.ino, entry.mode)
            self.hint(parent, name, found.node.ino)
        return self.remember(found.node)

    async def getattr(self, ino: int) -> Inode:
        try:
            node = await self.meta.inodes.getattr(ino)
        except DfsError as e:
            if e.errno == errno.ENOENT:
                self.forget(ino)
            raise
        return self.remember(node)

    async def attrs(self, ino: int) -> tuple[Inode, float]:
        """The inode and the age of that knowledge: known, or read now."""
        seen = self.known(ino)
        if seen is not None:
            return seen.inode, seen.age
        return await self.getattr(ino), 0.0

    async def mknod(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                    rdev: int = 0, target: bytes = b"",
                    planned: Any = None, on_sent: Callable[[], None] | None = None,
                    xattrs: dict[bytes, bytes] | None = None) -> Inode:
        if planned is None:  # (an asynchronous create was admitted by dfs.client.creates)
            self.capacity.admit()
        known = self.known(parent)  # (a file inherits its parent's replica count)
        born = planned is not None and stat.S_ISDIR(mode) and on_sent is not None
        epoch = self.feed.epoch
        predicted = False
        if born and known is not None and known.exact:
            # An asynchronous mkdir (under the parent's lease): what it will make
            # is known the moment it goes out, so what this mount does next (the
            # next mkdir's version check on the parent, creates in the new
            # directory) builds on it without waiting for the reply.
            told, parent_then, ino, t = on_sent, known.inode, planned[0], planned[2]
            parent_path = self.meta.paths.inode(parent)

            def on_sent() -> None:
                nonlocal predicted
                now = self.known(parent)
                if (now is None or now.inode is not parent_then
                        or self.feed.own.get(parent_path, 0) > self._predicted.get(parent, 0) + 1):
                    # the parent changed while the transaction waited (its lease's
                    # read): built on a stale version, so build it again, unpredicted
                    raise Conflict("parent changed before the mkdir went out")
                predicted = True
                self._predicted[parent] += 1
                self._predicted[ino] += 1  # (its own creation, as the node made for it shows)
                self.remember(with_entry_change(parent_then, t, 1))
                self.names.setdefault(ino, set())
                self.leases.born_here(ino)
                told()
        try:
            made = await self.meta.namespace.mknod(
                parent, name, mode, uid=uid, gid=gid, rdev=rdev, target=target, planned=planned,
                on_sent=on_sent, parent_known=known.inode if known is not None else None, xattrs=xattrs)
        except BaseException:
            if predicted:
                self.forget(parent)
                self.names.pop(planned[0], None)
                self.leases.forget_removed(planned[0])
            raise
        finally:
            if predicted:
                for d in (parent, planned[0]):
                    self._predicted[d] -= 1
                    if not self._predicted[d]:
                        del self._predicted[d]
        if predicted and made.parent is not None and self.feed.active and self.feed.epoch == epoch:
            # Our version check on the parent passed, and nobody else changes the
            # entries of a leased directory: both are exact as the reply leaves them
            # (the feed did not drop meanwhile), whatever our own later transactions
            # in flight made the feed report.
            made = dataclasses.replace(made, parent=dataclasses.replace(made.parent, exact=True),
                                       node=dataclasses.replace(made.node, exact=True))
        if made.parent is not None:
            self.remember(made.parent)
        elif made.t is not None:
            self.changed_dir(parent, made.t, exact=made.exact)
        node = self.remember(made.node)
        if made.exact:
            self.trust(parent, name, node.ino, stat.S_IFMT(node.rec.mode))
        self.hint(parent, name, node.ino)
        return node

    async def inherit(self, parent: int, mode: int, umask: int) -> tuple[int, dict[bytes, bytes]]:
        """A new inode's mode and ACLs: from its parent's default ACL, else the umask's."""
        node, _ = await self.attrs(parent)
        try:
            default = await self.meta.xattrs.get(parent, acl.DEFAULT) if node.rec.xattrs else None
        except DfsError as e:
            if e.errno != errno.ENODATA:
                raise
            default = None
        if default is None:
            return mode & ~umask, {}
        mode, access = acl.inherit(default, mode)
        made = {acl.ACCESS: access} if access is not None else {}
        if stat.S_ISDIR(mode):
            made[acl.DEFAULT] = default
        return mode, made

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        self.capacity.admit()
        self.forget(new_parent)
        self.forget(ino)
        node = await self.meta.namespace.link(ino, new_parent, new_name)
        self.hint(new_parent, new_name, ino)
        return node

    async def unlink(self, parent: int, name: bytes) -> int:
        async with self._may_hold():
            removed = await self.meta.namespace.unlink(parent, name, self.hints.get((parent, name)))
        self.hint(parent, name, None)
        self.forget(removed.ino)
        self.changed_dir(parent, removed.t)
        return removed.ino

    async def rmdir(self, parent: int, name: bytes) -> int:
        guess = self.hints.get((parent, name))
        self.hint(parent, name, None)
        removed = await self.meta.namespace.rmdir(parent, name, guess)
        self.forget(removed.ino)
        if removed.parent is not None:
            self.remember(removed.parent)
        return removed.ino

    async def remove_many(self, items: list[tuple[str, int, bytes]]) -> list[tuple[str, int, bytes]]:
        """Several removals in one transaction (Namespace.remove_many); returns those left."""
        async with self._may_hold():
            batch = await self.meta.namespace.remove_many(items, [self.hints.get((p, n)) for _, p, n in items])
        for _, parent, name in batch.done:
            self.forget(self.hints.pop((parent, name), None))
        for _, parent, _ in batch.done:
            p = batch.parents.get(parent)
            if p is not None:
                self.remember(p)
            else:
                self.changed_dir(parent, batch.t, exact=batch.exact)
        return batch.left

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        # What we know of the parents and of what moves is dropped before and
        # after (a failed attempt may have committed after all).
        moving = (old_parent, new_parent, self.hints.get((old_parent, old_name)),
                  self.hints.get((new_parent, new_name)))
        for ino in moving:
            self.forget(ino)
        self.hint(old_parent, old_name, None)
        self.hint(new_parent, new_name, None)
        try:
            async with self._may_hold():
                await self.meta.namespace.rename(old_parent, old_name, new_parent, new_name, flags)
        finally:
            for ino in moving:
                self.forget(ino)

    async def setattr(self, ino: int, **fields: int | None) -> Inode:
        return self.remember(await self.meta.inodes.setattr(ino, **fields))

    async def setattr_many(self, changes: list[tuple[Inode, dict[str, int]]]) -> list[Inode]:
        return [self.remember(n) for n in await self.meta.inodes.setattr_many(changes)]

    async def set_atime(self, ino: int, t: int, known: Inode | None = None) -> Inode:
        return self.remember(await self.meta.inodes.set_atime(ino, t, known))

    async def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self.capacity.admit()
        await self._xattr_change(ino, self.meta.xattrs.set(ino, name, value, flags))

    async def removexattr(self, ino: int, name: bytes) -> None:
        await self._xattr_change(ino, self.meta.xattrs.remove(ino, name))

    async def _xattr_change(self, ino: int, change: Awaitable[None]) -> None:
        self.forget(ino)  # its xattr count changes (see has_no_xattrs)
        try:
            await change
        finally:
            self.forget(ino)

    def has_no_xattrs(self, ino: int) -> bool:
        """Known to have no xattrs (ls -l asks for two of them per file)."""
        seen = self.known(ino)
        return seen is not None and seen.inode.rec.xattrs == 0

    async def without_xattrs(self, ino: int) -> bool:
        """Whether the inode has no xattrs: known, or read now (one round trip, and the
        inode is then known for the next question: ls -l asks two per file)."""
        node, _ = await self.attrs(ino)
        return node.rec.xattrs == 0

    async def release_orphan(self, ino: int) -> None:
        """The last handle of a held inode closed: let it go, now or when the
        commits in flight that may be holding it are done (see _may_hold)."""
        if not self._holding:
            await self._let_go(ino)

    async def _let_go(self, ino: int) -> None:
        self.held.discard(ino)
        await self.meta.namespace.release_orphan(ino)

    @contextlib.asynccontextmanager
    async def _may_hold(self) -> AsyncIterator[None]:
        """Around a commit that may hold inodes: let go of those closed meanwhile.

        A removal decides to hold an inode (it was open) before its transaction
        commits, and that transaction creates the holder znode; the file's last
        close may run in between. Releasing then would delete a holder that does
        not exist yet, and the one the commit makes would stay, with the inode
        and its blocks, until the mount's session ends. So a close that finds
        such a commit in flight leaves the release to it.
        """
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            for ino in [i for i in self.held if not self.is_open_file(i)]:
                await self._let_go(ino)

    async def list_dir(self, ino: int, *, with_attrs: bool = False, pin: bool = False) -> Listing:
        """The directory's inode and its snapshot (Namespace.list_dir): 0 to 3 round trips.
        pin: keep the entries' inodes known until `unpin` of them (an open listing)."""
        cached = self._cached_listing(ino, with_attrs)
        if cached is not None:
            if pin:
                self.pin([node.ino for _, _, node in cached[1] if node is not None])
            return cached
        hints = self.hints
        listing = await self.meta.namespace.list_dir(ino, with_attrs=with_attrs,
                                                     guess=lambda name: hints.get((ino, name)))
        if pin:  # before they are remembered: a big listing must not push out its own start
            self.pin([e.node.ino for e in listing.entries if e.node is not None])
        this = self.remember(listing.this)
        current = self.feed.replay_names(listing.mark, ino, listing.names)
        if current is not None:
            if len(self.names) >= MAX_DIRS:
                self.names.clear()
            self.names[ino] = current
        out = []
        for i, e in enumerate(listing.entries):
            await breathe(i)  # (a huge directory: see dfs.meta.namespace)
            self.hint(ino, e.name, e.entry.ino)
            if e.exact:
                self.trust(ino, e.name, e.entry.ino, e.entry.mode)
            out.append((e.name, e.entry, self.remember(e.node) if e.node is not None else None))
        return this, out

    def _cached_listing(self, ino: int, with_attrs: bool) -> Listing | None:
        """list_dir's answer from what the feed keeps exact, or None if anything is not known."""
        if not self.feed.active:
            return None
        names = self.names.get(ino)
        this = self.known(ino)
        if names is None or this is None or not this.exact:
            return None
        out = []
        for name in sorted(names):
            ent = self.dirents.get((ino, name))
            if ent is None:
                return None
            node = None
            if with_attrs:
                seen = self.known(ent[0])
                if seen is None or not seen.exact:
                    return None
                node = seen.inode
            out.append((name, DirEntry(ent[0], ent[1]), node))
        # what this mount is creating there and has not landed yet (an asynchronous mkdir
        # returns before it does): a listing read from ZooKeeper would have it too
        pending = [(n, made) for (p, n), made in self.creating.items() if p == ino and n not in names]
        if pending:
            for n, made in pending:
                seen = self.known(made.ino)
                out.append((n, DirEntry(made.ino, stat.S_IFMT(made.rec.mode)),
                            (seen.inode if seen is not None else made) if with_attrs else None))
            out.sort(key=lambda e: e[0])
        self.stats["cached_listings"] += 1
        return this.inode, out

    # ------------------------------------------------------------------ file calls (dfs.client.files)

    async def open_file(self, ino: int) -> tuple[Inode, dict[int, BlockRef], bytes | None]:
        node, refs, inline = await self.meta.blockmap.open_file(ino)
        return self.remember(node), refs, inline

    async def commit_blocks(self, ino: int, updates: dict[int, BlockRef | None], **kw: Any) -> Inode:
        return self.remember(await self.meta.blockmap.commit_blocks(ino, updates, **kw))
