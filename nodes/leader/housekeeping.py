"""The repair leader's services inside a storage node: election, repair, gc.

Every node runs `run_housekeeping`; only the elected leader does the work.
"""

import logging

import trio

from dfs.maint.repair import RepairContext
from nodes.leader.election import Election
from nodes.leader.gc import GcCollector
from nodes.leader.repairer import Repairer

log = logging.getLogger(__name__)


async def run_housekeeping(ctx) -> None:
    """Take part in the repair-leader election; while leading, repair and collect garbage.

    Args:
      ctx: the node's NodeContext (nodes/main.py).
    """
    election = Election(ctx.zk, ctx.paths, ctx.node_id)

    async def lead() -> None:
        # Fresh state per term: a new leader re-reads everything from ZooKeeper.
        rctx = RepairContext(ctx.zk, ctx.paths, ctx.config, ctx.nodedir, ctx.blocks,
                             actor=f"node:{ctx.node_id}")
        repairer = Repairer(rctx, ctx.node_id)
        gc = GcCollector(rctx)
        # Orphan collection and repair passes never overlap: an orphan scan's
        # picture of the maps must not be outrun by a repair that adds a replica.
        lock = trio.Lock()
        repairer.maintenance_lock = lock
        gc.maintenance_lock = lock
        repairer.on_node_return = gc.node_returned
        repairer.status_extra = gc.status
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gc.run)
            await repairer.run()

    await election.run(lead)
