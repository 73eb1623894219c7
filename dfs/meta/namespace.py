"""Names: lookups, creates, links, removals, renames and listings, each one transaction.

Every change is one ZooKeeper transaction with version checks on everything it
read. A conflict (BadVersion, or NoNode/NodeExists/NotEmpty from a concurrent
change) makes the operation re-read and try again; the re-read decides which
POSIX error, if any, the caller gets. Each retried step is therefore idempotent.

Concurrency invariants:
- An inode znode's version guards every field of the inode (dfs.meta.inodes).
- A directory's `dirs/<ino>` znode has one child per entry; ZooKeeper refuses to
  delete it while it has children, which makes rmdir's emptiness check atomic.
- Directories record their parent (`InodeRecord.parent`): rename checks the
  version of every ancestor of the destination so that no concurrent rename can
  slip in a cycle.

What a client already knows comes in as arguments (`guess`: the inode a name
was last seen to name, which lets one multi-read fetch both; `parent_known`),
and what it may learn comes back in the results (`exact` flags from the
store's CommitHook). Nothing here keeps any of it.
"""

import contextlib
import dataclasses
import errno
import stat
from dataclasses import dataclass
from typing import Any, Callable

import trio

from dfs.errors import DfsError
from dfs.meta.blockmap import BlockMap
from dfs.meta.inodes import AttrReads, Inode, Inodes, check_parent, decode, with_entry_change
from dfs.meta.store import Conflict, MetaStore, now_ns
from dfs.meta.trash import to_trash, trash_on
from dfs.meta.xattrs import Xattrs
from dfs.names import NAME_MAX, check_name, unescape
from dfs.paths import ROOT_INO, FsPaths, child
from dfs.records import DirEntry, InodeRecord
from dfs.zk import NodeExistsError, NoNodeError, NotEmptyError, Txn
from dfs.zk.reads import Got, Read, Reads

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

Removal = tuple[str, int, bytes]  # ("unlink" | "rmdir", parent, name)

# Listing a huge directory is seconds of work on the event loop: let the session's
# pings (and everyone else) run every so many entries, or the session expires.
YIELD_EVERY = 1024


async def breathe(i: int) -> None:
    """In a loop over a listing's entries: let others run every YIELD_EVERY of them."""
    if i % YIELD_EVERY == YIELD_EVERY - 1:
        await trio.lowlevel.checkpoint()


@dataclass
class Found:
    """A lookup's answer: the inode, and the entry that named it (None for . and ..)."""

    node: Inode
    entry: DirEntry | None = None
    entry_exact: bool = False


@dataclass
class Made:
    """What a create changed: the new inode; the parent as the commit left it, when
    the create read it (mkdir), else the time of its entry change `t` (None: the
    create had landed already, its reply was lost)."""

    node: Inode
    parent: Inode | None
    t: int | None
    exact: bool


@dataclass
class Removed:
    """What a removal changed: the inode the name named, when; (rmdir) the parent after it."""

    ino: int
    t: int
    parent: Inode | None = None


@dataclass
class Batch:
    """What `remove_many` committed (`done`), left for one-by-one (`left`), and the
    parents whose inodes it read, as its transaction left them."""

    done: list[Removal]
    left: list[Removal]
    parents: dict[int, Inode]
    t: int
    exact: bool


@dataclass
class Listed:
    name: bytes
    entry: DirEntry
    exact: bool  # the entry (not its inode) was read with nothing racing it
    node: Inode | None = None


@dataclass
class Listing:
    """A directory's inode and its entries sorted by name; `mark`/`names`: the
    CommitHook's mark taken before the names were read, and those names."""

    this: Inode
    mark: Any
    names: list[bytes]
    entries: list[Listed]


# What deleting an inode needs besides it, read after it: its xattr names, its
# block groups, its group 0 (read speculatively)
Extras = tuple[list[str] | None, list[str] | None, tuple | None]


class VictimReads:
    """The reads of an inode about to lose a link: the inode, then its xattr names
    and (files) its block groups, with the first group read speculatively."""

    __slots__ = ("ino", "inode", "xattrs", "groups", "group0")

    def __init__(self, reads: Reads, paths: FsPaths, ino: int, *, files: bool = True,
                 inode: Read | None = None):
        self.ino = ino
        self.inode = inode or reads.get(paths.inode(ino))
        self.xattrs = reads.children(paths.xattr_dir(ino))
        self.groups = reads.children(paths.block_map(ino)) if files else None
        self.group0 = reads.get(paths.block_group(ino, 0)) if files else None

    def extras(self, got: Got) -> Extras:
        return (got[self.xattrs], got[self.groups] if self.groups else None,
                got[self.group0] if self.group0 else None)


class Namespace:
    """Args:
      store: the session and its commit.
      inodes, blockmap, xattrs: the parts an inode's removal touches.
      mount_id: identifies this client in `open/<ino>/<mount_id>`.
      is_open: tells whether this client still has an inode open; an unlinked
        inode that is open stays (nlink 0) until `release_orphan`.
    """

    def __init__(self, store: MetaStore, inodes: Inodes, blockmap: BlockMap, xattrs: Xattrs, *,
                 mount_id: str, is_open: Callable[[int], bool]):
        self.store = store
        self.zk = store.zk
        self.paths = store.paths
        self.inodes = inodes
        self.blockmap = blockmap
        self.xattrs = xattrs
        self.mount_id = mount_id
        self.is_open = is_open
        self._trash_made = False

    async def _dirent(self, parent: int, name: bytes) -> tuple[DirEntry, int] | None:
        try:
            data, st = await self.zk.get(self.paths.dirent(parent, name))
        except NoNodeError:
            return None
        return DirEntry.decode(data), st.version

    # ------------------------------------------------------------------ lookup

    async def lookup(self, parent: int, name: bytes, guess: int | None = None) -> Found:
        if len(name) > NAME_MAX:
            raise DfsError(errno.ENAMETOOLONG, "name too long")
        inodes = self.inodes
        if name == b".":
            return Found(await inodes.dir(parent))
        if name == b"..":
            p = await inodes.dir(parent)
            return Found(await inodes.getattr(p.rec.parent or ROOT_INO))
        store = self.store
        reads = Reads()
        entry = reads.get(self.paths.dirent(parent, name))
        parent_inode = reads.get(self.paths.inode(parent))
        guessed = AttrReads(reads, self.paths, guess) if guess is not None else None
        mark = store.mark()
        got = await reads.run(self.zk)
        if got[entry] is None:
            check_parent(parent, got[parent_inode])
            raise DfsError(errno.ENOENT, f"no entry {name!r}")
        dirent = DirEntry.decode(got[entry][0])
        entry_exact = store.clean(mark, entry.path)
        if guessed is not None and dirent.ino == guess and got[guessed.inode] is not None:
            # read after the dirent in the same multi-read: consistent with it
            node = guessed.node(got, store.clean(mark, entry.path, *guessed.paths))
            assert node is not None
            return Found(node, dirent, entry_exact)
        try:
            node = await inodes.getattr(dirent.ino)
        except DfsError:
            # dirent raced with a rename/unlink: read again once, consistently
            ent = await self._dirent(parent, name)
            if ent is None:
                raise DfsError(errno.ENOENT, f"no entry {name!r}") from None
            node = await inodes.getattr(ent[0].ino)
        return Found(node, dirent, entry_exact)

    # ------------------------------------------------------------------ create

    async def mknod(self, parent: int, name: bytes, mode: int, *, uid: int, gid: int,
                    rdev: int = 0, target: bytes = b"",
                    planned: tuple[int, InodeRecord, int] | None = None,
                    on_sent: Callable[[], None] | None = None,
                    parent_known: Inode | None = None, xattrs: dict[bytes, bytes] | None = None) -> Made:
        """Create a file, directory, symlink, fifo, socket or device node.

        Raises EEXIST, ENOENT (parent gone, or a symlink's empty target),
        ENOTDIR, ENAMETOOLONG (a name, or a symlink's target), EINVAL.
        `planned` (from an asynchronous create): the inode number, record and
        time to use; `on_sent` runs just before the first attempt's transaction
        is sent; `parent_known`: the parent as the caller knows it (a mkdir's
        first attempt then skips reading it: a stale one fails the version check; a
        file inherits its `dfs setrep` count from it, read if not given);
        `xattrs`: to create with it (inherited ACLs: never an inode without them).
        """
        if stat.S_ISLNK(mode) and not 0 < len(target) <= 4095:
            raise DfsError(errno.ENAMETOOLONG if target else errno.ENOENT, "bad symlink target")
        check_name(name)
        ino, rec, t = planned or await self.inodes.plan(mode, uid, gid, rdev, target)
        xattrs = xattrs or {}
        rec.xattrs = len(xattrs)
        kind = stat.S_IFMT(rec.mode)
        paths = self.paths
        inherit_from: Inode | None = None

        async def attempt() -> Made:
            nonlocal parent_known, on_sent, inherit_from
            p = None
            if kind == stat.S_IFDIR:
                known, parent_known = parent_known, None
                p = known if known is not None and known.rec.is_dir else await self.inodes.dir(parent)
                if p.rec.nlink == 0:
                    raise DfsError(errno.ENOENT, "parent directory was removed")
                rec.parent = parent
                rec.replicas = p.rec.replicas  # `dfs setrep`: new entries inherit it
            elif inherit_from is None:  # known (the caller's view), else read once
                inherit_from = parent_known or await self.inodes.getattr(parent)
                rec.replicas = inherit_from.rec.replicas
            txn = Txn()
            txn.create(paths.inode(ino), rec.encode())
            txn.create(paths.dirent(parent, name), DirEntry(ino, kind).encode())
            if kind == stat.S_IFDIR:
                txn.create(paths.dir(ino))
            if xattrs:
                txn.create(paths.xattr_dir(ino))
            for x, value in xattrs.items():
                txn.create(paths.xattr(ino, x), value)
            if p is not None:
                self.inodes.touch(txn, p, nlink_delta=1, t=t)
            else:
                txn.set(paths.dir(parent), str(t).encode())
            sent, on_sent = on_sent, None
            try:
                exact = await self.store.commit(txn, on_sent=sent)
            except (NodeExistsError, NoNodeError):
                existing = await self._dirent(parent, name)
                if existing is not None:
                    if existing[0].ino == ino:  # our own commit, whose reply was lost
                        return Made(await self.inodes.getattr(ino), None, None, False)
                    raise DfsError(errno.EEXIST, f"{name!r} exists") from None
                await self.inodes.dir(parent)  # ENOENT / ENOTDIR
                raise
            after = None
            if p is not None:
                # our version check passed: p was the parent's latest state
                after = dataclasses.replace(with_entry_change(p, t, 1), exact=exact)
            return Made(Inode(ino, rec, 0, exact, has_map=False), after, t, exact)

        return await self.store.retrying(attempt, "create")

    async def create_many(self, parent: int, names: list[bytes], mode: int, *, uid: int, gid: int
                          ) -> list[Inode]:
        """Empty regular files `names` in `parent`, in one transaction; their inodes, in order.

        One read of the parent (the files inherit its replica count) and one
        commit, not a round trip per file: what an untar of many small files,
        or a test that fills a directory, needs. If the transaction fails on a
        name that exists (or the parent went away), nothing of it applied and
        the files are created one by one instead, in order, stopping at the
        first failure (EEXIST, ENOENT, ...) with those before it created.
        """
        for name in names:
            check_name(name)
        if not names:
            return []
        planned = [await self.inodes.plan(stat.S_IFREG | stat.S_IMODE(mode), uid, gid)
                   for _ in names]
        paths = self.paths

        async def attempt() -> list[Inode] | None:
            replicas = (await self.inodes.getattr(parent)).rec.replicas
            txn = Txn()
            t = 0
            for name, (ino, rec, t) in zip(names, planned):
                rec.replicas = replicas
                txn.create(paths.inode(ino), rec.encode())
                txn.create(paths.dirent(parent, name), DirEntry(ino, stat.S_IFREG).encode())
            txn.set(paths.dir(parent), str(t).encode())
            try:
                exact = await self.store.commit(txn)
            except (NodeExistsError, NoNodeError):
                existing = await self._dirent(parent, names[0])
                if existing is not None and existing[0].ino == planned[0][0]:
                    exact = False  # applied: its reply was lost (a transaction is all or nothing)
                else:
                    return None
            return [Inode(ino, rec, 0, exact, has_map=False) for ino, rec, _ in planned]

        made = await self.store.retrying(attempt, "create")
        if made is not None:
            return made
        return [(await self.mknod(parent, name, stat.S_IFREG | stat.S_IMODE(mode), uid=uid, gid=gid,
                                  planned=plan)).node
                for name, plan in zip(names, planned)]

    async def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        check_name(new_name)
        paths = self.paths

        async def attempt() -> Inode:
            reads = Reads()
            inode = reads.get(paths.inode(ino))
            parent = AttrReads(reads, paths, new_parent)
            existing = reads.get(paths.dirent(new_parent, new_name))
            got = await reads.run(self.zk)
            if got[inode] is None:
                raise DfsError(errno.ENOENT, f"no inode {ino}")
            node = decode(ino, got[inode], None)
            if node.rec.is_dir:
                raise DfsError(errno.EPERM, "hard links to directories are not allowed")
            if node.rec.nlink == 0:
                raise DfsError(errno.ENOENT, "inode was removed")
            p = parent.as_dir(got)
            if p.rec.nlink == 0:
                raise DfsError(errno.ENOENT, "parent directory was removed")
            if got[existing] is not None:
                raise DfsError(errno.EEXIST, f"{new_name!r} exists")
            t = now_ns()
            rec = dataclasses.replace(node.rec, nlink=node.rec.nlink + 1, ctime_ns=t)
            txn = Txn()
            txn.create(paths.dirent(new_parent, new_name), DirEntry(ino, stat.S_IFMT(rec.mode)).encode())
            txn.set(paths.inode(ino), rec.encode(), node.version)
            self.inodes.touch(txn, p, t=t)
            await self.store.commit(txn)
            return Inode(ino, rec, node.version + 1)

        return await self.store.retrying(attempt, "link")

    # ------------------------------------------------------------------ remove

    async def drop_inode(self, txn: Txn, node: Inode, t: int, extras: Extras | None = None,
                         trash_as: tuple[int, bytes] | None = None) -> None:
        """Add to txn: one link of `node` goes away (and the inode with the last one).

        `extras`: what `VictimReads` read after the inode. `trash_as`: (parent,
        name) the link had, when the trash is on: a regular file's last link
        then puts it in the trash (dfs.meta.trash) instead of deleting it.
        """
        if node.rec.nlink > 1 and not node.rec.is_dir:
            rec = dataclasses.replace(node.rec, nlink=node.rec.nlink - 1, ctime_ns=t)
            txn.set(self.paths.inode(node.ino), rec.encode(), node.version)
            return
        if trash_as is not None and node.rec.is_reg:
            if not self._trash_made:  # (filesystems made before the trash have no trash/)
                await self.store.ensure(self.paths.trash)
                self._trash_made = True
            to_trash(txn, self.paths, node, trash_as, t)
            if self.is_open(node.ino):  # held too: a purge leaves it to release_orphan
                await self.store.ensure(self.paths.open_dir(node.ino))
                txn.create(self.paths.open_holder(node.ino, self.mount_id), ephemeral=True)
            return
        if not node.rec.is_dir and self.is_open(node.ino):
            # Unlinked while open here: keep it (nlink 0) until release_orphan
            # (a failed commit only leaves a harmless extra holder).
            rec = dataclasses.replace(node.rec, nlink=0, ctime_ns=t)
            txn.set(self.paths.inode(node.ino), rec.encode(), node.version)
            await self.store.ensure(self.paths.open_dir(node.ino))
            txn.create(self.paths.open_holder(node.ino, self.mount_id), ephemeral=True)
            return
        await self.delete_inode(txn, node, extras)

    async def delete_inode(self, txn: Txn, node: Inode, extras: Extras | None = None) -> None:
        """Add to txn: delete the inode, its xattrs and block map (blocks to gc/).

        The xattr names and block groups must have been read after `node`: every
        change to them also writes the inode, so the inode's version check makes
        the deletes of what we saw complete (unversioned deletes are safe).
        """
        ino = node.ino
        txn.delete(self.paths.inode(ino), node.version)
        if extras is None:
            xattrs, groups = await self.zk.children_many([self.paths.xattr_dir(ino), self.paths.block_map(ino)])
            extras = (xattrs, groups, None)
        self.xattrs.drop(txn, ino, extras[0])
        if node.rec.is_dir:
            txn.delete(self.paths.dir(ino))  # NotEmpty if an entry appeared: retried
            return
        await self.blockmap.drop(txn, ino, extras[1], extras[2])

    async def unlink(self, parent: int, name: bytes, guess: int | None = None) -> Removed:
        """Remove a non-directory entry."""
        check_name(name)
        paths = self.paths
        dirent_path = paths.dirent(parent, name)

        async def attempt() -> Removed:
            reads = Reads()
            entry = reads.get(dirent_path)
            parent_inode = reads.get(paths.inode(parent))
            config = reads.get(paths.config)
            victim = VictimReads(reads, paths, guess) if guess is not None else None
            got = await reads.run(self.zk)
            trash = (parent, name) if trash_on(got[config]) else None
            if got[entry] is None:
                check_parent(parent, got[parent_inode])
                raise DfsError(errno.ENOENT, f"no entry {name!r}")
            dirent, dver = DirEntry.decode(got[entry][0]), got[entry][1].version
            if stat.S_ISDIR(dirent.mode):
                raise DfsError(errno.EISDIR, f"{name!r} is a directory")
            if victim is None or dirent.ino != guess or got[victim.inode] is None:
                reads = Reads()
                victim = VictimReads(reads, paths, dirent.ino)
                got = await reads.run(self.zk)
            if got[victim.inode] is None:
                raise Conflict(f"inode {dirent.ino} of {name!r} vanished")
            node = decode(dirent.ino, got[victim.inode], None)
            if node.rec.is_dir:
                raise DfsError(errno.EISDIR, f"{name!r} is a directory")
            t = now_ns()
            txn = Txn()
            txn.delete(dirent_path, dver)
            txn.set(paths.dir(parent), str(t).encode())
            await self.drop_inode(txn, node, t, victim.extras(got), trash)
            await self.store.commit(txn)
            return Removed(node.ino, t)

        return await self.store.retrying(attempt, "unlink")

    async def remove_many(self, items: list[Removal], guesses: list[int | None]) -> Batch:
        """Several unlinks/rmdirs, in order, in one read trip and one transaction.

        Args:
          items: ("unlink" | "rmdir", parent, name), applied in this order (an
            rmdir may follow the removals that empty its directory).
          guesses: per item, the inode its name is believed to name.
        Items without a guess, or whose reads do not fit, are `left` for the
        caller to do one by one. Raises what the transaction raised if it
        failed (then nothing of it applied).
        """
        paths = self.paths
        reads = Reads()
        plan = []
        left: list[Removal] = []
        for item, guess in zip(items, guesses):
            op, parent, name = item
            if guess is None:
                left.append(item)
                continue
            entry = reads.get(paths.dirent(parent, name))
            victim = VictimReads(reads, paths, guess, files=op == "unlink")
            parent_inode = reads.get(paths.inode(parent)) if op == "rmdir" else None
            plan.append((item, guess, entry, victim, parent_inode))
        t = now_ns()
        if not plan:
            return Batch([], left, {}, t, False)
        config = reads.get(paths.config)
        got = await reads.run(self.zk)
        trash = trash_on(got[config])
        txn = Txn()
        state: dict[int, Inode] = {}  # inodes as this transaction leaves them so far
        done: list[Removal] = []
        for item, guess, entry, victim, parent_inode in plan:
            op, parent, name = item
            ent, inode_got = got[entry], got[victim.inode]
            if ent is None or inode_got is None or DirEntry.decode(ent[0]).ino != guess:
                left.append(item)
                continue
            node = state.get(guess) or decode(guess, inode_got, None)
            if node.rec.is_dir != (op == "rmdir") or parent_inode is not None and got[parent_inode] is None:
                left.append(item)
                continue
            txn.delete(paths.dirent(parent, name), ent[1].version)
            txn.set(paths.dir(parent), str(t).encode())
            if op == "unlink":
                await self.drop_inode(txn, node, t, victim.extras(got), (parent, name) if trash else None)
            else:
                p = state.get(parent) or decode(parent, got[parent_inode], None)
                rec = dataclasses.replace(p.rec, nlink=p.rec.nlink - 1)
                txn.set(paths.inode(parent), rec.encode(), p.version)
                state[parent] = Inode(parent, rec, p.version + 1)
                await self.delete_inode(txn, node, victim.extras(got))
            state.pop(guess, None)
            done.append(item)
        exact = await self.store.commit(txn) if done else False
        parents = {}
        for _, parent, _ in done:
            p = state.get(parent)
            if p is not None:
                # the parent as this transaction left it (its read plus our changes)
                rec = dataclasses.replace(p.rec, mtime_ns=t, ctime_ns=max(p.rec.ctime_ns, t))
                parents[parent] = Inode(parent, rec, p.version, exact)
        return Batch(done, left, parents, t, exact)

    async def rmdir(self, parent: int, name: bytes, guess: int | None = None) -> Removed:
        check_name(name)
        paths = self.paths
        dirent_path = paths.dirent(parent, name)

        def child_reads(reads: Reads, ino: int) -> tuple[AttrReads, Read]:
            return AttrReads(reads, paths, ino), reads.children(paths.xattr_dir(ino))

        async def attempt() -> Removed:
            nonlocal guess
            reads = Reads()
            parent_attrs = AttrReads(reads, paths, parent)
            entry = reads.get(dirent_path)
            guessed = child_reads(reads, guess) if guess is not None else None
            got = await reads.run(self.zk)
            p = parent_attrs.as_dir(got)
            if got[entry] is None:
                raise DfsError(errno.ENOENT, f"no entry {name!r}")
            dirent, dver = DirEntry.decode(got[entry][0]), got[entry][1].version
            if not stat.S_ISDIR(dirent.mode):
                raise DfsError(errno.ENOTDIR, f"{name!r} is not a directory")
            if guessed is not None and dirent.ino == guess and got[guessed[0].inode] is not None:
                attrs, xattrs = guessed  # the child, read in the same trip (after its dirent)
            else:
                reads = Reads()
                attrs, xattrs = child_reads(reads, dirent.ino)
                got = await reads.run(self.zk)
            guess = None
            node = attrs.node(got)
            if node is None:
                raise Conflict(f"inode {dirent.ino} of {name!r} vanished")
            if not node.rec.is_dir:
                raise DfsError(errno.ENOTDIR, f"{name!r} is not a directory")
            entries = attrs.entries(got)
            if entries is not None and entries.numChildren:
                raise DfsError(errno.ENOTEMPTY, f"{name!r} is not empty")
            t = now_ns()
            txn = Txn()
            txn.delete(dirent_path, dver)
            self.inodes.touch(txn, p, nlink_delta=-1, t=t)
            await self.delete_inode(txn, node, (got[xattrs], None, None))
            try:
                exact = await self.store.commit(txn)
            except NotEmptyError:
                raise DfsError(errno.ENOTEMPTY, f"{name!r} is not empty") from None
            after = dataclasses.replace(with_entry_change(p, t, -1), exact=exact)
            return Removed(node.ino, t, after)

        return await self.store.retrying(attempt, "rmdir")

    async def hold_again(self, inos: list[int]) -> None:
        """After a new ZooKeeper session: hold again the unlinked inodes this client
        still has open (their ephemeral holders went with the old session; the
        repair leader waits a round before releasing an inode nobody holds)."""
        for ino in inos:
            try:
                if (await self.inodes.getattr(ino)).rec.nlink:
                    continue
                await self.store.ensure(self.paths.open_dir(ino))
                await self.zk.create(self.paths.open_holder(ino, self.mount_id), ephemeral=True)
            except NodeExistsError:
                pass
            except DfsError as e:
                if e.errno != errno.ENOENT:  # ENOENT: released meanwhile, nothing to hold
                    raise

    async def release_orphan(self, ino: int) -> None:
        """This client closed an unlinked inode: drop it if no other client holds it."""
        try:
            await self.zk.delete(self.paths.open_holder(ino, self.mount_id))
        except NoNodeError:
            pass

        async def attempt() -> None:
            try:
                node = await self.inodes.getattr(ino)
            except DfsError:
                return
            if node.rec.nlink > 0:
                return
            holders = await self.store.children(self.paths.open_dir(ino))
            if holders:
                return
            if await self.zk.exists(self.paths.trash_entry(ino)):
                if holders is not None:
                    with contextlib.suppress(NoNodeError, NotEmptyError):
                        await self.zk.delete(self.paths.open_dir(ino))
                return  # in the trash: it keeps the inode (dfs.meta.trash)
            txn = Txn()
            await self.delete_inode(txn, node)
            if holders is not None:
                txn.delete(self.paths.open_dir(ino))
            await self.store.commit(txn)

        await self.store.retrying(attempt, "release")

    # ------------------------------------------------------------------ rename

    async def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0) -> None:
        """rename(2) / renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE, atomically."""
        check_name(old_name)
        check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise DfsError(errno.EINVAL, "bad rename flags")
        paths = self.paths
        touch = self.inodes.touch

        async def attempt() -> None:
            # Round trip 1: both parents and both entries.
            same_dir = new_parent == old_parent
            reads = Reads()
            old_attrs = AttrReads(reads, paths, old_parent)
            src_entry = reads.get(paths.dirent(old_parent, old_name))
            dst_entry = reads.get(paths.dirent(new_parent, new_name))
            new_attrs = None if same_dir else AttrReads(reads, paths, new_parent)
            got = await reads.run(self.zk)
            op = old_attrs.as_dir(got)
            np = op if new_attrs is None else new_attrs.as_dir(got)
            if got[src_entry] is None:
                raise DfsError(errno.ENOENT, f"no entry {old_name!r}")
            src_ent, src_ver = DirEntry.decode(got[src_entry][0]), got[src_entry][1].version
            if same_dir and old_name == new_name:
                return
            d = got[dst_entry]
            dst = (DirEntry.decode(d[0]), d[1].version) if d else None
            if dst is not None and dst[0].ino == src_ent.ino and not flags & RENAME_EXCHANGE:
                return  # two links to one inode: POSIX says do nothing
            if flags & RENAME_EXCHANGE and dst is None:
                raise DfsError(errno.ENOENT, f"no entry {new_name!r} to exchange with")
            if flags & RENAME_NOREPLACE and dst is not None:
                raise DfsError(errno.EEXIST, f"{new_name!r} exists")
            # Round trip 2: both inodes (and what dropping a replaced one needs).
            reads = Reads()
            src_attrs = AttrReads(reads, paths, src_ent.ino)
            dst_attrs = AttrReads(reads, paths, dst[0].ino) if dst is not None else None
            victim = (VictimReads(reads, paths, dst[0].ino, inode=dst_attrs.inode)
                      if dst_attrs is not None and not flags & RENAME_EXCHANGE else None)
            config = reads.get(paths.config) if victim is not None else None
            got = await reads.run(self.zk)
            src_node = src_attrs.node(got)
            dst_node = dst_attrs.node(got) if dst_attrs is not None else None
            if src_node is None or (dst is not None and dst_node is None):
                raise Conflict("an inode vanished under its entry")
            dst_dir_stat = dst_attrs.entries(got) if dst_attrs is not None else None
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
                txn.set(paths.dirent(old_parent, old_name),
                        DirEntry(dst_node.ino, stat.S_IFMT(dst_node.rec.mode)).encode(), src_ver)
                txn.set(paths.dirent(new_parent, new_name),
                        DirEntry(src_node.ino, stat.S_IFMT(src_node.rec.mode)).encode(), dst[1])
                delta = int(src_node.rec.is_dir) - int(dst_node.rec.is_dir)
                self._set_moved(txn, src_node, new_parent, t)
                self._set_moved(txn, dst_node, old_parent, t)
                if old_parent == new_parent:
                    touch(txn, op, t=t)
                else:
                    touch(txn, op, nlink_delta=-delta, t=t)
                    touch(txn, np, nlink_delta=delta, t=t)
                await self.store.commit(txn)
                return

            src_is_dir = src_node.rec.is_dir
            np_delta = int(src_is_dir)
            if dst is not None:
                assert dst_node is not None and victim is not None
                if dst_node.rec.is_dir:
                    if not src_is_dir:
                        raise DfsError(errno.EISDIR, f"{new_name!r} is a directory")
                    if dst_dir_stat is not None and dst_dir_stat.numChildren:
                        raise DfsError(errno.ENOTEMPTY, f"{new_name!r} is not empty")
                    np_delta -= 1
                elif src_is_dir:
                    raise DfsError(errno.ENOTDIR, f"{new_name!r} is not a directory")
                txn.set(paths.dirent(new_parent, new_name),
                        DirEntry(src_node.ino, stat.S_IFMT(src_node.rec.mode)).encode(), dst[1])
                trash = (new_parent, new_name) if config is not None and trash_on(got[config]) else None
                await self.drop_inode(txn, dst_node, t, victim.extras(got), trash)
            else:
                txn.create(paths.dirent(new_parent, new_name),
                           DirEntry(src_node.ino, stat.S_IFMT(src_node.rec.mode)).encode())
            txn.delete(paths.dirent(old_parent, old_name), src_ver)
            self._set_moved(txn, src_node, new_parent, t)
            if old_parent == new_parent:
                touch(txn, op, nlink_delta=np_delta - int(src_is_dir), t=t)
            else:
                touch(txn, op, nlink_delta=-int(src_is_dir), t=t)
                touch(txn, np, nlink_delta=np_delta, t=t)
            try:
                await self.store.commit(txn)
            except NotEmptyError:
                raise DfsError(errno.ENOTEMPTY, f"{new_name!r} is not empty") from None

        await self.store.retrying(attempt, "rename")

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
            node = await self.inodes.getattr(ino)
            txn.check(self.paths.inode(ino), node.version)
            ino = node.rec.parent or ROOT_INO
            seen += 1
            if seen > 100_000:
                raise DfsError(errno.ELOOP, "directory cycle")

    # ------------------------------------------------------------------ readdir

    async def list_dir(self, ino: int, *, with_attrs: bool = False,
                       guess: Callable[[bytes], int | None] = lambda name: None) -> Listing:
        """The directory's own inode and a snapshot of its entries sorted by name (1 to 3 round trips).

        Entries that vanish while we read are left out; the snapshot is what a
        directory handle pages through, so concurrent changes never make it skip
        or repeat an entry. `guess(name)`: the inode a name was last seen to
        name; with_attrs reads it together with the entry.
        """
        store = self.store
        paths = self.paths
        mark = store.mark()
        reads = Reads()
        attrs = AttrReads(reads, paths, ino)
        listing = reads.children(paths.dir(ino))
        got = await reads.run(self.zk)
        this = attrs.as_dir(got, store.clean(mark, *attrs.paths))
        children = got[listing]
        if children is None:
            raise DfsError(errno.ENOENT, f"directory {ino} was removed")
        children.sort()
        base = paths.dir(ino)
        names = [unescape(c) for c in children]
        out = Listing(this, mark, names, [])
        # Each dirent, and (with_attrs) the inode the guess says it names, in one
        # trip: read after its dirent, a guessed inode that matches is consistent
        # with it. Only entries without a good guess need another trip.
        mark = store.mark()
        reads = Reads()
        wanted = []
        for i, (c, name) in enumerate(zip(children, names)):
            await breathe(i)
            entry = reads.get(child(base, c))
            guessed = AttrReads(reads, paths, guess(name) or 0) if with_attrs else None
            wanted.append((name, entry, guessed))
        got = await reads.run(self.zk)
        missing: list[Listed] = []
        for i, (name, entry, guessed) in enumerate(wanted):
            await breathe(i)
            d = got[entry]
            if d is None:
                continue  # removed while we listed
            ent = DirEntry.decode(d[0])
            listed = Listed(name, ent, store.clean(mark, entry.path))
            out.entries.append(listed)
            if guessed is None:
                continue
            if guessed.ino == ent.ino and got[guessed.inode] is not None:
                listed.node = decode(ent.ino, got[guessed.inode],
                                     got[guessed.dir] if stat.S_ISDIR(ent.mode) else None,
                                     store.clean(mark, entry.path, *guessed.paths))
            else:
                missing.append(listed)
        if missing:
            mark = store.mark()
            reads = Reads()
            more = [(listed, reads.get(paths.inode(listed.entry.ino)),
                     reads.get(paths.dir(listed.entry.ino)) if stat.S_ISDIR(listed.entry.mode) else None)
                    for listed in missing]
            got = await reads.run(self.zk)
            for i, (listed, inode, times) in enumerate(more):
                await breathe(i)
                if got[inode] is not None:
                    e = listed.entry.ino
                    listed.node = decode(e, got[inode], got[times] if times is not None else None,
                                         store.clean(mark, paths.inode(e), paths.dir(e)))
        if with_attrs:
            out.entries = [listed for listed in out.entries if listed.node is not None]
        return out
