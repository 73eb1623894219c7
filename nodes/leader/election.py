"""Repair-leader election among the running storage nodes (DESIGN.md section 5).

The classic ZooKeeper recipe: every node creates an ephemeral sequential znode
under `repair/election`; the one with the lowest sequence number leads. The
others poll (cheap: one get_children per `poll` seconds) and take over when
the znodes before theirs are gone: a dead leader's znode vanishes with its
session. The znode name carries the node id and session id, so a restarted
node never mistakes the znode of its previous (killed) process for its own.
Joining is idempotent: a create retried after a connection loss may have been
applied twice, and the extra znode (same name stem) would stand in front of
us for the rest of the session, so it is deleted.

A node may also be unfit to lead (`fit()` false: nodes/leader/reach.py, a
leader that reaches too few of the other nodes): it steps down, leaving its
znode, and joins again, at the back of the queue, only once it is fit.

A leader that loses its znode (session expired while ZooKeeper was out of
reach) stops leading at once (its work is cancelled) and joins again. Two
leaders may overlap for a moment around a session expiry; every repair step
is version-checked and idempotent (dfs/maint/repair.py), so that costs work only.
"""

import logging
from typing import Awaitable, Callable

import trio

from dfs.paths import FsPaths, election_sequence
from dfs.zk import NoNodeError, ZkClient

log = logging.getLogger(__name__)


class Election:
    """Run `lead()` while this node is the repair leader.

    Args:
      zk, paths: the node's ZooKeeper session and the filesystem's paths.
      node_id: this node.
      poll: seconds between checks of who leads.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, node_id: str, *, poll: float = 0.5):
        self.zk = zk
        self.paths = paths
        self.node_id = node_id
        self.poll = poll
        self.znode: str | None = None
        self.leading = False

    async def _join(self) -> str:
        await self.zk.ensure_path(self.paths.repair_election)
        prefix = self.paths.election_prefix(self.node_id, self.zk.session_id or 0)
        path = await self.zk.create(prefix, self.node_id.encode(), ephemeral=True, sequence=True)
        me = path.rsplit("/", 1)[1]
        stem = prefix.rsplit("/", 1)[1]
        for name in await self.zk.get_children(self.paths.repair_election):
            if name != me and name.startswith(stem):
                try:
                    await self.zk.delete(self.paths.election_member(name))
                except NoNodeError:
                    pass
        return me

    async def _standing(self, me: str) -> str:
        """'first', 'waiting' or 'gone' (our znode vanished: the session expired)."""
        names = await self.zk.get_children(self.paths.repair_election)
        if me not in names:
            return "gone"
        first = min(names, key=election_sequence)
        return "first" if first == me else "waiting"

    async def run(self, lead: Callable[[], Awaitable[None]],
                  fit: Callable[[], bool] = lambda: True) -> None:
        """Forever: join, wait for our turn, lead until we lose the znode or stop being
        `fit()` (checked every `poll` s). Cancel to stop."""
        while True:
            if not fit():
                log.info("node %s stands aside from the repair election", self.node_id)
                while not fit():
                    await trio.sleep(self.poll)
                log.info("node %s stands for repair leader again", self.node_id)
            me = await self._join()
            self.znode = me
            try:
                while (standing := await self._standing(me)) == "waiting":
                    await trio.sleep(self.poll)
                if standing == "gone":
                    log.info("election znode %s vanished; joining again", me)
                    continue
                log.info("node %s is the repair leader", self.node_id)
                self.leading = True
                async with trio.open_nursery() as nursery:
                    async def watchdog() -> None:
                        while True:
                            await trio.sleep(self.poll)
                            if not fit():
                                log.warning("node %s steps down as repair leader", self.node_id)
                                break
                            try:
                                if await self._standing(me) != "first":
                                    break
                            except Exception as e:  # ZooKeeper out of reach for op_timeout
                                log.warning("cannot confirm leadership: %s", e)
                                break
                        log.warning("node %s lost the repair leadership", self.node_id)
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(watchdog)
                    await lead()
                    nursery.cancel_scope.cancel()
            finally:
                self.leading = False
                self.znode = None
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        await self.zk.delete(self.paths.election_member(me))
                    except Exception:
                        pass  # gone already, or ZooKeeper away: it expires with the session
            await trio.sleep(self.poll)
