"""Run a storage node as a subprocess (tests, `dfs up`, benchmarks).

    node = NodeProcess(zk_hosts, "default", "/var/tmp/n1")
    node.start()          # returns once the node's live znode exists
    node.node_id, node.address, node.pid
    node.stop()           # SIGTERM (clean drain), SIGKILL if it does not exit

The process runs in its own session and is only ever signalled by its PID.
Blocking calls: from trio, use `await trio.to_thread.run_sync(node.start)`.
"""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import trio

from dfs.keys import default_key_file, load_key
from dfs.tls import client_context
from dfs.paths import FsPaths, default_root
from dfs.records import NodeLive
from dfs.zk import NoNodeError, connect

REPO = Path(__file__).resolve().parents[2]


class NodeStartError(RuntimeError):
    pass


class NodeProcess:
    """One `python -m nodes` process.

    Args:
      zk_hosts: ZooKeeper connect string.
      fsname: filesystem name (root /dfs/<fsname>).
      data_dir: the node's data directory (its id is kept there across restarts).
      listen: HOST:PORT; port 0 picks a free port.
      zone: failure zone for placement.
      log_path: where stdout/stderr go (default: <data_dir>/../<name>.log).
      env: extra environment variables (e.g. DFS_NODE_HEARTBEAT).
      extra_args: more command-line arguments for the node.
      key_file: the cluster key (default: the node's own default, dfs/keys.py).
      netns: a network namespace to run in (`ip netns exec NETNS`, which execs: the
        PID is still the node's own); "" the caller's.
    """

    def __init__(self, zk_hosts: str, fsname: str, data_dir: str | os.PathLike, *,
                 listen: str = "127.0.0.1:0", zone: str = "", log_path: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, extra_args: list[str] | None = None,
                 key_file: str | os.PathLike | None = None, netns: str = ""):
        self.zk_hosts = zk_hosts
        self.fsname = fsname
        self.data_dir = Path(data_dir)
        self.listen = listen
        self.zone = zone
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / f"{self.data_dir.name}.log"
        self.env = env or {}
        self.extra_args = extra_args or []
        self.key_file = key_file
        self.netns = netns
        self.paths = FsPaths(default_root(fsname))
        self.proc: subprocess.Popen | None = None
        self.node_id: str | None = None
        self.live: NodeLive | None = None
        self.started_at = 0.0

    # -- properties

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def address(self) -> str | None:
        """'host:port' the node announced, once started."""
        return self.live.address if self.live else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "nodes", "--zk", self.zk_hosts, "--fs", self.fsname,
               "--data", str(self.data_dir), "--listen", self.listen]
        if self.zone:
            cmd += ["--zone", self.zone]
        if self.key_file:
            cmd += ["--key-file", str(self.key_file)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        return cmd + self.extra_args

    # -- lifecycle

    def spawn(self) -> subprocess.Popen:
        """Start the process without waiting for it to register."""
        if self.alive():
            raise NodeStartError(f"node already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.update(self.env)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=str(REPO),
                                         start_new_session=True)
        finally:
            log.close()
        self.live = None
        self.started_at = time.time()
        return self.proc

    def start(self, timeout: float = 30.0) -> "NodeProcess":
        """Start the node and wait until its live znode appears.

        Raises:
          NodeStartError: the process exited or did not register in time (with its log).
        """
        self.spawn()
        try:
            self.wait_registered(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_registered(self, timeout: float = 30.0) -> NodeLive:
        """Block until the node's live znode (of this run) appears.

        Callable from any thread, a trio task's included: the wait runs in a
        trio loop of its own on a worker thread.
        """
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(trio.run, self._wait_registered, timeout).result()

    async def _wait_registered(self, timeout: float) -> NodeLive:
        deadline = time.monotonic() + timeout
        key = load_key(Path(self.key_file) if self.key_file else default_key_file(
            self.fsname, self.env.get("XDG_CONFIG_HOME", os.environ.get("XDG_CONFIG_HOME"))))
        zk = await connect(self.zk_hosts, timeout=max(1.0, deadline - time.monotonic()),
                           tls=client_context(key) if self.zk_hosts.startswith("tls:") else None)
        zk.authenticate(key, self.paths.root)
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise NodeStartError(f"node exited with {self.returncode}:\n{self.log_tail()}")
                node_id = self._read_node_id()
                if node_id:
                    self.node_id = node_id
                    try:
                        data, _ = await zk.get(self.paths.live_node(node_id))
                        live = NodeLive.decode(data)
                        # a live znode of an earlier run of this node may linger: wait for ours
                        if live.updated >= self.started_at:
                            self.live = live
                            return live
                    except NoNodeError:
                        pass
                await trio.sleep(0.05)
        finally:
            await zk.close()
        raise NodeStartError(f"node did not register within {timeout:g} s:\n{self.log_tail()}")

    def _read_node_id(self) -> str | None:
        try:
            return (self.data_dir / "node_id").read_text().strip() or None
        except OSError:
            return None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (drain and deregister), then SIGKILL after `timeout`. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, no cleanup (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def __enter__(self) -> "NodeProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_nodes(zk_hosts: str, fsname: str, base: str | os.PathLike, count: int, *,
                env: dict[str, str] | None = None, timeout: float = 30.0,
                key_file: str | os.PathLike | None = None) -> list[NodeProcess]:
    """Start `count` nodes under base/node<i> in parallel; stops them all if one fails."""
    nodes = [NodeProcess(zk_hosts, fsname, Path(base) / f"node{i}", env=env, key_file=key_file)
             for i in range(count)]
    try:
        for n in nodes:
            n.spawn()
        for n in nodes:
            n.wait_registered(timeout)
    except BaseException:
        for n in nodes:
            n.kill()
        raise
    return nodes
