"""The repair leader's services inside a storage node: election, repair, gc, capacity,
and the probes that make a leader cut off from the other nodes step down.

Every node runs `Housekeeping.run`; only the elected leader does the work.
"""

import logging

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig, NodeSettings
from dfs.maint import capacity
from dfs.maint.repair import RepairContext
from dfs.paths import FsPaths
from dfs.zk import ZkClient
from nodes.leader.election import Election
from nodes.leader.gc import GcCollector
from nodes.leader.reach import Reach
from nodes.leader.repairer import Repairer

log = logging.getLogger(__name__)


class Housekeeping:
    """Take part in the repair-leader election; while leading, repair, collect garbage
    and watch ZooKeeper's capacity (dfs.maint.capacity).

    Args:
      zk, paths, config: the node's ZooKeeper session, the filesystem's paths and settings.
      nodedir: the live nodes (kept fresh by the node's own task).
      blocks: a BlockClient on `nodedir`.
      node_id: this node.
      settings: the node's knobs (repair and orphan ones).
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, nodedir: NodeDirectory,
                 blocks: BlockClient, node_id: str, settings: NodeSettings):
        self.zk = zk
        self.paths = paths
        self.config = config
        self.nodedir = nodedir
        self.blocks = blocks
        self.node_id = node_id
        self.settings = settings
        self.election = Election(zk, paths, node_id)
        self.reach = Reach(blocks, nodedir, node_id, after=settings.leader_step_down,
                           # a record is read up to nodedir.interval after its refresh,
                           # and the refresh itself takes ZooKeeper round trips: 1 s for those
                           stale_after=3 * settings.heartbeat + nodedir.interval + 1.0)

    async def run(self) -> None:
        """Forever (cancel to stop): stand for leader while fit, lead while elected."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.reach.run, lambda: self.election.leading)
            await self.election.run(self._lead, self.reach.fit)

    async def _lead(self) -> None:
        # Know whom we reach before the first repair picks a target.
        await self.reach.probe()
        # Fresh state per term: a new leader re-reads everything from ZooKeeper.
        rctx = RepairContext(self.zk, self.paths, self.config, self.nodedir, self.blocks,
                             actor=f"node:{self.node_id}", unreachable=self.reach.unreachable)
        # Orphan collection and repair passes never overlap: an orphan scan's
        # picture of the maps must not be outrun by a repair that adds a replica.
        lock = trio.Lock()
        gc = GcCollector(rctx, self.settings, maintenance_lock=lock)
        repairer = Repairer(rctx, self.node_id, self.settings, maintenance_lock=lock,
                            on_node_return=gc.node_returned, status_extra=gc.status)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc.run)
            nursery.start_soon(capacity.run_checks, self.zk, self.paths)
            await repairer.run()
