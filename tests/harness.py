"""A whole cluster for system tests: real ZooKeeper (the session's), node processes, mounts.

Everything is stopped by PID in `close()`, which fixtures call in `finally`;
mounts are unmounted (lazily if busy) first.
"""

import json
import os
import signal
import time
import uuid
import warnings
from pathlib import Path

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.client.view import ClientView
from dfs.config import FsConfig
from dfs.keys import load_key
from dfs.mkfs import load_config
from dfs.paths import FsPaths, default_root
from dfs.zk import connect
from tests.nodeutil import key_file_of, mkfs_keyed
from tools.local.mountproc import MountProcess, fusermount_unmount, is_mounted
from tools.local.nodeproc import NodeProcess
from tools.local.procs import stop_pid


class Cluster:
    def __init__(self, hosts: str, base: Path, config: FsConfig | None = None, fsname: str | None = None):
        self.hosts = hosts
        self.base = base
        self.fsname = fsname or f"t{uuid.uuid4().hex[:10]}"
        self.paths = FsPaths(default_root(self.fsname))
        self.config = config or FsConfig(block_size=1 << 20, replicas=3, min_replicas=2, dead_after=5)
        self.nodes: list[NodeProcess] = []
        self.mounts: list[MountProcess] = []
        self._n = 0

    @property
    def key_file(self) -> Path:
        """Where its key is: the default location (tests.nodeutil.mkfs_keyed)."""
        return key_file_of(self.fsname)

    @property
    def key(self) -> bytes:
        return load_key(self.key_file)

    def mkfs(self) -> "Cluster":
        async def go() -> None:
            zk = await connect(self.hosts)
            try:
                await mkfs_keyed(zk, self.paths, self.config)
            finally:
                await zk.close()

        trio.run(go)
        return self

    def add_node(self, zone: str = "", env: dict | None = None,
                 extra_args: list[str] | None = None, *, listen: str = "127.0.0.1:0",
                 netns: str = "") -> NodeProcess:
        self._n += 1
        data = self.base / f"node{self._n}"
        data.mkdir(parents=True, exist_ok=True)
        node = NodeProcess(self.hosts, self.fsname, data, zone=zone, log_path=self.base / f"node{self._n}.log",
                           env=env, extra_args=extra_args, listen=listen, netns=netns)
        self.nodes.append(node)
        node.start()
        return node

    def mount(self, name: str = "mnt", options: list[str] | None = None, metrics: str = "") -> Path:
        mp = MountProcess(self.hosts, self.fsname, self.base / name, options=options,
                          log_path=self.base / f"{name}.log", metrics=metrics)
        self.mounts.append(mp)
        mp.start()
        return mp.mountpoint

    def logs(self) -> str:
        parts = [m.log_tail() for m in self.mounts] + [n.log_tail() for n in self.nodes]
        return "\n".join(p for p in parts if p)

    def close(self) -> None:
        for m in self.mounts:
            t = time.monotonic()
            try:
                m.stop()
            except Exception as e:  # keep cleaning up the rest
                print(f"cleanup: mount {m.mountpoint}: {e!r}")
                m.kill()
            slow_stop(f"mount {m.mountpoint}", time.monotonic() - t, m.log_tail)
        for n in self.nodes:
            t = time.monotonic()
            try:
                n.stop()
            except Exception as e:
                print(f"cleanup: node {n.pid}: {e!r}")
            slow_stop(f"node {n.node_id}", time.monotonic() - t, n.log_tail)


SLOW_STOP = 5.0  # s: a daemon that takes longer to stop than this is reported


def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP `pid` and wait until every thread of it has stopped. kill() returns
    before a busy multi-threaded process (a JVM on a loaded machine) is stopped,
    and a request sent in between may still be answered: a test that means "this
    request meets a stopped server" must not race with that."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:  # (a thread that just ended)
                pass
        if states and all(st in "Tt" for st in states):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop within {timeout:g} s: threads {states}")
        time.sleep(0.001)


def slow_stop(what: str, took: float, log_tail) -> None:
    """Report (pytest's warnings summary, also for passing tests) a daemon that stopped slowly:
    a SIGTERM that is not answered promptly is a bug, and it costs the suite its time."""
    if took > SLOW_STOP:
        warnings.warn(f"{what} took {took:.1f} s to stop; its log ends:\n{log_tail()[-3000:]}",
                      stacklevel=2)


def client_session(cluster: Cluster, body, *, cache: bool = False):
    """trio.run body(zk, view, blocks, nursery) as one client of `cluster`, without a mount.

    view: a dfs.client.view.ClientView (its namespace calls, `view.meta` for the rest).
    cache: run the change feed that keeps what the view knows exact.
    The nursery is cancelled when body returns; its value is returned.
    """

    async def go():
        zk = await connect(cluster.hosts)
        zk.authenticate(cluster.key, cluster.paths.root)
        try:
            view = ClientView(zk, cluster.paths, await load_config(zk, cluster.paths))
            nodedir = NodeDirectory(zk, cluster.paths)
            await nodedir.refresh()
            blocks = BlockClient(nodedir, key=cluster.key)
            async with trio.open_nursery() as nursery:
                if cache:
                    await nursery.start(view.feed.run, zk)
                out = await body(zk, view, blocks, nursery)
                nursery.cancel_scope.cancel()
            await blocks.aclose()
            return out
        finally:
            await zk.close()

    return trio.run(go)


def stop_what_up_left(state: Path, mnt: Path) -> None:
    """After `dfs down` in a test of `dfs up`: belt and braces if down itself failed,
    by the PIDs recorded in the state directory only."""
    if is_mounted(mnt):
        fusermount_unmount(mnt, lazy=True)
    try:
        info = json.loads((state / "cluster.json").read_text())
    except (OSError, ValueError):
        info = {}
    for p in [n.get("pid") for n in info.get("nodes", [])] + info.get("zk_pids", []) + [
            (info.get("mount") or {}).get("pid")]:
        if p:
            stop_pid(p)
