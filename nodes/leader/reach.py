"""Does the repair leader reach the nodes it gives orders to?

ZooKeeper hearing a node says nothing about its data network: a leader cut off
from the other nodes but not from ZooKeeper keeps its election znode, and every
copy it orders fails until the link is back. So while a node leads it PINGs
every other live node every `interval` s (each answer within `timeout` s). When
it has reached fewer than half of them for `after` s on end, it steps down
(the election's `fit` check fails) and stands again only once a probe reaches
half of them; it then joins at the back of the queue, behind the node that took
over. A node with no other live node, or reaching half or more, is fit: two
halves that cannot see each other (a symmetric split of two nodes) both stay
out, and nothing could be copied between them anyway.

Only nodes that answer, or whose live record is fresh (refreshed within
`stale_after` s), count for that verdict: a node that was killed or frozen keeps
its live znode until its session expires but stops refreshing it, and two such
nodes of four must not make a well-connected leader step down. `after` is chosen
longer than `stale_after` (config.NodeSettings: 10 s against 3 heartbeats plus
the node directory's 2 s plus 1 s). When no other node counts (every record stale, none
answers) a probe says nothing and the verdict stands: all the others killed at
once must not make a leader flap, and heartbeats that a slow ZooKeeper (its log's
fsync behind a busy disk) holds back must not make a leader cut off from them
look fit.

The probes also give the leader's repairs the nodes it cannot reach (the
`unreachable` set, shared with dfs.maint.cluster.RepairContext), so that no copy
is sent to, or ordered from, a node that would only time out.
"""

import logging
import time

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.errors import DfsError

log = logging.getLogger(__name__)

PROBE_INTERVAL = 1.0  # s between probes while leading or standing aside
PROBE_TIMEOUT = 2.0  # s a node has to answer a probe's PING


def enough(reached: int, others: int) -> bool:
    """May a node that reaches `reached` of the `others` other live nodes lead?"""
    return 2 * reached >= others


class Reach:
    """The leader's probes of the other live nodes.

    Args:
      blocks: the node's BlockClient (PINGs go through its pooled connections).
      nodedir: the live nodes.
      node_id: this node.
      after: seconds of probes reaching too few nodes before the leader steps
        down; 0 never steps down (the probes still feed `unreachable`).
      stale_after: seconds after its last refresh a node's live record no longer
        counts for the verdict (it is still probed, and avoided if it does not answer).
      interval, timeout: see PROBE_INTERVAL, PROBE_TIMEOUT.
    """

    def __init__(self, blocks: BlockClient, nodedir: NodeDirectory, node_id: str, *,
                 after: float, stale_after: float, interval: float = PROBE_INTERVAL,
                 timeout: float = PROBE_TIMEOUT):
        self.blocks = blocks
        self.nodedir = nodedir
        self.node_id = node_id
        self.after = after
        self.stale_after = stale_after
        self.interval = interval
        self.timeout = timeout
        self.unreachable: set[str] = set()  # updated in place: the repair context holds it
        self.reached = self.others = 0
        self.short_since: float | None = None  # trio time since which probes reach too few

    async def probe(self) -> None:
        """PING every other live node at once; update `unreachable` and the verdict."""
        live = self.nodedir.live()
        read_at = time.time()  # (records are as old as this, not as the probes' end)
        others = [n for n in live if n != self.node_id]
        reached: set[str] = set()

        async def ping(node_id: str) -> None:
            with trio.move_on_after(self.timeout):
                try:
                    await self.blocks.ping(node_id, timeout=self.timeout)
                    reached.add(node_id)
                except DfsError:
                    pass

        async with trio.open_nursery() as nursery:
            for n in others:
                nursery.start_soon(ping, n)
        gone = set(others) - reached
        if gone != self.unreachable:
            log.info("repair leader %s reaches %d of %d other nodes%s", self.node_id,
                     len(reached), len(others),
                     f"; not {', '.join(sorted(gone))}" if gone else "")
        self.unreachable.clear()
        self.unreachable.update(gone)
        # a node that answered counts whatever its record says
        counted = {n for n in others if read_at - live[n].updated <= self.stale_after} | reached
        self.reached, self.others = len(reached), len(counted)
        if others and not counted:
            return  # every other record is stale, none answered: no news, keep the verdict
        if enough(self.reached, self.others):
            self.short_since = None
        elif self.short_since is None:
            self.short_since = trio.current_time()

    def fit(self) -> bool:
        """False once probes have reached too few nodes for `after` s, until one reaches enough."""
        return (self.after <= 0 or self.short_since is None
                or trio.current_time() - self.short_since < self.after)

    async def run(self, active) -> None:
        """Forever (cancel to stop): probe every `interval` s while `active()` (leading)
        or while unfit (standing aside, waiting to reach enough nodes again)."""
        while True:
            if active() or not self.fit():
                await self.probe()
            await trio.sleep(self.interval)
