"""`dfs mount`: connect, mount, serve; daemonizes unless --foreground.

Daemonizing re-runs this module with --foreground in a new session and waits
until it reports the mount ready through a pipe (or exits with its error), so a
failure never leaves a half-mounted directory and the caller gets the real exit
code. SIGTERM/SIGINT and `fusermount3 -u` flush every open file, then unmount.

Wiring: every resource goes into one AsyncExitStack as it is acquired (the
ZooKeeper session, the block client, the services' nursery, the FUSE session)
and is released in reverse; failures are QuietErrors, one line and an exit code.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Awaitable, Callable

import pyfuse3
import trio

from dfs import metrics
from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.client.attrs import AttrJournal
from dfs.client.creates import Creates
from dfs.client.files import FileData
from dfs.client.leases import DirLeases
from dfs.client.locks import MountLocks
from dfs.client.removals import Removals
from dfs.client.view import ClientView
from dfs.config import MountSettings
from dfs.errors import DfsError, QuietError, ZkUnavailable
from dfs.keys import default_key_file, unlock, zk_tls
from dfs.tls import client_context
from dfs.meta.locks import LockTable
from dfs.paths import FsPaths, default_root
from dfs.zk import connect
from mount.kernel import Kernel
from mount.operations import Operations
from mount.stats import log_op_stats
from mount.tasks import ignore_until_served, serve_dumps

log = logging.getLogger("dfs.mount")
EXIT_USAGE = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dfs mount", description="mount a dfs filesystem")
    p.add_argument("mountpoint")
    p.add_argument("--zk", required=True)
    p.add_argument("--fs", default="default")
    p.add_argument("--zk-timeout", type=float, default=10.0)
    p.add_argument("--foreground", action="store_true")
    p.add_argument("--key-file", default=os.environ.get("DFS_KEY_FILE"),
                   help="the cluster key (default: $DFS_KEY_FILE, then ~/.config/dfs/FS.key)")
    p.add_argument("-o", action="append", default=[], metavar="OPTION",
                   help="allow_other, attr_timeout=S, entry_timeout=S, feed_timeout=S, cache_mb=N, "
                        "zk_wait=S (default 60), sync_dirops, debug")
    p.add_argument("--log", help="log file of the daemon (default: stderr in the foreground)")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics there (port 0: any free one; default: none)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def set_read_ahead(target: str, kb: int = 4096) -> None:
    """Let the kernel send 1 MiB+ reads: raise read_ahead_kb of the mount's bdi.

    `target` must be the already resolved path: resolving it now would stat the
    mountpoint, a FUSE request to ourselves before our loop runs (deadlock).
    """
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                parts = line.split()
                if parts[4] == target:
                    dev = parts[2]
            with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as ra:
                ra.write(str(kb))
    except (OSError, UnboundLocalError) as e:
        log.info("could not raise read_ahead_kb: %s", e)


def shielded(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A cleanup that must finish even while everything is being cancelled."""
    async def run() -> None:
        with trio.CancelScope(shield=True):
            await fn()
    return run


async def serve(args: argparse.Namespace, settings: MountSettings, key_file: Path) -> int:
    async with AsyncExitStack() as stack:
        try:
            # an operation waits at most zk_wait in all for an unreachable ZooKeeper
            zk = await connect(args.zk, timeout=args.zk_timeout, op_timeout=settings.zk_wait,
                               bound_outage=True, tls=zk_tls(args.zk, key_file))
        except ZkUnavailable as e:
            raise QuietError(f"dfs mount: {e.message}", EXIT_USAGE) from None
        stack.push_async_callback(shielded(zk.close))
        paths = FsPaths(default_root(args.fs))
        try:
            key, config = await unlock(zk, paths, key_file, args.fs)
        except (QuietError, DfsError) as e:
            raise QuietError(f"dfs mount: {e.message}", EXIT_USAGE) from None
        if args.metrics:
            try:
                metrics_at, stop_metrics = metrics.serve(args.metrics)
            except (ValueError, OSError) as e:
                raise QuietError(f"dfs mount: cannot serve metrics on {args.metrics}: {e}",
                                 EXIT_USAGE) from None
            stack.callback(stop_metrics)
            log.info("metrics on %s", metrics_at)
        mount_id = uuid.uuid4().hex[:16]
        view = ClientView(zk, paths, config, mount_id=mount_id, fresh_for=settings.attr_timeout)
        await zk.ensure_path(paths.locks)  # filesystems made before locks/ existed
        await view.writer.register()  # the record this mount's block ids name (dfs.meta.writers)
        nodedir = NodeDirectory(zk, paths)
        blocks = BlockClient(nodedir, key=key, tls=client_context(key) if config.tls else None)
        stack.push_async_callback(shielded(blocks.aclose))
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)  # (runs before the nursery waits)
        nursery.start_soon(serve_dumps)  # SIGUSR1: the task tree into the log (mount/tasks.py)
        await nursery.start(nodedir.run)
        # lookups, attributes and listings answered locally, kept exact by
        # ZooKeeper's change feed (dfs.client.feed)
        await nursery.start(view.feed.run, zk)
        nursery.start_soon(view.capacity.run)  # creates fail with ENOSPC while ZooKeeper is full
        files = FileData(view, blocks, nursery, cache_bytes=settings.cache_mb << 20)
        locks = MountLocks(LockTable(zk, paths, mount_id), files)
        # creates, unlink and rmdir answered at once and committed in the
        # background (dfs.client.creates, dfs.client.removals) unless -o sync_dirops
        creates = None if settings.sync_dirops else Creates(view, nursery)
        removals = None if settings.sync_dirops else Removals(view)
        if removals is not None:
            nursery.start_soon(removals.run)
        # chmod, chown and utimens likewise (dfs.client.attrs)
        journal = None if settings.sync_dirops else AttrJournal(view)
        if journal is not None:
            files.journal = journal
            journal.on_committed = files.saw_own_change
            nursery.start_soon(journal.run)
        # O_EXCL creates answered at once in the directories this mount holds
        # the lease of (dfs.client.leases), the ones it makes above all
        leases = None if creates is None or removals is None else DirLeases(view, [creates, removals])
        if leases is not None:
            nursery.start_soon(leases.run)
        if removals is not None and journal is not None:
            async def settle() -> None:  # before a lock goes (dfs.client.locks)
                await journal.drain()
                await removals.drain()

            locks.settle = settle
        kernel = Kernel(view, files, attr_timeout=settings.attr_timeout,
                        entry_timeout=settings.entry_timeout, feed_timeout=settings.feed_timeout,
                        journal=journal)
        ops = Operations(view, files, kernel, nodedir, locks, creates=creates, removals=removals,
                         journal=journal, leases=leases)

        async def drain() -> None:
            if journal is not None:
                await journal.drain()
            await files.flush_all()
            if creates is not None:
                await creates.drain()
            if removals is not None:
                await removals.drain()

        fuse_opts = set(pyfuse3.default_options)
        fuse_opts |= {f"fsname=dfs:{args.fs}", "subtype=dfs", "default_permissions"}
        if settings.allow_other:
            fuse_opts.add("allow_other")
        if settings.debug:
            fuse_opts.add("debug")
        if settings.ro:
            fuse_opts.add("ro")
        target = os.path.realpath(args.mountpoint)
        try:
            pyfuse3.init(ops, args.mountpoint, fuse_opts)
        except RuntimeError as e:
            nursery.cancel_scope.cancel()
            failed = f"dfs mount: cannot mount on {args.mountpoint}: {e}"
        else:
            failed = None

            async def unmount() -> None:
                kernel.detach()  # the kernel side is gone with the session
                pyfuse3.close(unmount=True)
                log_op_stats()
                log.info("meta: %s; view: %s; feed: %s; removals: %s; attributes: %s; leases: %s %s",
                         view.meta.stats, view.stats, view.feed.stats, removals.stats if removals else None,
                         journal.stats if journal else None, view.leases.stats,
                         leases.stats if leases else None)

            stack.push_async_callback(unmount)
            stack.push_async_callback(shielded(drain))
            set_read_ahead(target)
            if args.ready_fd is not None:
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
            nursery.start_soon(stop_on_signal, drain)
            await pyfuse3.main()
    if failed is not None:
        raise QuietError(failed, EXIT_USAGE)
    return 0


async def stop_on_signal(drain: Callable[[], Awaitable[None]]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal: flushing and unmounting")
            await drain()
            pyfuse3.terminate()
            return


def daemonize(argv: list[str], args: argparse.Namespace) -> int:
    """Start the foreground daemon in a new session; return once it is mounted."""
    rfd, wfd = os.pipe()
    log_path = args.log or f"/tmp/dfs-mount.{os.getuid()}.{os.getpid()}.log"
    cmd = [sys.executable, "-m", "mount", *argv, "--foreground", "--ready-fd", str(wfd),
           "--log", log_path]
    # owner-only, like every state file (it names paths); appended to when a path is given
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.PIPE,
                                pass_fds=(wfd,), start_new_session=True)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        ready = r.readline()
    if ready == b"ready\n":
        proc.stderr.close()  # type: ignore[union-attr]
        return 0
    err = proc.stderr.read().decode(errors="replace").strip()  # type: ignore[union-attr]
    rc = proc.wait()
    if not args.log and os.path.getsize(log_path) == 0:  # nothing in it: no litter in /tmp
        os.unlink(log_path)
    print(err or f"dfs mount: the mount process exited with {rc}"
          + (f" (log: {log_path})" if os.path.exists(log_path) else ""), file=sys.stderr)
    return rc or 1


def check_mountpoint(path: str) -> None:
    if not os.path.isdir(path):
        raise QuietError(f"dfs mount: {path} is not a directory", EXIT_USAGE)
    if os.path.ismount(path):
        raise QuietError(f"dfs mount: {path} is already a mount point", EXIT_USAGE)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        try:
            settings = MountSettings.from_options(args.o)
        except ValueError as e:
            raise QuietError(f"dfs mount: {e}", EXIT_USAGE) from None
        check_mountpoint(args.mountpoint)
        key_file = (Path(args.key_file) if args.key_file
                else default_key_file(args.fs, os.environ.get("XDG_CONFIG_HOME")))
        if not args.foreground:
            return daemonize(list(argv), args)
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            filename=None if args.ready_fd is None else args.log,
        )
        ignore_until_served()
        return trio.run(serve, args, settings, key_file)
    except QuietError as e:
        print(e.message, file=sys.stderr)
        return e.exitcode
