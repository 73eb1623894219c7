"""The session every namespace change goes through: ZooKeeper, paths, config, the commit.

`MetaStore.commit(txn)` commits one transaction and, when a client view is
attached as the `CommitHook`, asks it whether the transaction's results may be
taken as exact (nobody else wrote what it wrote meanwhile). Reads ask the hook
the same about what they read (`mark` before, `clean` after). Without a hook
(gc, fsck, tests) nothing is ever exact and nothing is cached: the namespace
layer knows no cache.
"""

import time
from typing import Any, Awaitable, Callable, Protocol, TypeVar

from dfs.config import FsConfig
from dfs.meta.leases import Leases
from dfs.paths import FsPaths
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError, Txn, ZkClient
from dfs.zk.retry import retrying

T = TypeVar("T")
MAX_ATTEMPTS = 100


class Conflict(Exception):
    """What an attempt read changed under it (e.g. a dirent's inode vanished): read again."""


CONFLICTS = (BadVersionError, NoNodeError, NodeExistsError, NotEmptyError, Conflict)


def now_ns() -> int:
    return time.time_ns()


class CommitHook(Protocol):
    """What a client cache is told of this client's reads and commits (dfs.client.feed.Feed).

    A mark is taken before a read or a commit; `clean` says whether nothing
    touched the read paths since, `settle` whether the commit's writes were
    the only ones to its paths since (then its results are exact).
    """

    def mark(self) -> Any: ...

    def clean(self, mark: Any, *paths: str) -> bool: ...

    def begin(self, paths: list[str]) -> Any: ...

    def settle(self, mark: Any, paths: list[str], applied: bool) -> bool: ...


class MetaStore:
    """Args: zk: the session; paths: the filesystem's znodes; config: its settings;
    hook: the client view to tell about reads and commits (None: gc, fsck, tests);
    leases: the directory leases every commit is fenced by (dfs.meta.leases;
    None: a plain one that reads each lease it needs)."""

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, hook: CommitHook | None = None,
                 leases: Leases | None = None):
        self.zk = zk
        self.paths = paths
        self.config = config
        self.hook = hook
        self.leases = leases or Leases(zk, paths)
        self.stats = {"retries": 0}

    def mark(self) -> Any:
        """Taken before a read whose exactness `clean` tells afterwards."""
        return None if self.hook is None else self.hook.mark()

    def clean(self, mark: Any, *paths: str) -> bool:
        return self.hook is not None and self.hook.clean(mark, *paths)

    async def commit(self, txn: Txn, on_sent: Callable[[], None] | None = None) -> bool:
        """Commit txn, fenced by the leases of the directories it changes (may wait
        for a recall first); True if this client may take its results as exact.
        `on_sent` runs once the transaction is on its way (written before the
        commit first yields after it: a session's requests apply in order)."""
        leases = self.leases
        fenced = await leases.fence(txn)
        hook = self.hook
        paths = [args[0] for op, args in txn.ops if op != "check"]
        mark = hook.begin(paths) if hook is not None else None
        applied = False
        try:
            if on_sent is not None:
                on_sent()
            await self.zk.commit(txn)
            applied = True
        finally:
            ok = hook is not None and hook.settle(mark, paths, applied)
            leases.settle(fenced, applied)
        return ok

    async def retrying(self, attempt: Callable[[], Awaitable[T]], what: str) -> T:
        """Run a namespace change's idempotent `attempt()` until it does not
        conflict (at most MAX_ATTEMPTS times; dfs.zk.retry)."""
        return await retrying(attempt, attempts=MAX_ATTEMPTS, what=what, conflicts=CONFLICTS,
                              on_retry=self._count_retry)

    def _count_retry(self, _conflict: BaseException) -> None:
        self.stats["retries"] += 1

    async def children(self, path: str) -> list[str] | None:
        try:
            return await self.zk.get_children(path)
        except NoNodeError:
            return None

    async def ensure(self, path: str) -> None:
        try:
            await self.zk.create(path)
        except NodeExistsError:
            pass
