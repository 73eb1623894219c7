"""`dfs up` / `dfs down`: a whole local cluster (ZooKeeper, storage nodes, the mount).

State lives in ./.dfs/ (configurable): ZooKeeper's data, each node's blocks,
logs, the filesystem's key (<fs>.key) and cluster.json with the ports and PIDs
of what runs; all of it readable by its owner only (umask 077). A second `dfs up`
reuses what is running and starts what is not (on the same ZooKeeper ports, with
the same data), so data survives `dfs down` + `dfs up`. Processes are stopped by
the PIDs recorded here, never by name.
"""

import argparse
import dataclasses
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

import trio

from dfs.config import FsConfig
from dfs.errors import DfsError, UsageError
from dfs.keys import create_key_file, key_check, load_key
from dfs.mkfs import MIN_ZK_HEAP, load_config, mkfs, set_zk_heap
from dfs.paths import FsPaths, default_root
from dfs.tls import client_context
from dfs.zk import connect
from dfs.zk.tls import split_tls
from tools.local.mountproc import MountProcess, fusermount_unmount, is_mounted
from tools.local.nodeproc import NodeProcess
from tools.local.procs import pid_alive, pid_cmdline, stop_pid
from tools.local.zkserver import ZkEnsemble, default_heap_mb, four_letter, free_port
from tools.mkfs import config_of


MKFS_FIELDS = ("block_size", "replicas", "min_replicas", "dead_after", "inline_max", "tls")


def _load(state: Path) -> dict:
    try:
        return json.loads((state / "cluster.json").read_text())
    except (OSError, ValueError):
        return {}


def _save(state: Path, data: dict) -> None:
    tmp = state / "cluster.json.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(state / "cluster.json")


def _ours(pid: int | None, marker: str) -> bool:
    """Is `pid` still the process we recorded (and not a recycled PID)?"""
    return bool(pid) and pid_alive(pid) and marker in pid_cmdline(pid)  # type: ignore[arg-type]


def _zk_tls(hosts: str, key: bytes):
    """The TLS context for `hosts` (a "tls:" ZooKeeper, dfs/zk/tls.py), else None."""
    return client_context(key) if split_tls(hosts)[0] else None


def _zk_serving(hosts: str, key: bytes) -> bool:
    tls = _zk_tls(hosts, key)
    for h in split_tls(hosts)[1].split(","):
        host, port = h.rsplit(":", 1)
        if four_letter(host, int(port), "ruok", tls=tls) != "imok":
            return False
    return True


async def _ensure_fs(hosts: str, fsname: str, config: FsConfig, key: bytes) -> FsConfig | None:
    """Create the filesystem with `config` and `key`; None if created, else the existing
    one's settings (its record of ZooKeeper's heap set to config's either way)."""
    zk = await connect(hosts, timeout=30, tls=_zk_tls(hosts, key))
    paths = FsPaths(default_root(fsname))
    zk.authenticate(key, paths.root)
    try:
        await mkfs(zk, paths, config)
        return None
    except DfsError as e:
        if e.errno == errno.EINVAL:
            raise UsageError(e.message) from None  # bad option values: exit 2
        if e.errno != errno.EEXIST:
            raise
        await set_zk_heap(zk, paths, config.zk_heap)
        return await load_config(zk, paths)
    finally:
        await zk.close()


def metrics_address(before: str | None) -> str:
    """The loopback HOST:PORT of a daemon's metrics: the one it had, if still free."""
    if before:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", int(before.rpartition(":")[2])))
                return before
            except OSError:
                pass
    return f"127.0.0.1:{free_port()}"


def up(args: argparse.Namespace) -> int:
    os.umask(0o077)  # for everything made here and by the daemons started here
    state = Path(args.state).absolute()
    (state / "logs").mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    data = _load(state)
    say = lambda msg: print(f"dfs up: {msg}", file=sys.stderr)  # noqa: E731
    key_file = state / f"{args.fs}.key"
    key = load_key(key_file) if key_file.exists() else create_key_file(key_file)

    # ZooKeeper
    hosts = data.get("zk")
    zk_pids = data.get("zk_pids") or []
    servers = data.get("zk_servers", args.zk_servers)
    if servers != args.zk_servers and not zk_pids:
        servers = args.zk_servers
    if args.zk_heap is not None and args.zk_heap < MIN_ZK_HEAP:
        raise UsageError(f"--zk-heap must be at least {MIN_ZK_HEAP >> 20}M")
    heap_mb = (args.zk_heap >> 20) if args.zk_heap else default_heap_mb(servers)
    # --tls: clients reach ZooKeeper over TLS only, as the nodes (README: Security)
    zk_tls = bool(args.tls or data.get("zk_tls"))
    if hosts and zk_pids and all(_ours(p, "QuorumPeerMain") for p in zk_pids) and _zk_serving(hosts, key):
        running = data.get("zk_heap_mb", 256)
        if args.zk_heap and heap_mb != running:
            say(f"ZooKeeper already runs with a {running} MiB heap: 'dfs down' first to change it")
        if zk_tls and not data.get("zk_tls"):
            say("ZooKeeper already runs without TLS: 'dfs down' first to serve it over TLS")
        heap_mb = running
        say(f"ZooKeeper already running at {hosts}")
    else:
        for p in zk_pids:
            if _ours(p, "QuorumPeerMain"):
                stop_pid(p)
        ens = ZkEnsemble(state / "zk", servers, heap_mb=heap_mb,
                         ports=data.get("zk_ports") if servers == data.get("zk_servers") else None,
                         tls_key=key if zk_tls else None)
        ens.start()
        hosts = ens.hosts
        data.update(zk=hosts, zk_ports=ens.ports, zk_servers=servers, zk_heap_mb=heap_mb,
                    zk_pids=[s.proc.pid for s in ens.servers if s.proc], zk_tls=zk_tls)
        _save(state, data)
        say(f"started ZooKeeper ({servers} server{'s' if servers > 1 else ''}, heap {heap_mb} MiB"
            f"{', TLS only' if zk_tls else ''}) at {hosts}")
    data["fs"] = args.fs
    wanted = dataclasses.replace(config_of(args), zk_heap=heap_mb << 20, key_check=key_check(key))
    found = trio.run(_ensure_fs, hosts, args.fs, wanted, key)
    if found is None:
        say(f"created filesystem '{args.fs}': block size {wanted.block_size}, replicas "
            f"{wanted.replicas} (min {wanted.min_replicas}), dead after {wanted.dead_after:g} s, "
            f"inline max {wanted.inline_max}")
    elif any(getattr(found, k) != getattr(wanted, k) for k in MKFS_FIELDS):
        say(f"filesystem '{args.fs}' exists already and keeps its settings ("
            + ", ".join(f"{k} {getattr(found, k):g}" for k in MKFS_FIELDS)
            + "): the mkfs options apply to a new filesystem only")

    # storage nodes
    nodes = data.get("nodes") or []
    while len(nodes) < args.nodes:
        nodes.append({"data": str(state / "nodes" / f"n{len(nodes) + 1}")})
    for i, n in enumerate(nodes[: max(args.nodes, len(nodes))]):
        if _ours(n.get("pid"), "nodes"):
            continue
        Path(n["data"]).mkdir(parents=True, exist_ok=True)
        n["metrics"] = metrics_address(n.get("metrics"))
        proc = NodeProcess(hosts, args.fs, n["data"], log_path=state / "logs" / f"node{i + 1}.log",
                           key_file=key_file, extra_args=["--metrics", n["metrics"]])
        proc.start()
        n.update(pid=proc.pid, node_id=proc.node_id, address=proc.address)
        say(f"started storage node {proc.node_id} at {proc.address} (data {n['data']}), "
            f"metrics at http://{n['metrics']}/metrics")
    data["nodes"] = nodes
    _save(state, data)

    # the mount
    mountpoint = Path(args.mountpoint).absolute()
    m = data.get("mount") or {}
    if is_mounted(mountpoint) and _ours(m.get("pid"), "mount"):
        say(f"already mounted at {mountpoint}")
    else:
        if is_mounted(mountpoint):  # a dead daemon's leftover
            fusermount_unmount(mountpoint, lazy=True)
        at = metrics_address(m.get("metrics"))
        mp = MountProcess(hosts, args.fs, mountpoint, log_path=state / "logs" / "mount.log",
                          key_file=key_file, metrics=at)
        mp.start()
        data["mount"] = {"mountpoint": str(mountpoint), "pid": mp.pid, "metrics": at}
        say(f"mounted '{args.fs}' at {mountpoint}, metrics at http://{at}/metrics")
    _save(state, data)
    print(f"export DFS_ZK={hosts}")
    return 0


def restart_zk(state: Path) -> float:
    """Stop the local cluster's ZooKeeper and start it again on the same ports and
    data (what a crash and a supervisor's restart cost); seconds until it serves."""
    data = _load(state)
    for p in data.get("zk_pids") or []:
        if _ours(p, "QuorumPeerMain"):
            stop_pid(p)
    key = load_key(state / f"{data['fs']}.key") if data.get("zk_tls") else None
    ens = ZkEnsemble(state / "zk", data["zk_servers"], heap_mb=data.get("zk_heap_mb", 256),
                     ports=data["zk_ports"], tls_key=key)
    t = time.monotonic()
    ens.start(timeout=600)
    took = time.monotonic() - t
    data["zk_pids"] = [s.proc.pid for s in ens.servers if s.proc]
    _save(state, data)
    return took


def down(args: argparse.Namespace) -> int:
    state = Path(args.state).absolute()
    data = _load(state)
    if not data:
        print(f"dfs down: nothing recorded in {state}", file=sys.stderr)
        return 0
    m = data.get("mount") or {}
    if m.get("mountpoint") and is_mounted(m["mountpoint"]):
        if not fusermount_unmount(m["mountpoint"]):
            time.sleep(1)
            if not fusermount_unmount(m["mountpoint"]):
                fusermount_unmount(m["mountpoint"], lazy=True)
        print(f"dfs down: unmounted {m['mountpoint']}", file=sys.stderr)
    if _ours(m.get("pid"), "mount"):
        deadline = time.monotonic() + 30
        while pid_alive(m["pid"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop_pid(m["pid"])
    data["mount"] = {k: v for k, v in m.items() if k != "pid"}
    for n in data.get("nodes") or []:
        if _ours(n.get("pid"), "nodes"):
            stop_pid(n["pid"])
            print(f"dfs down: stopped storage node {n.get('node_id', '?')}", file=sys.stderr)
        n.pop("pid", None)
    for p in data.get("zk_pids") or []:
        if _ours(p, "QuorumPeerMain"):
            stop_pid(p)
    if data.get("zk_pids"):
        print("dfs down: stopped ZooKeeper", file=sys.stderr)
    data["zk_pids"] = []
    _save(state, data)
    return 0
