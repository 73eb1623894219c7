"""The storage nodes as maintenance sees them: registry, live set, leader, reports.

`RepairContext` is what every repair runs with, and decides whether a replica
counts (DESIGN.md section 5):
- A replica *counts* when its node is live, `active` and the replica is not
  known bad. Replicas on draining nodes serve as copy sources but do not count.

The readers below are what `dfs status`, `dfs drain`, fsck and the repair
leader read of the cluster; `set_node_state` is the one writer of a node's
registry state (only `dfs drain` and the leader use it).
"""

import json
from dataclasses import dataclass, field
from typing import Callable, Collection, TypeVar

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.maint.audit import AuditLog
from dfs.paths import FsPaths, election_leader
from dfs.records import CorruptReport, NodeLive, NodeRegistration
from dfs.zk import BadVersionError, NoNodeError, ZkClient
from dfs.zk.retry import retrying

T = TypeVar("T")

STATE_ATTEMPTS = 100  # a node's registry state: only `dfs drain` and the leader write it


@dataclass
class RepairContext:
    """What the repair primitives work with.

    Args:
      zk, paths, config: the filesystem's session, znode paths and settings.
      nodedir: the live nodes (kept fresh by its `run()` or by `refresh()`).
      blocks: a BlockClient on `nodedir`.
      actor: who repairs, for the audit log ("node:<id>", "fsck").
      unreachable: nodes the repairer cannot reach right now (the leader's probes,
        nodes/leader/reach.py, update the set in place): never a copy's target,
        a source only when no other is left.
    """

    zk: ZkClient
    paths: FsPaths
    config: FsConfig
    nodedir: NodeDirectory
    blocks: BlockClient
    actor: str = ""
    unreachable: set[str] = field(default_factory=set)
    stats: dict = field(default_factory=lambda: {"copied_blocks": 0, "copied_bytes": 0,
                                                  "dropped_replicas": 0, "gc_blocks": 0,
                                                  "garbage_copies": 0})
    audit: AuditLog = field(init=False)

    def __post_init__(self) -> None:
        self.audit = AuditLog(self.zk, self.paths, self.actor)

    def counts(self, node_id: str, bad: Collection[str] = ()) -> bool:
        """Does a replica on `node_id` count toward the block's redundancy?"""
        live = self.nodedir.get(node_id)
        return live is not None and live.state == "active" and node_id not in bad

    def can_serve(self, node_id: str, bad: Collection[str] = ()) -> bool:
        """May a replica on `node_id` be the source of a copy?"""
        return self.nodedir.get(node_id) is not None and node_id not in bad


async def _children(zk: ZkClient, path: str) -> list[str]:
    try:
        return await zk.get_children(path)
    except NoNodeError:
        return []


async def _records(zk: ZkClient, parent: str, path_of: Callable[[str], str],
                   decode: Callable[[bytes], T]) -> dict[str, T]:
    """The decoded children of `parent`, by znode name (those gone meanwhile left out)."""
    names = await _children(zk, parent)
    got = await zk.get_many([path_of(n) for n in names])
    return {n: decode(item[0]) for n, item in zip(names, got) if item is not None}


async def registry(zk: ZkClient, paths: FsPaths) -> dict[str, NodeRegistration]:
    """Every registered node (persistent registry), by id."""
    return await _records(zk, paths.registry, paths.registry_node, NodeRegistration.decode)


async def live_nodes(zk: ZkClient, paths: FsPaths) -> dict[str, NodeLive]:
    """Every node in nodes/live (what it last published), by id."""
    return await _records(zk, paths.live, paths.live_node, NodeLive.decode)


async def repair_leader(zk: ZkClient, paths: FsPaths) -> str | None:
    """The node id of the elected repair leader (lowest election sequence), if any."""
    return election_leader(await _children(zk, paths.repair_election))


async def repair_status(zk: ZkClient, paths: FsPaths) -> dict:
    """The leader's last published status document ({} if none or unreadable)."""
    try:
        return json.loads((await zk.get(paths.repair_status))[0])
    except (NoNodeError, ValueError):
        return {}


async def report_names(zk: ZkClient, paths: FsPaths) -> list[str]:
    """The znode names of the corrupt-replica reports in repair/corrupt."""
    return await _children(zk, paths.repair_reports)


async def corrupt_reports(zk: ZkClient, paths: FsPaths) -> dict[str, CorruptReport]:
    """Every corrupt-replica report, by znode name."""
    return await _records(zk, paths.repair_reports, paths.repair_report_named, CorruptReport.decode)


async def drop_report(zk: ZkClient, paths: FsPaths, name: str) -> None:
    """Delete a report (idempotent)."""
    try:
        await zk.delete(paths.repair_report_named(name))
    except NoNodeError:
        pass


async def set_node_state(zk: ZkClient, paths: FsPaths, node_id: str, frm: Collection[str],
                         to: str) -> str | None:
    """Move a node's registry state from one of `frm` to `to`, version-checked.

    Returns the state found (the old one when it changed, else the current
    one), or None when there is no such node.
    """
    path = paths.registry_node(node_id)

    async def attempt() -> str | None:
        try:
            data, st = await zk.get(path)
        except NoNodeError:
            return None
        reg = NodeRegistration.decode(data)
        if reg.state not in frm:
            return reg.state
        found = reg.state
        reg.state = to
        await zk.set(path, reg.encode(), st.version)  # BadVersion: someone else changed it
        return found

    return await retrying(attempt, attempts=STATE_ATTEMPTS, what=f"state change of node {node_id}",
                          conflicts=(BadVersionError,))
