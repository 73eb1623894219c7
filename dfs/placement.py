"""Where new block replicas go (DESIGN.md section 5). Pure: no I/O, no clock.

Rules: distinct nodes; only `active` nodes with room for the block; weighted
toward free space so full nodes fill last; spread across zones while unused
zones remain, so losing a zone leaves a copy when nodes declare zones.
"""

import random
from typing import Iterable

from dfs.records import NodeLive

# A node never gets a weight below this, so empty-looking nodes still take part.
MIN_WEIGHT = 1.0


def eligible(node: NodeLive, block_size: int) -> bool:
    return node.state == "active" and (block_size <= 0 or node.free >= block_size)


def zones(nodes: Iterable[NodeLive]) -> set[str]:
    """The failure zones replicas can spread over: those of active nodes (a draining or
    retired node that still runs is no zone to place in)."""
    return {n.zone for n in nodes if n.state == "active"}


def spread_short(zone_of: dict[str, str], replicas: Iterable[str], zone_count: int) -> bool:
    """Are these replicas (on nodes in `zone_of`) in fewer zones than they could be, with
    `zone_count` zones to use (MIS_REPLICATED)? Callers count the zones once, not per block."""
    reps = [n for n in replicas if n in zone_of]
    return zone_count > 1 and len({zone_of[n] for n in reps}) < min(len(reps), zone_count)


def place_replicas(nodes: list[NodeLive], count: int, *, exclude: Iterable[str] = (),
                   block_size: int = 0, rng: random.Random | None = None,
                   zones_taken: Iterable[str] = ()) -> list[str]:
    """Choose up to `count` distinct node ids for a new block.

    Args:
      nodes: live nodes (from the node directory).
      count: replicas wanted.
      exclude: node ids that must not be chosen (e.g. nodes that already failed).
      block_size: bytes the block needs; nodes with less free space are skipped.
      rng: a random.Random for reproducible choices (tests).
      zones_taken: zones the block's existing replicas are in (a repair fills others first).

    Returns:
      Node ids, fewer than `count` when not enough nodes qualify.
    """
    rng = rng or random
    excluded = set(exclude)
    candidates = {n.node_id: n for n in nodes
                  if n.node_id not in excluded and eligible(n, block_size)}
    chosen: list[str] = []
    used_zones: set[str] = set(zones_taken)
    while len(chosen) < count and candidates:
        pool = list(candidates.values())
        # Nodes without a zone count as one zone "", so with no zones declared
        # this spreads nothing and with zones it fills every zone before reusing one.
        fresh = [n for n in pool if n.zone not in used_zones]
        if fresh:
            pool = fresh
        weights = [max(float(n.free), MIN_WEIGHT) for n in pool]
        pick = rng.choices(pool, weights=weights, k=1)[0]
        chosen.append(pick.node_id)
        used_zones.add(pick.zone)
        del candidates[pick.node_id]
    return chosen
