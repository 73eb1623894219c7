"""What one client knows of the namespace, kept exact by a ZooKeeper change feed.

A mount asks the same things again and again: does this name exist, what
inode does it name, what are its attributes, what is in this directory. Each
answer from ZooKeeper is a round trip. This cache answers them locally and
stays exact: the client holds persistent recursive watches (ZooKeeper >= 3.6
`addWatch`) on `dirs/` and `inodes/`, so ZooKeeper tells it, in order, about
every entry created or removed and every inode or directory changed, by anyone.

What it holds:
- `names[d]`: the complete set of entry names of directory d, for negative
  lookups and listings. Exact by construction: a directory created while the
  feed runs starts empty (its `dirs/<d>` creation is in the feed before any of
  its entries), and a listing read at sequence s0 is brought up to date by
  replaying the feed's events since s0 (adding or removing a name is
  idempotent, so replaying events the read already saw changes nothing).
- `dirents[(d, name)]`: the inode and type an entry names.
- exact inodes: `Meta.fresh` entries flagged exact (see `Meta.known`).

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
from typing import Callable

import trio

from dfs.errors import ZkUnavailable
from dfs.names import unescape

log = logging.getLogger(__name__)

CREATED, DELETED, CHANGED = 1, 2, 3
LOG_SIZE = 8192  # events kept for `clean` / `settle` / listing replays
MAX_DIRS = 100_000  # directories whose names are kept (then everything is dropped)
MAX_DIRENTS = 1_000_000  # entries whose inode is kept


class MetaCache:
    """Args: root: the filesystem's znode root; invalidate(kind, key): drops what
    Meta caches for an inode ("inode", ino) or a directory's times ("dir", ino)."""

    def __init__(self, root: str, invalidate: Callable[[str, int], None]):
        self.root = root
        self._dirs = root + "/dirs/"
        self._inodes = root + "/inodes/"
        self.invalidate = invalidate
        # tells the kernel about someone else's change: ("entry", dir, name),
        # ("inode", ino, None), or ("lost", 0, None) when the feed dropped
        self.kernel: Callable[[str, int, bytes | None], None] | None = None
        self.active = False
        self.epoch = 0
        self.seq = 0
        self.log: collections.deque[tuple[int, str, int]] = collections.deque(maxlen=LOG_SIZE)
        self.names: dict[int, set[bytes]] = {}
        self.dirents: dict[tuple[int, bytes], tuple[int, int]] = {}
        self.own: collections.Counter[str] = collections.Counter()
        self._lost = trio.Event()
        self.stats = {"events": 0, "drops": 0}

    # -- the feed

    async def run(self, zk, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the feed subscribed (re-subscribe after every connection loss)."""
        started = False
        while True:
            await zk.wait_connected(float("inf"))
            self._lost = trio.Event()
            try:
                await zk.add_feed(self.root + "/dirs", self._event)
                await zk.add_feed(self.root + "/inodes", self._event)
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
            if not started:
                started = True
                task_status.started()
            await self._lost.wait()

    def _drop(self) -> None:
        self.active = False
        self.epoch += 1
        self.names.clear()
        self.dirents.clear()
        self.stats["drops"] += 1
        self.invalidate("all", 0)
        self._lost.set()
        if self.kernel is not None:
            self.kernel("lost", 0, None)

    def _event(self, kind: int | None, path: str | None) -> None:
        if kind is None or path is None:
            log.info("metadata feed lost (connection loss): cache dropped")
            self._drop()
            return
        self.seq += 1
        self.stats["events"] += 1
        self.log.append((self.seq, path, kind))
        if path.startswith(self._dirs):
            rest = path[len(self._dirs):]
            d, _, esc = rest.partition("/")
            try:
                dino = int(d)
            except ValueError:
                return
            if not esc:  # dirs/<d> itself: created (empty), deleted, or its times set
                if kind == CREATED:
                    if len(self.names) >= MAX_DIRS:
                        self.names.clear()
                    self.names[dino] = set()
                elif kind == DELETED:
                    self.names.pop(dino, None)
                if path not in self.own:
                    self.invalidate("dir", dino)
                    if self.kernel is not None:
                        self.kernel("inode", dino, None)
                return
            name = unescape(esc)
            names = self.names.get(dino)
            if names is not None:
                if kind == CREATED:
                    names.add(name)
                elif kind == DELETED:
                    names.discard(name)
            if path not in self.own:
                self.dirents.pop((dino, name), None)
                if self.kernel is not None:
                    self.kernel("entry", dino, name)
        elif path.startswith(self._inodes):
            _, _, ino = path[len(self._inodes):].partition("/")
            if ino and path not in self.own:
                self.invalidate("inode", int(ino))
                if self.kernel is not None:
                    self.kernel("inode", int(ino), None)

    def trust(self, parent: int, name: bytes, ino: int, mode: int) -> None:
        """Entry (parent, name) names inode ino of type mode, as of now (exact)."""
        if len(self.dirents) >= MAX_DIRENTS:
            self.dirents.clear()
        self.dirents[(parent, name)] = (ino, mode)

    # -- marks and checks

    def mark(self) -> tuple[int, int] | None:
        """Taken before a read or a transaction; None while the feed is off."""
        return (self.epoch, self.seq) if self.active else None

    def _since(self, mark: tuple[int, int]) -> list[tuple[int, str, int]] | None:
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

    def clean(self, mark: tuple[int, int] | None, *paths: str) -> bool:
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

    def install_names(self, mark: tuple[int, int] | None, dino: int, names: list[bytes]) -> None:
        """A listing of directory dino read after `mark`: bring it up to date and keep it."""
        if mark is None:
            return
        events = self._since(mark)
        if events is None:
            return
        base = f"{self._dirs}{dino}"
        current = set(names)
        for _, path, kind in events:
            if path == base:
                return  # the directory itself was created/removed meanwhile: skip
            if path.startswith(base + "/"):
                name = unescape(path[len(base) + 1:])
                if kind == CREATED:
                    current.add(name)
                elif kind == DELETED:
                    current.discard(name)
        if len(self.names) >= MAX_DIRS:
            self.names.clear()
        self.names[dino] = current

    def begin(self, paths: list[str]) -> tuple[int, int] | None:
        """Our transaction writing these paths is about to be sent."""
        for p in paths:
            self.own[p] += 1
        return self.mark()

    def settle(self, mark: tuple[int, int] | None, paths: list[str], applied: bool) -> bool:
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
            for p in set(paths):
                self._invalidate_path(p, foreign=True)
            return False
        seen = collections.Counter(p for _, p, _ in events)
        mine = collections.Counter(paths) if applied else collections.Counter()
        ok = True
        for p in set(paths):
            if seen[p] > mine[p]:
                ok = False
            # What we wrote is stale in the cache unless the caller installs it
            # again; a directory's times (dirs/<d>) are kept current in place.
            if seen[p] > mine[p] or not self._is_dir_times(p):
                self._invalidate_path(p, foreign=seen[p] > mine[p])
        return ok

    def _is_dir_times(self, path: str) -> bool:
        return path.startswith(self._dirs) and "/" not in path[len(self._dirs):]

    def _invalidate_path(self, path: str, foreign: bool = False) -> None:
        """Drop what we cache of path; `foreign`: someone else may have changed it (tell the kernel)."""
        tell = self.kernel if foreign else None
        if path.startswith(self._dirs):
            d, _, esc = path[len(self._dirs):].partition("/")
            if not d.isdigit():
                return
            if esc:
                self.dirents.pop((int(d), unescape(esc)), None)
                if tell is not None:
                    tell("entry", int(d), unescape(esc))
            else:
                self.invalidate("dir", int(d))
                if tell is not None:
                    tell("inode", int(d), None)
        elif path.startswith(self._inodes):
            _, _, ino = path[len(self._inodes):].partition("/")
            if ino.isdigit():
                self.invalidate("inode", int(ino))
                if tell is not None:
                    tell("inode", int(ino), None)
