"""File locks held in ZooKeeper, so that they hold across mounts (flock, POSIX, OFD).

Layout: `locks/<ino>` (persistent) has one ephemeral child per lock holder,
named `<mount-id>-<kind>-<owner>`: kind `p` for POSIX record locks (fcntl
F_SETLK/F_SETLKW, lockf; OFD locks too: the kernel gives those the open file
as their owner), `f` for flock; owner is the kernel's 64-bit lock owner id,
unique within one mount. Its `LockHolder` payload lists the holder's ranges
and their types, and the pid that took them (F_GETLK reports it). The znode is
ephemeral, so a mount's death releases its locks with its ZooKeeper session,
and the deletion wakes whoever watches it.

Every change of an inode's locks is one transaction that also writes
`locks/<ino>` with the version it read (an optimistic lock on the inode's
whole lock table): two acquirers that read the same table cannot both commit,
the loser re-reads and retries. Only ephemerals vanishing with a session
change the table without that write, and they only ever free ranges. The last
holder to go deletes `locks/<ino>` in the same transaction (version-checked,
so nobody joined meanwhile); a mount that dies leaves it empty for the next one.

Semantics, as Linux: POSIX and flock locks never conflict with each other. A
holder's new POSIX lock over a range replaces what it held there (splitting
or merging its ranges; F_UNLCK of a sub-range splits); another holder's
overlapping range conflicts if either is a write lock. flock is a lock over
the whole file, shared (a read lock) or exclusive (a write lock); converting
it drops the old lock first when it has to wait (so two holders upgrading do
not deadlock). A conflict refuses (EAGAIN) or, for a waiting request, watches
the conflicting holder's znode and tries again when it changes or goes.
There is no deadlock detection (no EDEADLK) across mounts.
"""

import errno
import fcntl
import json
from dataclasses import dataclass, field

import trio

from dfs.errors import DfsError
from dfs.paths import FsPaths
from dfs.zk import NoNodeError, Txn, ZkClient
from dfs.zk.retry import retrying

EOF = 1 << 63  # the end of a range "up to the end of the file, however large it grows"
POSIX, FLOCK = "p", "f"
MAX_ATTEMPTS = 1000  # each conflict means another holder's change landed: progress


@dataclass
class LockHolder:
    """The locks of one holder on one inode: ranges [start, end) with F_RDLCK or F_WRLCK."""

    REVISION = 1
    ranges: list[tuple[int, int, int]] = field(default_factory=list)
    pid: int = 0

    def encode(self) -> bytes:
        return json.dumps({"revision": self.REVISION, "ranges": self.ranges, "pid": self.pid},
                          separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> "LockHolder":
        d = json.loads(data)
        return cls([tuple(r) for r in d.get("ranges", [])], d.get("pid", 0))


def span(start: int, length: int) -> tuple[int, int]:
    """[start, end) of a kernel lock request (length 0: to the end of the file)."""
    return start, EOF if length == 0 else start + length


def replace_range(ranges: list[tuple[int, int, int]], start: int, end: int,
                  lock_type: int) -> list[tuple[int, int, int]]:
    """A holder's ranges after it locks [start, end) with lock_type (F_UNLCK: unlocks it)."""
    out = []
    for s, e, t in ranges:
        if e <= start or s >= end:
            out.append((s, e, t))
            continue
        if s < start:
            out.append((s, start, t))
        if e > end:
            out.append((end, e, t))
    if lock_type != fcntl.F_UNLCK:
        out.append((start, end, lock_type))
    out.sort()
    merged: list[tuple[int, int, int]] = []
    for s, e, t in out:  # adjacent or overlapping ranges of one type become one
        if merged and merged[-1][2] == t and merged[-1][1] >= s:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e), t)
        else:
            merged.append((s, e, t))
    return merged


def conflicts(held: tuple[int, int, int], start: int, end: int, lock_type: int) -> bool:
    s, e, t = held
    return s < end and start < e and fcntl.F_WRLCK in (t, lock_type)


@dataclass
class Table:
    """An inode's lock table as read: `version` of locks/<ino> (None: no table)."""

    version: int | None
    holders: dict[str, tuple[LockHolder, int]]  # name -> (holder, znode version)


@dataclass
class Conflict:
    """The first lock of another holder that stands in the way."""

    name: str
    znode_version: int
    range: tuple[int, int, int]
    pid: int


class LockTable:
    """The locks of one filesystem, as one mount takes and drops them.

    Args:
      zk: the mount's session (its ephemerals are its locks).
      paths: the filesystem's znodes.
      mount_id: names this mount's holders.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, mount_id: str):
        self.zk = zk
        self.paths = paths
        self.mount_id = mount_id

    def holder_name(self, kind: str, owner: int) -> str:
        return f"{self.mount_id}-{kind}-{owner:x}"

    async def read(self, ino: int) -> Table:
        got = await self.zk.read_many([("get", self.paths.lock_dir(ino)),
                                       ("children", self.paths.lock_dir(ino))])
        if got[0] is None or got[1] is None:
            return Table(None, {})
        names = got[1]
        datas = await self.zk.get_many([self.paths.lock_holder(ino, n) for n in names])
        # a holder that vanished since the listing went with its session: it frees only
        holders = {n: (LockHolder.decode(d[0]), d[1].version) for n, d in zip(names, datas) if d is not None}
        return Table(got[0][1].version, holders)

    @staticmethod
    def conflict(table: Table, name: str, kind: str, start: int, end: int,
                 lock_type: int) -> Conflict | None:
        if lock_type == fcntl.F_UNLCK:
            return None
        for other, (holder, version) in sorted(table.holders.items()):
            if other == name or other.split("-")[1] != kind:
                continue
            for r in holder.ranges:
                if conflicts(r, start, end, lock_type):
                    return Conflict(other, version, r, holder.pid)
        return None

    async def test(self, ino: int, kind: str, owner: int, start: int, end: int,
                   lock_type: int) -> Conflict | None:
        """The lock of another holder that a lock of this owner would conflict with (F_GETLK)."""
        table = await self.read(ino)
        return self.conflict(table, self.holder_name(kind, owner), kind, start, end, lock_type)

    async def lock(self, ino: int, kind: str, owner: int, start: int, end: int, lock_type: int, *,
                   wait: bool, pid: int = 0) -> None:
        """Lock (or with F_UNLCK unlock) [start, end) for this owner.

        Raises DfsError(EAGAIN) on a conflict unless `wait`; with `wait`, returns
        once granted (cancel the caller to give up). A flock conversion that has
        to wait drops the lock held first, as Linux does.
        """
        name = self.holder_name(kind, owner)
        while True:
            conflict = await retrying(lambda: self._attempt(ino, name, kind, start, end, lock_type, pid),
                                      attempts=MAX_ATTEMPTS, what=f"lock inode {ino}")
            if conflict is None:
                return
            if not wait:
                raise DfsError(errno.EAGAIN, f"inode {ino} is locked by {conflict.name}")
            if kind == FLOCK:
                await retrying(lambda: self._attempt(ino, name, kind, 0, EOF, fcntl.F_UNLCK, pid),
                               attempts=MAX_ATTEMPTS, what=f"unlock inode {ino}")
            await self._wait_for(ino, conflict)

    async def _attempt(self, ino: int, name: str, kind: str, start: int, end: int, lock_type: int,
                       pid: int) -> Conflict | None:
        """One read-check-commit; a conflicting commit (another change landed) raises for a retry."""
        table = await self.read(ino)
        conflict = self.conflict(table, name, kind, start, end, lock_type)
        if conflict is not None:
            return conflict
        mine = table.holders.get(name)
        ranges = replace_range(mine[0].ranges if mine else [], start, end, lock_type)
        if mine is not None and ranges == mine[0].ranges:
            return None
        if mine is None and not ranges:
            return None
        table_path, path = self.paths.lock_dir(ino), self.paths.lock_holder(ino, name)
        value = LockHolder(ranges, pid or (mine[0].pid if mine else 0)).encode()
        txn = Txn()
        if table.version is None:
            txn.create(table_path).create(path, value, ephemeral=True)
        elif not ranges and set(table.holders) == {name}:
            txn.delete(path).delete(table_path, table.version)
        else:
            txn.set(table_path, b"", table.version)
            if not ranges:
                txn.delete(path)
            elif mine is None:
                txn.create(path, value, ephemeral=True)
            else:
                txn.set(path, value)
        await self.zk.commit(txn)
        return None

    async def _wait_for(self, ino: int, conflict: Conflict) -> None:
        """Until the conflicting holder's znode changes or goes (or the connection drops)."""
        changed = trio.Event()
        try:
            _, st = await self.zk.get(self.paths.lock_holder(ino, conflict.name),
                                      watch=lambda event: changed.set())
        except NoNodeError:
            return
        if st.version == conflict.znode_version:
            await changed.wait()
