"""The change feed: ZooKeeper tells this client, in order, about every namespace change.

A mount asks the same things again and again: does this name exist, what
inode does it name, what are its attributes, what is in this directory. Each
answer from ZooKeeper is a round trip. The client view (dfs.client.view)
answers them locally and stays exact because the client holds persistent
recursive watches (ZooKeeper >= 3.6 `addWatch`) on `dirs/` and `inodes/`, so
ZooKeeper tells it about every entry created or removed and every inode or
directory changed, by anyone. This module is that feed: the subscription, the
event log, and the marks that tell whether a read or a commit raced with
anyone. What is known lives in the view (its `FeedListener`):
- the complete set of entry names of a directory, for negative lookups and
  listings. Exact by construction: a directory created while the feed runs
  starts empty (its `dirs/<d>` creation is in the feed before any of its
  entries), and a listing read at sequence s0 is brought up to date by
  replaying the feed's events since s0 (`replay_names`; adding or removing a
  name is idempotent, so replaying events the read already saw changes nothing).
- the inode and type an entry names, and exact inodes (`ClientView.known`).

Race rules (the feed is processed by the ZooKeeper reader as it arrives, the
caller's code later):
- A read issued at mark s0 is installed only if no event touched what it read
  since s0 (`clean`), and only if the feed did not drop meanwhile (`epoch`).
- Our own transactions: their paths are in `own` while in flight, so their own
  events do not invalidate what we are about to install; `settle` then counts
  the events per path since the mark, and anything beyond our own operations
  (someone else's change) invalidates the path.
- When the feed drops (connection loss), everything is forgotten and nothing
  is installed until it is back (`run`).
"""

import collections
import logging
from typing import Any, Protocol

import trio

from dfs.errors import DfsError, ZkUnavailable
from dfs.names import unescape
from dfs.paths import FsPaths, child
from dfs.zk import NoNodeError, ZkClient

log = logging.getLogger(__name__)

CREATED, DELETED, CHANGED = 1, 2, 3
LOG_SIZE = 8192  # events kept for `clean` / `settle` / listing replays

Mark = tuple[int, int]  # (epoch, sequence number)


class FeedListener(Protocol):
    """Who keeps what the feed makes exact (dfs.client.view.ClientView)."""

    def names_event(self, kind: int, dino: int, name: bytes | None) -> None:
        """An entry `name` of directory dino (None: `dirs/<dino>` itself) was created or deleted."""

    def recalled(self, dino: int) -> None:
        """Someone waits for this client to let go of directory dino's lease (dfs.meta.leases)."""

    def forget_entry(self, dino: int, name: bytes, foreign: bool) -> None:
        """Drop what is known of an entry; `foreign`: someone else may have changed it."""

    def forget_inode(self, ino: int, foreign: bool) -> None:
        """Drop what is known of an inode (or a directory's times)."""

    def feed_lost(self) -> None:
        """The feed dropped: nothing it made exact is any more."""

    async def feed_on(self) -> None:
        """The feed is (again) subscribed, maybe on a new session."""


class Feed:
    """Args: paths: the filesystem's znodes; listener: told about every event."""

    def __init__(self, paths: FsPaths, listener: FeedListener):
        self.paths = paths
        self._dirs = child(paths.dirs, "")
        self._inodes = child(paths.inodes, "")
        self._recalls = child(paths.recalls, "")
        self.listener = listener
        self.active = False
        self.epoch = 0
        self.seq = 0
        self.log: collections.deque[tuple[int, str, int]] = collections.deque(maxlen=LOG_SIZE)
        self.own: collections.Counter[str] = collections.Counter()
        self._lost = trio.Event()
        self.stats = {"events": 0, "drops": 0}

    # -- the feed

    async def run(self, zk: ZkClient, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the feed subscribed (re-subscribe after every connection loss)."""
        started = False
        while True:
            await zk.wait_connected(float("inf"))
            self._lost = trio.Event()
            try:
                await zk.add_feed(self.paths.dirs, self._event)
                await zk.add_feed(self.paths.inodes, self._event)
                await self._add_recalls(zk)
            except ZkUnavailable as e:  # connection lost while subscribing: try again
                log.info("metadata feed: cannot subscribe yet (%s)", e)
                self._drop()
                await trio.sleep(0.1)
                continue
            except Exception as e:  # e.g. a ZooKeeper older than 3.6: no cache then
                log.warning("metadata feed unavailable (%r): caching only briefly", e)
                self._drop()
                task_status.started()
                return
            if not self._lost.is_set():
                self.epoch += 1
                self.active = True
                log.info("metadata feed on (epoch %d)", self.epoch)
                try:
                    await self.listener.feed_on()
                except DfsError as e:  # the next connection tries again
                    log.warning("metadata feed: %s", e)
            if not started:
                started = True
                task_status.started()
            await self._lost.wait()

    async def _add_recalls(self, zk: ZkClient) -> None:
        """The recalls of directory leases (dfs.meta.leases), and those made while unsubscribed."""
        await zk.add_feed(self.paths.recalls, self._event)  # (a path that need not exist)
        try:
            waiting = await zk.get_children(self.paths.recalls)
        except NoNodeError:  # a filesystem made before leases: nobody can hold one yet
            waiting = []
        for name in waiting:
            d = name.partition("-")[0]
            if d.isdigit():
                self.listener.recalled(int(d))

    def _drop(self) -> None:
        self.active = False
        self.epoch += 1
        self.stats["drops"] += 1
        self._lost.set()
        self.listener.feed_lost()

    def _event(self, kind: int | None, path: str | None) -> None:
        if kind is None or path is None:
            log.info("metadata feed lost (connection loss): cache dropped")
            self._drop()
            return
        if path.startswith(self._recalls):
            d = path[len(self._recalls):].partition("-")[0]
            if kind == CREATED and d.isdigit():
                self.listener.recalled(int(d))
            return
        self.seq += 1
        self.stats["events"] += 1
        self.log.append((self.seq, path, kind))
        about = self._about(path)
        if about is None:
            return
        in_dirs, num, name = about
        if in_dirs and kind != CHANGED:
            # an entry created or removed, or dirs/<d> itself (a directory created, empty, or deleted)
            self.listener.names_event(kind, num, name)
        if path not in self.own:
            self._forget(num, name, True)

    def _about(self, path: str) -> tuple[bool, int, bytes | None] | None:
        """(under dirs/, number, entry name) of `dirs/<d>/<name>`, `dirs/<d>` (name
        None: the directory's times) or `inodes/<shard>/<ino>`; None for others."""
        if path.startswith(self._dirs):
            d, _, esc = path[len(self._dirs):].partition("/")
            return (True, int(d), unescape(esc) if esc else None) if d.isdigit() else None
        if path.startswith(self._inodes):
            _, _, ino = path[len(self._inodes):].partition("/")
            return (False, int(ino), None) if ino.isdigit() else None
        return None

    def _forget(self, num: int, name: bytes | None, foreign: bool) -> None:
        """Drop what is known of an entry (or, name None, an inode or a directory's times);
        `foreign`: someone else may have changed it (tell the kernel)."""
        if name is None:
            self.listener.forget_inode(num, foreign)
        else:
            self.listener.forget_entry(num, name, foreign)

    # -- marks and checks

    def mark(self) -> Mark | None:
        """Taken before a read or a transaction; None while the feed is off."""
        return (self.epoch, self.seq) if self.active else None

    def _since(self, mark: Mark) -> list[tuple[int, str, int]] | None:
        """The events after `mark`, or None if they are not all known any more."""
        epoch, s0 = mark
        if epoch != self.epoch or not self.active:
            return None
        if s0 == self.seq:
            return []
        if not self.log or self.log[0][0] > s0 + 1:
            return None
        out = []
        for ev in reversed(self.log):
            if ev[0] <= s0:
                break
            out.append(ev)
        out.reverse()
        return out

    def clean(self, mark: Mark | None, *paths: str) -> bool:
        """Did nothing touch these paths since `mark` (and is the feed still the same)?"""
        if mark is None:
            return False
        events = self._since(mark)
        if events is None:
            return False
        if not events:
            return True
        touched = {p for _, p, _ in events}
        return not any(p in touched for p in paths)

    def replay_names(self, mark: Mark | None, dino: int, names: list[bytes]) -> set[bytes] | None:
        """A listing of directory dino read after `mark`, brought up to date (None: unusable)."""
        if mark is None:
            return None
        events = self._since(mark)
        if events is None:
            return None
        base = self.paths.dir(dino)
        prefix = child(base, "")
        current = set(names)
        for _, path, kind in events:
            if path == base:
                return None  # the directory itself was created/removed meanwhile: skip
            if path.startswith(prefix):
                name = unescape(path[len(prefix):])
                if kind == CREATED:
                    current.add(name)
                elif kind == DELETED:
                    current.discard(name)
        return current

    def begin(self, paths: list[str]) -> Mark | None:
        """Our transaction writing these paths is about to be sent."""
        for p in paths:
            self.own[p] += 1
        return self.mark()

    def settle(self, mark: Mark | None, paths: list[str], applied: bool) -> bool:
        """Our transaction is done; returns whether its results may be installed.

        Every path that saw more events since `mark` than our own operations on
        it (someone else changed it meanwhile) is invalidated.
        """
        for p in paths:
            self.own[p] -= 1
            if self.own[p] <= 0:
                del self.own[p]
        events = self._since(mark) if mark is not None else None
        if events is None or not applied:
            for about in filter(None, map(self._about, set(paths))):
                self._forget(about[1], about[2], True)
            return False
        seen = collections.Counter(p for _, p, _ in events)
        mine = collections.Counter(paths)
        ok = True
        for p in set(paths):
            if seen[p] > mine[p]:
                ok = False
            # What we wrote is stale in the cache unless the caller installs it
            # again; a directory's times (dirs/<d>) are kept current in place.
            about = self._about(p)
            if about is not None and (seen[p] > mine[p] or not (about[0] and about[2] is None)):
                self._forget(about[1], about[2], seen[p] > mine[p])
        return ok
