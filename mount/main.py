"""`dfs mount`: connect, mount, serve; daemonizes unless --foreground.

Daemonizing re-runs this module with --foreground in a new session and waits
until it reports the mount ready through a pipe (or exits with its error), so a
failure never leaves a half-mounted directory and the caller gets the real exit
code. SIGTERM/SIGINT and `fusermount3 -u` flush every open file, then unmount.
"""

import argparse
import logging
import os
import signal
import subprocess
import sys
import uuid

import pyfuse3
import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.nodedir import NodeDirectory
from dfs.client.files import FileData
from dfs.client.removals import Removals
from dfs.errors import DfsError, ZkUnavailable
from dfs.meta.store import Meta
from dfs.mkfs import load_config
from dfs.paths import FsPaths, default_root
from dfs.zk import connect
from mount.operations import Operations, log_op_stats

log = logging.getLogger("dfs.mount")
EXIT_USAGE = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dfs mount", description="mount a dfs filesystem")
    p.add_argument("mountpoint")
    p.add_argument("--zk", required=True)
    p.add_argument("--fs", default="default")
    p.add_argument("--zk-timeout", type=float, default=10.0)
    p.add_argument("--foreground", action="store_true")
    p.add_argument("-o", action="append", default=[], metavar="OPTION",
                   help="allow_other, attr_timeout=S, entry_timeout=S, feed_timeout=S, cache_mb=N, "
                        "sync_dirops, debug")
    p.add_argument("--log", help="log file of the daemon (default: stderr in the foreground)")
    p.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def parse_options(opts: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for group in opts:
        for o in group.split(","):
            if not o:
                continue
            k, _, v = o.partition("=")
            out[k] = v
    known = {"allow_other", "attr_timeout", "entry_timeout", "feed_timeout", "cache_mb", "sync_dirops",
             "debug", "ro", "rw"}
    unknown = set(out) - known
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return out


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


async def serve(args: argparse.Namespace, opts: dict[str, str]) -> int:
    try:
        zk = await connect(args.zk, timeout=args.zk_timeout)
    except ZkUnavailable as e:
        print(f"dfs mount: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    paths = FsPaths(default_root(args.fs))
    try:
        config = await load_config(zk, paths)
    except DfsError as e:
        print(f"dfs mount: {e.message}", file=sys.stderr)
        await zk.close()
        return EXIT_USAGE
    mount_id = uuid.uuid4().hex[:16]
    files: FileData | None = None
    meta = Meta(zk, paths, config, mount_id=mount_id, is_open=lambda ino: files is not None and files.is_open(ino))
    nodedir = NodeDirectory(zk, paths)
    blocks = BlockClient(nodedir)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(nodedir.run)
            # lookups, attributes and listings answered locally, kept exact by
            # ZooKeeper's change feed (dfs.client.feed)
            await nursery.start(meta.enable_cache().run, zk)
            files = FileData(meta, blocks, nursery,
                             cache_bytes=int(opts.get("cache_mb", 1024)) << 20)
            # unlink/rmdir answered at once and committed in the background
            # (dfs.client.removals) unless -o sync_dirops
            removals = None if "sync_dirops" in opts else Removals(meta)
            if removals is not None:
                nursery.start_soon(removals.run)
            ops = Operations(meta, files, nodedir,
                             attr_timeout=float(opts.get("attr_timeout", 1.0)),
                             entry_timeout=float(opts.get("entry_timeout", 1.0)),
                             removals=removals, async_creates="sync_dirops" not in opts,
                             feed_timeout=float(opts.get("feed_timeout", 10.0)))
            fuse_opts = set(pyfuse3.default_options)
            fuse_opts |= {f"fsname=dfs:{args.fs}", "subtype=dfs", "default_permissions"}
            if "allow_other" in opts:
                fuse_opts.add("allow_other")
            if "debug" in opts:
                fuse_opts.add("debug")
            target = os.path.realpath(args.mountpoint)
            try:
                pyfuse3.init(ops, args.mountpoint, fuse_opts)
            except RuntimeError as e:
                print(f"dfs mount: cannot mount on {args.mountpoint}: {e}", file=sys.stderr)
                nursery.cancel_scope.cancel()
                return EXIT_USAGE
            set_read_ahead(target)
            if args.ready_fd is not None:
                os.write(args.ready_fd, b"ready\n")
                os.close(args.ready_fd)
            nursery.start_soon(stop_on_signal, files, removals)
            try:
                await pyfuse3.main()
            finally:
                with trio.CancelScope(shield=True):
                    await files.flush_all()
                    await meta.drain_creates()
                    if removals is not None:
                        await removals.drain()
                if meta.cache is not None:
                    meta.cache.kernel = None  # the kernel side is gone with the session
                pyfuse3.close(unmount=True)
                log_op_stats()
                log.info("meta: %s; feed: %s; removals: %s", meta.stats,
                         meta.cache.stats if meta.cache else None,
                         removals.stats if removals else None)
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await blocks.aclose()
            await zk.close()
    return 0


async def stop_on_signal(files: FileData, removals: Removals | None) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            log.info("signal: flushing and unmounting")
            await files.flush_all()
            await files.meta.drain_creates()
            if removals is not None:
                await removals.drain()
            pyfuse3.terminate()
            return


def daemonize(argv: list[str], args: argparse.Namespace) -> int:
    """Start the foreground daemon in a new session; return once it is mounted."""
    rfd, wfd = os.pipe()
    log_path = args.log or f"/tmp/dfs-mount.{os.getuid()}.{os.getpid()}.log"
    cmd = [sys.executable, "-m", "mount", *argv, "--foreground", "--ready-fd", str(wfd),
           "--log", log_path]
    with open(log_path, "ab") as logf:
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
    print(err or f"dfs mount: the mount process exited with {rc} (log: {log_path})", file=sys.stderr)
    return rc or 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        opts = parse_options(args.o)
        for key in ("attr_timeout", "entry_timeout", "cache_mb"):
            if key in opts:
                float(opts[key])
    except ValueError as e:
        print(f"dfs mount: {e}", file=sys.stderr)
        return EXIT_USAGE
    if not os.path.isdir(args.mountpoint):
        print(f"dfs mount: {args.mountpoint} is not a directory", file=sys.stderr)
        return EXIT_USAGE
    if os.path.ismount(args.mountpoint):
        print(f"dfs mount: {args.mountpoint} is already a mount point", file=sys.stderr)
        return EXIT_USAGE
    if not args.foreground:
        return daemonize([a for a in argv], args)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        filename=None if args.ready_fd is None else args.log,
    )
    return trio.run(serve, args, opts)
