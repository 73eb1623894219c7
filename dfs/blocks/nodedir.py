"""The live storage nodes, as seen in ZooKeeper's `nodes/live` (fed by a watch and a timer).

`NodeDirectory.run()` keeps the view fresh: a child watch on `nodes/live` wakes
it when a node joins or leaves, and a periodic refresh picks up the usage and
load that nodes publish every few seconds. Without `run()`, call `refresh()`.
"""

import logging

import trio

from dfs.blocks.protocol import split_address
from dfs.paths import FsPaths
from dfs.records import NodeLive
from dfs.zk import NoNodeError, ZkClient, ZkUnavailable

log = logging.getLogger(__name__)


class NodeDirectory:
    """Live nodes of one filesystem.

    Args:
      zk: the ZooKeeper session.
      paths: the filesystem's znode paths.
      interval: seconds between periodic refreshes in `run()`.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, *, interval: float = 2.0):
        self.zk = zk
        self.paths = paths
        self.interval = interval
        self._live: dict[str, NodeLive] = {}
        self._changed = trio.Event()   # set by the ZooKeeper watch (via the trio token)

    # -- reading the view

    def live(self) -> dict[str, NodeLive]:
        """node id -> NodeLive of every node with a live znode (a copy)."""
        return dict(self._live)

    def get(self, node_id: str) -> NodeLive | None:
        return self._live.get(node_id)

    def address(self, node_id: str) -> tuple[str, int] | None:
        """(host, port) of a live node, or None if it is not live."""
        n = self._live.get(node_id)
        if n is None:
            return None
        return split_address(n.address)

    # -- keeping it fresh

    async def refresh(self, *, watch: bool = False) -> None:
        """Re-read `nodes/live` and every live znode (one multi-read)."""
        watcher = self._watcher() if watch else None
        try:
            names = await self.zk.get_children(self.paths.live, watcher)
        except NoNodeError:
            names = []
        found: dict[str, NodeLive] = {}
        if names:
            got = await self.zk.get_many([self.paths.live_node(n) for n in names])
            for name, item in zip(names, got):
                if item is None:
                    continue  # vanished between the listing and the read
                try:
                    found[name] = NodeLive.decode(item[0])
                except (ValueError, TypeError) as e:
                    log.warning("ignoring unreadable live znode %s: %s", name, e)
        self._live = found

    def _watcher(self):
        token = trio.lowlevel.current_trio_token()
        changed = self._changed

        def fire(_event) -> None:  # the session's task: only hand off to trio
            try:
                token.run_sync_soon(changed.set)
            except trio.RunFinishedError:
                pass

        return fire

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Keep the view fresh until cancelled; `started()` after the first load."""
        await self.refresh(watch=True)
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._changed.wait()
            watch = self._changed.is_set()
            if watch:
                self._changed = trio.Event()
            try:
                # The watch is one-shot: re-arm it whenever it fired.
                await self.refresh(watch=watch)
            except Exception as e:  # ZooKeeper down: keep the last view, try again later
                # (an unreachable ZooKeeper is logged once per outage, by the session)
                (log.debug if isinstance(e, ZkUnavailable) else log.warning)(
                    "node directory refresh failed: %s", e)
                if watch:
                    self._changed.set()
                await trio.sleep(self.interval)  # (calls may fail at once: no busy loop)

    async def wait_for(self, n_nodes: int, timeout: float) -> dict[str, NodeLive]:
        """Wait until at least `n_nodes` nodes are live (refreshing as needed).

        Raises:
          TimeoutError: fewer nodes were live when `timeout` ran out.
        """
        deadline = trio.current_time() + timeout
        while True:
            await self.refresh()
            if len(self._live) >= n_nodes:
                return self.live()
            if trio.current_time() >= deadline:
                raise TimeoutError(f"only {len(self._live)} of {n_nodes} storage nodes are live")
            await trio.sleep(min(0.1, max(0.0, deadline - trio.current_time())))
