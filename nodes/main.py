"""`python -m nodes`: run one storage node.

    python -m nodes --zk HOSTS --data DIR [--fs NAME] [--listen HOST:PORT] [--zone Z]
                    [--key-file PATH] [--metrics HOST:PORT]

Exit codes: 0 after a clean SIGTERM/SIGINT shutdown; 2 when it cannot start
(ZooKeeper unreachable within --zk-timeout, no filesystem at the root, data
directory unusable or owned by another running node, key file missing, readable
by others or not this filesystem's), with one line on stderr.

Everything the node writes is readable by its owner only (umask 077, and the
data directory itself is made 0700).

The node's knobs (`DFS_*` environment variables, dfs.config.NodeSettings) are
read here, once, and passed down. Background services (the node directory, the
repair leader and gc: nodes/leader/housekeeping.py, the scrub: nodes/scrub.py)
run in a nursery of their own, cancelled first at shutdown; each is restarted after a crash.
"""

import argparse
import fcntl
import logging
import os
import signal
import socket
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Awaitable, Callable

import trio

from dfs import metrics
from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import NodeSettings
from dfs.errors import DfsError, QuietError, ZkUnavailable
from dfs.keys import default_key_file, unlock, zk_tls
from dfs.tls import client_context, server_context
from dfs.paths import FsPaths, default_root
from dfs.zk import connect
from nodes.leader.housekeeping import Housekeeping
from nodes.registration import Registration
from nodes.scrub import Scrubber
from nodes.server import NodeServer
from nodes.store import BlockStore

log = logging.getLogger("nodes")

EXIT_OK, EXIT_USAGE = 0, 2
DRAIN_TIMEOUT = 30.0


async def supervised(name: str, run: Callable[[], Awaitable[None]], *, backoff: float = 1.0) -> None:
    """Run a background service; restart it after a crash instead of taking the node down."""
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("%s failed; restarting in %g s", name, backoff)
            await trio.sleep(backoff)


def parse_args(argv: list[str] | None, settings: NodeSettings) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dfs node", description="run a dfs storage node")
    p.add_argument("--zk", required=True, help="ZooKeeper hosts, host:port[,host:port...]")
    p.add_argument("--fs", default="default", help="filesystem name (default: %(default)s)")
    p.add_argument("--data", required=True, help="data directory for blocks")
    p.add_argument("--listen", default="127.0.0.1:0",
                   help="HOST:PORT to listen on; port 0 picks a free one (default: %(default)s)")
    p.add_argument("--advertise", default="",
                   help="host name clients use to reach this node (default: the listen host, "
                        "or this machine's name when listening on all interfaces)")
    p.add_argument("--zone", default="", help="failure zone (rack, room) for replica placement")
    p.add_argument("--zk-timeout", type=float, default=10.0,
                   help="seconds to wait for ZooKeeper at startup (default: %(default)s)")
    p.add_argument("--heartbeat", type=float, default=settings.heartbeat,
                   help="seconds between live-znode refreshes (default: $DFS_NODE_HEARTBEAT or 2)")
    p.add_argument("--key-file", default=os.environ.get("DFS_KEY_FILE"),
                   help="the cluster key (default: $DFS_KEY_FILE, then ~/.config/dfs/FS.key)")
    p.add_argument("--disk-threads", type=int, default=32, help="worker threads for disk I/O")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (port 0: any free one; default: none)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p.parse_args(argv)


def lock_data_dir(data: Path) -> int:
    """flock the data dir's LOCK file so two nodes never share a directory."""
    fd = os.open(data / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise QuietError(f"data directory {data} is in use by another running node") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def load_node_id(data: Path) -> str:
    """This node's id: read from the data dir, or made up and stored durably on first start."""
    path = data / "node_id"
    try:
        node_id = path.read_text().strip()
        if node_id:
            return node_id
    except FileNotFoundError:
        pass
    node_id = uuid.uuid4().hex[:16]
    tmp = data / "node_id.tmp"
    with open(tmp, "w") as f:
        f.write(node_id + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    return node_id


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise QuietError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def advertised_host(listen_host: str, advertise: str) -> str:
    if advertise:
        return advertise
    if listen_host in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return listen_host


async def serve_node(args: argparse.Namespace, settings: NodeSettings, key_file: Path) -> int:
    data = Path(args.data).resolve()
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        data.chmod(0o700)  # also a data directory made before keys existed
    except OSError as e:
        raise QuietError(f"cannot create data directory {data}: {e.strerror}") from None
    async with AsyncExitStack() as stack:
        # From here on SIGTERM means "shut down cleanly", even during startup.
        signals = stack.enter_context(trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT))
        lock_fd = lock_data_dir(data)
        stack.callback(os.close, lock_fd)
        node_id = load_node_id(data)
        store = BlockStore(data, pause_before_commit=settings.fault_put_pause,
                           syncfs=settings.syncfs)
        await trio.to_thread.run_sync(store.open)

        try:
            zk = await connect(args.zk, timeout=args.zk_timeout, op_timeout=30.0,
                               tls=zk_tls(args.zk, key_file))
        except ZkUnavailable as e:
            raise QuietError(e.message) from None
        stack.push_async_callback(zk.close)
        paths = FsPaths(default_root(args.fs))
        try:
            with trio.fail_after(args.zk_timeout):
                key, config = await unlock(zk, paths, key_file, args.fs)
        except trio.TooSlowError:
            raise QuietError(f"ZooKeeper at {args.zk} did not answer within "
                             f"{args.zk_timeout:g} s") from None
        except DfsError as e:
            raise QuietError(e.message) from None

        host, port = parse_listen(args.listen)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as e:
            raise QuietError(f"cannot listen on {args.listen}: {e.strerror}") from None
        port = listeners[0].socket.getsockname()[1]
        address = f"{advertised_host(host, args.advertise)}:{port}"

        nodedir = NodeDirectory(zk, paths, interval=max(args.heartbeat, 1.0))
        peer_tls = client_context(key) if config.tls else None
        server = NodeServer(store, node_id, key, nodedir, disk_threads=args.disk_threads,
                            tls=server_context(key, data) if config.tls else None,
                            peer_tls=peer_tls, settings=settings)
        metrics_at = ""
        if args.metrics:
            try:
                metrics_at, stop_metrics = metrics.serve(args.metrics)
            except (ValueError, OSError) as e:
                raise QuietError(f"cannot serve metrics on {args.metrics}: {e}") from None
            stack.callback(stop_metrics)
            metrics.NODE_INFO.labels(node_id, args.zone).set(1)

        def usage() -> tuple[int, int, int, int, float]:
            capacity, used, free = store.usage()
            return capacity, used, free, store.block_count, float(server.inflight)

        blocks = BlockClient(nodedir, key=key, reporter=f"node:{node_id}", tls=peer_tls)
        stack.push_async_callback(blocks.aclose)
        scrubber = Scrubber(store, node_id, blocks.report_corrupt, rate=settings.scrub_rate,
                            period=settings.scrub_period, busy=lambda: server.inflight > 0)
        reg = Registration(zk, paths, node_id, address, args.zone, usage, interval=args.heartbeat,
                           details=lambda: {"metrics": metrics_at, "scrub": scrubber.figures()})

        # Listening already: connections queue in the backlog until serve() runs,
        # so the node may be announced before the server task starts.
        try:
            with trio.fail_after(max(args.zk_timeout, 30.0)):
                await reg.register()
        except (trio.TooSlowError, ZkUnavailable):
            raise QuietError(f"could not register with ZooKeeper at {args.zk}") from None

        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve, listeners)
            await nursery.start(reg.run)
            log.info("node %s serving %s on %s (fs %s)%s", node_id, data, address, args.fs,
                     f"; metrics on {metrics_at}" if metrics_at else "")
            services = trio.CancelScope()

            async def run_services() -> None:
                with services:
                    async with trio.open_nursery() as svc:
                        svc.start_soon(supervised, "node directory", nodedir.run)
                        svc.start_soon(supervised, "scrub", scrubber.run)
                        if settings.repair_leader:
                            housekeeping = Housekeeping(zk, paths, config, nodedir, blocks,
                                                        node_id, settings)
                            svc.start_soon(supervised, "repair leader", housekeeping.run)
                        else:
                            # tests of the repair primitives drive repairs themselves: no
                            # node may stand for leader and repair behind their back
                            log.warning("repair leader disabled (DFS_REPAIR_LEADER=0)")

            nursery.start_soon(run_services)
            async for signum in signals:
                log.info("signal %d: draining requests", signum)
                break
            services.cancel()
            server.drain()
            with trio.move_on_after(DRAIN_TIMEOUT):
                while server.inflight:
                    await trio.sleep(0.05)
            with trio.move_on_after(5):
                await reg.unregister()
            nursery.cancel_scope.cancel()
    log.info("node %s stopped", node_id)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    settings = NodeSettings.from_environ(os.environ)
    args = parse_args(argv, settings)
    os.umask(0o077)
    key_file = (Path(args.key_file) if args.key_file
                else default_key_file(args.fs, os.environ.get("XDG_CONFIG_HOME")))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not args.verbose:
        logging.getLogger("dfs.zk").setLevel(logging.WARNING)
    try:
        return trio.run(serve_node, args, settings, key_file)
    except QuietError as e:
        print(f"dfs node: {e}", file=sys.stderr)
        return e.exitcode
    except KeyboardInterrupt:
        return EXIT_OK
