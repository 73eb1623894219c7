"""Directory leases: while one mount holds a directory's lease, nobody else changes its names.

    leases/<d>          persistent, one per directory (made with it, or at first
                        use for directories older than leases); data: the
                        holder's writer record (dfs.meta.writers, "0000000042"),
                        or empty: free
    recalls/<d>-<who>   ephemeral: `who` waits for the holder to let go

The fence (`Leases.fence`, inside every `MetaStore.commit`): a transaction that
creates or deletes an entry of directory d, or deletes d, also checks
leases/<d> at a version at which it was free or held by the committer
(deleting d deletes its lease with it). So no other client can change the names
of a directory while its lease is held, and the holder, whose change feed told
it every change committed before its grant, knows them exactly: it may answer
an O_EXCL create in it at once and commit it in the background
(dfs.client.leases). A commit whose check fails (the lease changed hands since
the fence looked) is retried like every other conflict, and the fence then
reads the lease again.

A client that must change a directory someone else holds (the fence does this
before the transaction goes out):
- the holder's writer record is gone (its session ended: unmount, crash,
  expiry): it breaks the lease at once (sets it free, version-checked);
- else it creates recalls/<d>-<who>; the holder, told by its feed, lets its
  commits in d land and sets the lease free; the recaller waits for that (a
  data watch), at most RECALL_MAX seconds, and then breaks the lease anyway
  (a holder that answers nothing for that long: its own commits in d then fail
  their check and are retried as anyone's).
A mount killed by SIGKILL keeps its leases until its session expires (the
session timeout): that long, at most, is what a change in one of its
directories waits.
"""

import logging
import uuid
from dataclasses import dataclass
from typing import Callable

import trio

from dfs.paths import FsPaths
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, Txn, ZkClient

log = logging.getLogger(__name__)

FREE = b""
MAX_STATES = 200_000  # leases a client remembers (then it forgets those it does not hold)
RECALL_MAX = 30.0  # seconds a recall waits for a live holder before it breaks the lease
POLL = 1.0  # while waiting: how often to look again without a watch event (holder alive?)


@dataclass(frozen=True)
class Fenced:
    """What `fence` did to a transaction, for `settle`."""

    dirs: list[int]  # whose leases it checks or deletes
    born: list[int]  # directories it creates, with their leases
    holder: bytes  # the lease those start with


@dataclass(frozen=True)
class LeaseState:
    holder: bytes  # the holder's writer record, or FREE
    version: int  # of leases/<d>


class Leases:
    """Args:
      zk, paths: the filesystem.
      me: this client's writer record ("0000000042"), when it has one.
      birth: whether a directory this client creates starts leased to it.
      remember: keep what the fence read (a mount: its next change in the same
        directory then needs no read; a stale state only fails a check).
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, *, me: Callable[[], bytes | None] = lambda: None,
                 birth: Callable[[], bool] = lambda: False, remember: bool = False):
        self.zk = zk
        self.paths = paths
        self.me = me
        self.birth = birth
        self.states: dict[int, LeaseState] | None = {} if remember else None
        self.who = uuid.uuid4().hex[:12]  # names this client's recalls
        self.recalled_at: dict[int, float] = {}  # d -> when this client last had to recall it
        self._dirs = paths.dirs + "/"
        self._roots = False
        self.stats = {"recalls": 0, "breaks": 0, "recall_wait_s": 0.0, "grants": 0, "releases": 0}

    # ------------------------------------------------------------------ the fence

    def touched(self, txn: Txn) -> tuple[set[int], set[int], set[int]]:
        """(directories whose entries txn creates or deletes, directories it deletes,
        directories it creates)."""
        changed: set[int] = set()
        removed: set[int] = set()
        born: set[int] = set()
        prefix = self._dirs
        for op, args in txn.ops:
            if op != "create" and op != "delete":
                continue
            path = args[0]
            if not path.startswith(prefix):
                continue
            d, sep, _ = path[len(prefix):].partition("/")
            if not d.isdigit():
                continue
            if sep:
                changed.add(int(d))
            elif op == "create":
                born.add(int(d))
            else:
                removed.add(int(d))
        return changed - removed - born, removed, born

    async def fence(self, txn: Txn) -> Fenced | None:
        """Add the lease checks txn needs (see the module); may wait for a recall.
        Returns what it did, for `settle`; None: nothing to fence."""
        changed, removed, born = self.touched(txn)
        if not (changed or removed or born):
            return None
        me = self.me()
        holder = me if me and born and self.birth() else FREE
        if born:
            if not self._roots:
                await self._ensure_roots()
            for d in born:
                txn.create(self.paths.lease(d), holder)
        fenced = []
        for d in sorted(changed | removed):
            st = await self.state(d)
            if st is None:
                continue  # the directory is gone: the transaction fails on it anyway
            if st.holder and st.holder != me:
                st = await self.recall(d, st)
            if d in removed:
                txn.delete(self.paths.lease(d), st.version)
            else:
                txn.check(self.paths.lease(d), st.version)
            fenced.append(d)
        return Fenced(fenced, sorted(born), holder)

    def settle(self, fenced: Fenced | None, applied: bool) -> None:
        """After the fenced transaction: what it read may be stale if it failed."""
        if fenced is None or self.states is None:
            return
        dirs, born, holder = fenced.dirs, fenced.born, fenced.holder
        if not applied:
            for d in dirs:
                self.states.pop(d, None)
            return
        for d in dirs:
            st = self.states.get(d)
            if st is not None and st.version < 0:
                self.states.pop(d, None)
        for d in born:
            self.states[d] = LeaseState(holder, 0)

    def born_here(self, d: int) -> None:
        """A directory this client's transaction creates, now on its way: its lease
        is this client's from then on if `birth()` says so (the fence makes it so)."""
        me = self.me()
        if self.states is not None and me and self.birth():
            self._remember(d, LeaseState(me, 0))

    def forget_removed(self, d: int) -> None:
        if self.states is not None:
            self.states.pop(d, None)

    # ------------------------------------------------------------------ reading, granting, letting go

    async def _ensure_roots(self) -> None:
        """leases/ and recalls/ (a filesystem made before leases has neither)."""
        for path in (self.paths.leases, self.paths.recalls):
            try:
                await self.zk.create(path)
            except NodeExistsError:
                pass
        self._roots = True

    def _remember(self, d: int, st: LeaseState) -> LeaseState:
        states = self.states
        if states is not None:
            if len(states) >= MAX_STATES and d not in states:
                me = self.me()  # keep the ones held: forgetting those would lose them
                for x in [x for x, s in states.items() if s.holder != me]:
                    del states[x]
            states[d] = st
        return st

    async def read(self, d: int) -> LeaseState | None:
        """The lease as ZooKeeper has it now (made, free, if the directory has none yet);
        None if the directory is gone."""
        path = self.paths.lease(d)
        while True:
            try:
                data, zst = await self.zk.get(path)
                return self._remember(d, LeaseState(data, zst.version))
            except NoNodeError:
                pass
            try:  # (only for a directory that exists)
                await self.zk.commit(Txn().check(self.paths.dir(d), -1).create(path, FREE))
                return self._remember(d, LeaseState(FREE, 0))
            except NodeExistsError:
                continue  # made meanwhile: read it
            except NoNodeError:
                if self._roots or await self.zk.exists(self.paths.leases) is not None:
                    self._roots = True
                    if self.states is not None:
                        self.states.pop(d, None)
                    return None  # the directory is gone
                await self._ensure_roots()

    async def state(self, d: int) -> LeaseState | None:
        if self.states is not None:
            st = self.states.get(d)
            if st is not None:
                return st
        return await self.read(d)

    def held(self, d: int) -> bool:
        """Whether this client holds d's lease, as far as it knows (a lease broken
        behind its back fails its next fenced commit, which then reads again)."""
        me = self.me()
        st = self.states.get(d) if self.states is not None else None
        return bool(me) and st is not None and st.holder == me

    async def grant(self, d: int) -> bool:
        """Take d's lease if it is free; True if this client holds it now."""
        me = self.me()
        if not me:
            return False
        st = await self.state(d)
        if st is None:
            return False
        if st.holder == me:
            return True
        if st.holder:
            return False
        try:
            zst = await self.zk.set(self.paths.lease(d), me, st.version)
        except (BadVersionError, NoNodeError):
            if self.states is not None:
                self.states.pop(d, None)
            return False
        self.stats["grants"] += 1
        self._remember(d, LeaseState(me, zst.version))
        return True

    def held_dirs(self) -> list[int]:
        me = self.me()
        if not me or self.states is None:
            return []
        return [d for d, st in self.states.items() if st.holder == me]

    async def release(self, dirs: list[int], batch: int = 500) -> None:
        """Set free the leases of `dirs` this client holds, many per transaction (a
        lease someone broke meanwhile fails its batch: those go one by one)."""
        assert self.states is not None
        me = self.me()
        mine = [(d, st) for d in dirs if (st := self.states.get(d)) is not None and me and st.holder == me]
        for i in range(0, len(mine), batch):
            part = mine[i:i + batch]
            txn = Txn()
            for d, st in part:
                txn.set(self.paths.lease(d), FREE, st.version)
            try:
                await self.zk.commit(txn)
            except (BadVersionError, NoNodeError):
                for d, st in part:
                    try:
                        zst = await self.zk.set(self.paths.lease(d), FREE, st.version)
                        self._remember(d, LeaseState(FREE, zst.version))
                        self.stats["releases"] += 1
                    except (BadVersionError, NoNodeError):
                        self.states.pop(d, None)
                continue
            for d, st in part:
                self._remember(d, LeaseState(FREE, st.version + 1))
            self.stats["releases"] += len(part)

    # ------------------------------------------------------------------ someone else's lease

    async def _alive(self, holder: bytes) -> bool:
        try:
            seq = int(holder)
        except ValueError:
            return False  # not a writer record: nobody can let it go
        return await self.zk.exists(self.paths.writer(seq)) is not None

    async def recall(self, d: int, st: LeaseState) -> LeaseState:
        """Wait until d's lease is free (see the module); returns it free."""
        path = self.paths.lease(d)
        note = self.paths.recall(d, self.who)
        self.stats["recalls"] += 1
        if len(self.recalled_at) >= MAX_STATES:
            self.recalled_at.clear()  # (only a hint: the cool-down after a recall)
        self.recalled_at[d] = trio.current_time()
        t0 = trio.current_time()
        deadline = t0 + RECALL_MAX
        made = False
        try:
            while st.holder and st.holder != self.me():
                alive = await self._alive(st.holder)
                if not alive or trio.current_time() >= deadline:
                    if alive:
                        log.warning("directory %d: the mount holding its lease (writer %s) did not "
                                    "let go in %.0f s: lease broken", d, st.holder.decode(errors="replace"),
                                    RECALL_MAX)
                    try:
                        zst = await self.zk.set(path, FREE, st.version)
                        self.stats["breaks"] += 1
                        st = LeaseState(FREE, zst.version)
                        break
                    except BadVersionError:
                        pass  # it changed: look again
                    except NoNodeError:
                        return LeaseState(FREE, -1)  # the directory went: the commit fails on it
                elif not made:
                    try:
                        await self.zk.create(note, b"", ephemeral=True)
                    except NodeExistsError:
                        pass
                    made = True
                moved = trio.Event()
                try:
                    data, zst = await self.zk.get(path, watch=lambda _e: moved.set())
                    if (data, zst.version) == (st.holder, st.version):
                        with trio.move_on_after(POLL):
                            await moved.wait()
                        data, zst = await self.zk.get(path)
                except NoNodeError:
                    return LeaseState(FREE, -1)
                st = LeaseState(data, zst.version)
        finally:
            if made:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.zk.delete(note)
                    except Exception:  # (gone with the session, or ZooKeeper away: it is ephemeral)
                        pass
        self.stats["recall_wait_s"] += trio.current_time() - t0
        return self._remember(d, st)
