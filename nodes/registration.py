"""A node's presence in ZooKeeper: `nodes/registry/<id>` (persistent) and `nodes/live/<id>` (ephemeral).

The registry entry is created once and keeps its `state` (active, draining,
retired: changed by `dfs drain`) and `first_seen` across restarts; the node only
updates its address and zone. The live znode carries usage and load and is
rewritten every `interval` seconds. If it is missing (session expired, ZooKeeper
lost its state, someone deleted it) it is simply created again; while ZooKeeper
is unreachable the node keeps serving blocks and keeps trying.
"""

import logging
import time
from typing import Callable

import trio

from dfs.paths import FsPaths
from dfs.records import NodeLive, NodeRegistration
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, ZkClient, ZkState
from dfs.zk.retry import retrying

log = logging.getLogger(__name__)

REGISTER_ATTEMPTS = 100  # only `dfs drain` writes the entry besides its node


class Registration:
    """Registers a node and keeps its live znode fresh.

    Args:
      zk, paths: the ZooKeeper session and the filesystem's paths.
      node_id, address, zone: who and where this node is ("host:port").
      usage: returns (capacity, used, free, blocks, load); called in a worker thread.
      interval: seconds between live-znode refreshes.
      details: returns more NodeLive fields (the metrics address, scrub coverage).
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, node_id: str, address: str, zone: str,
                 usage: Callable[[], tuple[int, int, int, int, float]], *,
                 interval: float = 2.0, details: Callable[[], dict] = dict):
        self.zk = zk
        self.paths = paths
        self.node_id = node_id
        self.address = address
        self.zone = zone
        self.usage = usage
        self.interval = interval
        self.details = details
        self.state = "active"
        self.stopped = False
        self._wake = trio.Event()

    async def register(self) -> None:
        """Create or update the registry entry, then create the live znode."""
        path = self.paths.registry_node(self.node_id)

        async def attempt() -> None:
            try:
                data, stat = await self.zk.get(path)
            except NoNodeError:
                reg = NodeRegistration(self.node_id, self.address, self.zone, "active", time.time())
                # NodeExists: raced with ourselves after a retried create: read it again
                await self.zk.create(path, reg.encode())
                return
            reg = NodeRegistration.decode(data)
            self.state = reg.state
            if reg.address == self.address and reg.zone == self.zone:
                return
            reg.address, reg.zone = self.address, self.zone
            # BadVersion: `dfs drain` changed the state meanwhile: keep its change
            await self.zk.set(path, reg.encode(), stat.version)

        await retrying(attempt, attempts=REGISTER_ATTEMPTS, what=f"registration of node {self.node_id}",
                       conflicts=(BadVersionError, NodeExistsError))
        await self.publish()

    async def _live_record(self) -> bytes:
        capacity, used, free, blocks, load = await trio.to_thread.run_sync(self.usage)
        return NodeLive(node_id=self.node_id, address=self.address, zone=self.zone,
                        capacity=capacity, used=used, free=free, blocks=blocks, load=load,
                        updated=time.time(), state=self.state, **self.details()).encode()

    async def publish(self) -> None:
        """Write the live znode (create it if it is gone). Picks up the registry state."""
        try:
            data, _ = await self.zk.get(self.paths.registry_node(self.node_id))
            self.state = NodeRegistration.decode(data).state
        except NoNodeError:
            pass
        path = self.paths.live_node(self.node_id)
        record = await self._live_record()
        try:
            stat = await self.zk.set(path, record)
            if stat.ephemeralOwner != self.zk.session_id:
                # left by an earlier session of ours (a quick restart): it would
                # vanish when that session expires, so replace it with our own
                await self.zk.delete(path)
                await self.zk.create(path, record, ephemeral=True)
                log.info("replaced a live znode of an earlier session")
        except NoNodeError:
            try:
                await self.zk.create(path, record, ephemeral=True)
                log.info("live znode created at %s", path)
            except NodeExistsError:
                pass  # a retried create that did apply

    def _listener(self) -> Callable[[str], None]:
        token = trio.lowlevel.current_trio_token()

        def on_state(state: str) -> None:  # the session's task: hand off only
            if state == ZkState.CONNECTED:
                try:
                    token.run_sync_soon(self._wake.set)
                except trio.RunFinishedError:
                    pass

        return on_state

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Refresh the live znode every `interval` s (and at once after a reconnect)."""
        self.zk.add_listener(self._listener())
        task_status.started()
        while not self.stopped:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.stopped:
                break
            try:
                await self.publish()
            except Exception as e:  # ZooKeeper unreachable: serve on, retry next round
                log.warning("could not refresh the live znode: %s", e)

    async def unregister(self) -> None:
        """Remove the live znode (clean shutdown); the registry entry stays."""
        self.stopped = True
        try:
            await self.zk.delete(self.paths.live_node(self.node_id))
        except NoNodeError:
            pass

