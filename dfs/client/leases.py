"""When this mount takes directory leases, answers under them, and lets them go.

The lease itself, its fence and its recall are dfs.meta.leases'. Here:

- **Taking.** A directory this mount creates starts leased to it (the
  mkdir's transaction makes the lease); an existing one is taken at its first
  O_EXCL create here, if it is free, this mount knows its names (the feed keeps
  them: it was listed or made here) and nobody recalled it from this mount, nor
  did this mount have to recall it, in the last COOL seconds (two mounts working
  in one directory stop taking turns and both commit synchronously).
- **Answering.** While held, known and not being let go, an O_EXCL create or
  a mkdir in it is answered here: EEXIST if the name is there, else the create
  goes out as an asynchronous one (dfs.client.creates) whose commit carries
  the lease's check (a mkdir only when the view can show its outcome at once:
  ClientView.may_predict). `tar -x`, `cp -a`, `rsync` (its temporary files)
  and `git` create with O_EXCL; `mkdir -p` and `tar -x` make trees.
- **Letting go.** When the feed reports a recall, new answers stop, this
  mount's creates and removals in the directory land, and the lease is set
  free, in the same transaction as every other lease this mount holds and has
  not answered under for IDLE seconds (a tree made here and then used from
  another mount costs one recall, not one per directory). An unmount ends the
  session and with it the writer record: the leases it held are broken at
  once by whoever needs them.
"""

import logging
from typing import Protocol

import trio

from dfs.client.view import ClientView

log = logging.getLogger(__name__)

COOL = 30.0  # seconds a directory is not taken after a recall involving it
MAX_TIMES = 100_000  # directories whose last answer / cool-down is kept (then the stale ones go)
IDLE = 1.0  # seconds without an answer after which a held lease goes with any recall


class Settles(Protocol):
    async def wait_dir(self, *dirs: int) -> None: ...

    def busy(self, d: int) -> bool: ...


class DirLeases:
    """Args: view: the mount's namespace (its `leases`, names and feed);
    settles: what must land before a lease goes (the creates and removals)."""

    def __init__(self, view: ClientView, settles: list[Settles], *, cool: float = COOL):
        self.view = view
        self.leases = view.leases
        self.settles = settles
        self.cool = cool
        self.releasing: set[int] = set()
        self._cool_until: dict[int, float] = {}
        self._used: dict[int, float] = {}  # d -> when this mount last answered under its lease
        self._send, self._recv = trio.open_memory_channel[int](10_000)
        self.stats = {"local_excl": 0, "let_go": 0}
        view.lease_births = True
        view.on_recalled = self._recalled

    def answers(self, d: int) -> bool:
        """Whether this mount may answer d's name questions itself now."""
        view = self.view
        return (view.feed.active and d not in self.releasing and d in view.names
                and self.leases.held(d))

    def _cooling(self, d: int) -> bool:
        now = trio.current_time()
        if self._cool_until.get(d, 0.0) > now:
            return True
        at = self.leases.recalled_at.get(d)
        return at is not None and now - at < self.cool

    async def take(self, d: int) -> bool:
        """Hold d's lease if the rules above allow (a round trip when not yet held)."""
        if self.answers(d):
            return True
        view = self.view
        if not view.feed.active or d in self.releasing or d not in view.names or self._cooling(d):
            return False
        if view.writer.seq is None:
            await view.writer.register()
        return await self.leases.grant(d) and self.answers(d)

    def used(self, d: int) -> None:
        """An answer was given under d's lease."""
        now = trio.current_time()
        if len(self._used) >= MAX_TIMES and d not in self._used:  # (a huge tree made here)
            self._used = {x: t for x, t in self._used.items() if now - t < IDLE}
        self._used[d] = now

    def taken(self, d: int, name: bytes) -> bool:
        """Under a held lease: is `name` in d (or being created here)?"""
        names = self.view.names.get(d)
        return names is None or name in names or (d, name) in self.view.creating

    # -- recalls

    def _recalled(self, d: int) -> None:
        if self.leases.held(d) and d not in self.releasing:
            self.releasing.add(d)
            try:
                self._send.send_nowait(d)
            except trio.WouldBlock:
                self.releasing.discard(d)

    async def run(self) -> None:
        """Let go of recalled leases (start it in a nursery)."""
        async with trio.open_nursery() as nursery:
            async for d in self._recv:
                nursery.start_soon(self._let_go, d)

    async def _let_go(self, d: int) -> None:
        try:
            for s in self.settles:
                await s.wait_dir(d)
            now = trio.current_time()
            idle = [x for x in self.leases.held_dirs()
                    if x != d and x not in self.releasing and now - self._used.get(x, 0.0) >= IDLE
                    and not any(s.busy(x) for s in self.settles)]
            self.releasing.update(idle)  # (no new answers under them while they go)
            try:
                await self.leases.release([d] + idle)
            finally:
                self.releasing.difference_update(idle)
            for x in idle:
                self._used.pop(x, None)
            self.stats["let_go"] += 1 + len(idle)
        except Exception as e:  # (ZooKeeper away: the recaller breaks it once our session is gone)
            log.warning("directory %d: could not let go of its lease: %r", d, e)
        finally:
            now = trio.current_time()
            if len(self._cool_until) >= MAX_TIMES:
                self._cool_until = {x: t for x, t in self._cool_until.items() if t > now}
            self._cool_until[d] = now + self.cool
            self.releasing.discard(d)
