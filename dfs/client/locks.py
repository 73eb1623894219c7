"""The locks one mount holds, by open file: the kernel's lock requests on dfs.meta.locks.

POSIX says a process's record locks on a file go when it closes any
descriptor of that file, and flock and OFD locks when their open file
description is released. The kernel tells the filesystem so on `flush`, with
the owner of the POSIX locks to drop (our pyfuse3 patch passes it), and on
`release`, where whatever is still taken through that open file goes (flock
and OFD locks).

An unlock or a downgrade to a read lock first commits what this mount wrote
to the file (as NFS does), and the namespace changes it answered and has not
committed yet (`settle`: the removals and attribute changes queued in the
background), so that whoever takes the lock next, on any mount, sees them:
SQLite's rollback journal commits a transaction by deleting the journal, and
a journal still there for the next lock holder would be rolled back. A lock granted makes the mount read what others committed
before (mount.kernel's catch_up), not what it had cached.
"""

import fcntl
from typing import Awaitable, Callable

from dfs.client.files import FileData
from dfs.meta.locks import EOF, FLOCK, POSIX, LockTable, span


class MountLocks:
    """Args: table: the filesystem's locks, as this mount takes them; files: the open files."""

    def __init__(self, table: LockTable, files: FileData):
        self.table = table
        self.files = files
        self._taken: dict[int, tuple[int, set[tuple[str, int]]]] = {}  # fh -> (ino, {(kind, owner)})
        self.settle: Callable[[], Awaitable[None]] | None = None  # see the module (mount/main.py)

    async def _before(self, fh: int, ino: int, kind: str, owner: int, lock_type: int) -> None:
        if lock_type != fcntl.F_UNLCK:
            self._taken.setdefault(fh, (ino, set()))[1].add((kind, owner))
        if lock_type != fcntl.F_WRLCK:  # others may get in: let them see our writes
            await self.files.flush(ino)
            if self.settle is not None:
                await self.settle()

    async def getlk(self, ino: int, owner: int, lock_type: int, start: int,
                    length: int) -> tuple[int, int, int, int]:
        """(type, start, length, pid) of a lock in the way, or F_UNLCK and the range asked."""
        s, e = span(start, length)
        c = await self.table.test(ino, POSIX, owner, s, e, lock_type)
        if c is None:
            return fcntl.F_UNLCK, start, length, 0
        cs, ce, ct = c.range
        return ct, cs, 0 if ce == EOF else ce - cs, c.pid

    async def setlk(self, fh: int, ino: int, owner: int, lock_type: int, start: int, length: int, *,
                    wait: bool, pid: int) -> None:
        s, e = span(start, length)
        await self._before(fh, ino, POSIX, owner, lock_type)
        await self.table.lock(ino, POSIX, owner, s, e, lock_type, wait=wait, pid=pid)

    async def flock(self, fh: int, ino: int, owner: int, op: int) -> None:
        kind = op & ~fcntl.LOCK_NB
        lock_type = {fcntl.LOCK_SH: fcntl.F_RDLCK, fcntl.LOCK_EX: fcntl.F_WRLCK}.get(kind, fcntl.F_UNLCK)
        await self._before(fh, ino, FLOCK, owner, lock_type)
        await self.table.lock(ino, FLOCK, owner, 0, EOF, lock_type, wait=not op & fcntl.LOCK_NB)

    async def closed(self, ino: int, owner: int) -> None:
        """A descriptor of `ino` was closed by `owner`: its POSIX locks on it go,
        whichever open file of it took them (fcntl(2))."""
        took = [owners for i, owners in self._taken.values() if i == ino and (POSIX, owner) in owners]
        if took:
            if self.settle is not None:
                await self.settle()
            for owners in took:
                owners.discard((POSIX, owner))
            await self.table.lock(ino, POSIX, owner, 0, EOF, fcntl.F_UNLCK, wait=False)

    async def release(self, fh: int) -> None:
        """The open file `fh` is gone (its data flushed): drop every lock taken through it."""
        ino, owners = self._taken.pop(fh, (0, set()))
        if owners and self.settle is not None:
            await self.settle()
        for kind, owner in sorted(owners):
            await self.table.lock(ino, kind, owner, 0, EOF, fcntl.F_UNLCK, wait=False)
