"""The `dfs` console script: one argparse front end, one module per subcommand.

Exit codes (DESIGN.md section 7): 0 success; 1 ran and found a problem or refused;
2 usage or connection error (one clear line on stderr, no traceback: every
subcommand runs inside tools.common.run_command). `--zk` defaults to $DFS_ZK
(read here, the only place), then to the local cluster started by `dfs up`.
A subcommand's module is imported only when it runs.
"""

import argparse
import logging
import os
import sys
from typing import Callable

from tools.common import (EXIT_USAGE, STATE_DIR, parse_duration, parse_size, resolve_key_file, resolve_zk,
                          run_command)


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zk", default=os.environ.get("DFS_ZK"),
                   help="ZooKeeper hosts, host:port[,host:port...] (default: $DFS_ZK, "
                        "then the local cluster of 'dfs up')")
    p.add_argument("--fs", default="default", help="filesystem name (default: %(default)s)")
    p.add_argument("--zk-timeout", type=float, default=10.0,
                   help="seconds to wait for ZooKeeper before giving up (default: %(default)s)")
    p.add_argument("--key-file", default=os.environ.get("DFS_KEY_FILE"),
                   help="the cluster key (default: $DFS_KEY_FILE, then the local cluster's, "
                        "then ~/.config/dfs/FS.key; README: Security)")
    p.set_defaults(config_home=os.environ.get("XDG_CONFIG_HOME"))
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_mkfs_options(p: argparse.ArgumentParser) -> None:
    """The settings of a new filesystem (`dfs mkfs`, and `dfs up` when it creates one)."""
    p.add_argument("--block-size", type=parse_size, default=4 << 20, help="default: 4M")
    p.add_argument("--replicas", type=int, default=3, help="copies of each block (default: 3)")
    p.add_argument("--min-replicas", type=int, default=2,
                   help="copies a write needs to succeed (default: 2)")
    p.add_argument("--dead-after", type=float, default=30.0,
                   help="seconds a node may be gone before repair starts (default: 30)")
    p.add_argument("--inline-max", type=parse_size, default=4096,
                   help="files up to this size keep their bytes in ZooKeeper, not in blocks"
                        " (default: 4096; 0: never; at most 64K)")
    p.add_argument("--trash-days", type=float, default=1.0,
                   help="days a removed file stays in 'dfs trash' (default: 1; 0: off; "
                        "fractions allowed; 'dfs config set trash_days N' changes it)")
    p.add_argument("--tls", action="store_true",
                   help="encrypt the node protocol (TLS 1.3 with a CA derived from the key; "
                        "dfs up: ZooKeeper's client port too; README: Security)")


# ------------------------------------------------------------------ subcommands

def exec_module(module: str, argv: list[str]) -> int:
    """Run a daemon module (nodes, mount) in place of this process: tools never import them."""
    os.execv(sys.executable, [sys.executable, "-m", module, *argv])
    return EXIT_USAGE  # not reached


def daemon_argv(args: argparse.Namespace, extra: list[str]) -> list[str]:
    argv = ["--zk", resolve_zk(args), "--fs", args.fs, "--zk-timeout", str(args.zk_timeout),
            "--key-file", str(resolve_key_file(args))]
    if args.verbose:
        argv.append("--verbose")
    return argv + extra


def cmd_node(args: argparse.Namespace) -> int:
    extra = ["--data", args.data, "--listen", args.listen]
    if args.metrics:
        extra += ["--metrics", args.metrics]
    if args.zone:
        extra += ["--zone", args.zone]
    return exec_module("nodes", daemon_argv(args, extra))


def cmd_mount(args: argparse.Namespace) -> int:
    extra = [args.mountpoint]
    if args.foreground:
        extra.append("--foreground")
    if args.metrics:
        extra += ["--metrics", args.metrics]
    for o in args.o or []:
        extra += ["-o", o]
    return exec_module("mount", daemon_argv(args, extra))


def add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (README: Monitoring)")


def optional(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfs", description="dfs: a highly available distributed filesystem")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("up", help="start a local ZooKeeper, storage nodes and the mount")
    p.add_argument("--nodes", type=int, default=3, help="storage nodes (default: %(default)s)")
    p.add_argument("--mountpoint", default="mnt", help="where to mount (default: ./%(default)s)")
    p.add_argument("--zk-servers", type=int, default=1, choices=(1, 3),
                   help="ZooKeeper servers: 1 or a 3-server ensemble (default: %(default)s)")
    p.add_argument("--zk-heap", type=parse_size, default=None, metavar="SIZE",
                   help="each ZooKeeper server's heap, e.g. 2G (default: a quarter of the "
                        "machine's memory over the servers, at least 512M, at most 8G); creates "
                        "stop before it is full")
    p.add_argument("--fs", default="default", help="filesystem name (default: %(default)s)")
    p.add_argument("--state", default=STATE_DIR, help="state directory (default: ./%(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    add_mkfs_options(p)
    p.set_defaults(func=optional("tools.local.cluster", "up"))

    p = sub.add_parser("down", help="unmount and stop everything 'dfs up' started")
    p.add_argument("--state", default=STATE_DIR, help="state directory (default: ./%(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=optional("tools.local.cluster", "down"))

    p = sub.add_parser("mkfs", help="create a filesystem (refuses to overwrite one)")
    add_common(p)
    add_mkfs_options(p)
    p.add_argument("--zk-heap", type=parse_size, default=1 << 30, metavar="SIZE",
                   help="each ZooKeeper server's heap (its -Xmx): creates stop before the "
                        "namespace fills it (default: 1G; 'dfs up' sets its own)")
    p.set_defaults(func=optional("tools.mkfs", "main"))

    p = sub.add_parser("keygen", help="put a filesystem made without a key under one, "
                                      "or --rotate its key")
    add_common(p)
    p.add_argument("--rotate", action="store_true",
                   help="replace the key (stop every node and mount first; README: Security)")
    p.set_defaults(func=optional("tools.mkfs", "keygen"))

    p = sub.add_parser("node", help="run a storage node")
    add_common(p)
    p.add_argument("--data", required=True, help="directory that holds the blocks")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    p.add_argument("--zone", default="", help="failure zone (replicas spread across zones)")
    add_metrics(p)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser("mount", help="mount a filesystem")
    add_common(p)
    p.add_argument("mountpoint")
    p.add_argument("--foreground", action="store_true", help="do not daemonize")
    p.add_argument("-o", action="append", metavar="OPTION", help="mount options (allow_other, ...)")
    add_metrics(p)
    p.set_defaults(func=cmd_mount)

    p = sub.add_parser("fsck", help="check (and repair) a live filesystem")
    add_common(p)
    p.add_argument("path", nargs="?", default="/", help="subtree to check (default: /)")
    p.add_argument("--repair", action="store_true", help="fix what can be fixed")
    p.add_argument("--dry-run", action="store_true", help="with --repair: show the plan only")
    p.add_argument("--verify-data", action="store_true", help="nodes re-read and re-hash every replica")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--lost-found", choices=("move", "delete"), default="move",
                   help="with --repair: what to do with files whose data is lost")
    p.add_argument("--orphan-age", type=float, default=3600.0,
                   help="seconds before an unreferenced block counts as an orphan (default: 3600)")
    p.add_argument("--node-timeout", type=float, default=30.0,
                   help="seconds a node may take per request; a slow block listing gets 10x that "
                        "once more before the node counts as unreachable (default: 30)")
    p.set_defaults(func=optional("tools.fsck.check", "main"))

    p = sub.add_parser("status", help="nodes, health, repair queue and scrub coverage")
    add_common(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--watch", action="store_true",
                   help="a live view, redrawn until interrupted (Ctrl-C)")
    p.add_argument("--interval", type=float, default=2.0,
                   help="seconds between redraws with --watch (default: %(default)s)")
    p.set_defaults(func=optional("tools.status", "main"))

    p = sub.add_parser("drain", help="move every block off a node, then retire it")
    add_common(p)
    p.add_argument("node_id", metavar="NODE-ID")
    p.add_argument("--wait", type=float, default=3600.0, help="seconds to wait for the drain")
    p.set_defaults(func=optional("tools.drain", "main"))

    p = sub.add_parser("whatif", help="which files would be lost if nodes went down now")
    add_common(p)
    p.add_argument("--down", required=True, metavar="NODE[,NODE...]",
                   help="node ids (or unique prefixes) as 'dfs status' shows them")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=optional("tools.whatif", "main"))

    p = sub.add_parser("why", help="one file's blocks, replicas, repair state and open holders")
    add_common(p)
    p.add_argument("path", nargs="?", help="path inside the filesystem (e.g. /dir/file)")
    p.add_argument("--ino", type=int, help="an inode number instead of a path (unlinked files)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=optional("tools.why", "main"))

    p = sub.add_parser("trash", help="removed files: list, restore, purge (README: Trash)")
    tsub = p.add_subparsers(dest="trash_command", required=True, metavar="ACTION")
    q = tsub.add_parser("ls", help="the files in the trash (below PATH, by original path)")
    add_common(q)
    q.add_argument("path", nargs="?", default="/", help="original path prefix (default: /)")
    q.add_argument("--json", action="store_true", help="one JSON document on stdout")
    q = tsub.add_parser("restore", help="give a trashed file its name back (never overwrites)")
    add_common(q)
    q.add_argument("what", metavar="PATH-OR-ID", help="original path (its newest entry) or the ID 'ls' shows")
    q.add_argument("--to", metavar="DEST", help="restore there instead (an existing directory: into it)")
    q = tsub.add_parser("purge", help="delete trashed files now (their blocks are freed)")
    add_common(q)
    q.add_argument("--older-than", type=parse_duration, default=0.0, metavar="DURATION",
                   help="only entries removed longer ago than this: 90s, 30m, 12h, 2d (default: all)")
    p.set_defaults(func=optional("tools.trash", "main"))

    p = sub.add_parser("config", help="show or change the filesystem's settings")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    add_common(csub.add_parser("show", help="every setting, as JSON"))
    q = csub.add_parser("set", help="change a setting of a live filesystem (trash_days)")
    add_common(q)
    q.add_argument("name")
    q.add_argument("value", type=float)
    p.set_defaults(func=optional("tools.trash", "config_main"))

    p = sub.add_parser("setrep", help="copies of each block for a file, or for what a directory holds")
    add_common(p)
    p.add_argument("path", help="path inside the filesystem (e.g. /dir)")
    p.add_argument("replicas", type=int, metavar="N", help="copies of each block")
    p.add_argument("-r", "--recursive", action="store_true",
                   help="also rewrite the files and directories already below PATH")
    p.set_defaults(func=optional("tools.setrep", "main"))

    p = sub.add_parser("bench", help="throughput and metadata benchmark on a directory")
    p.add_argument("dir", nargs="?", default="mnt")
    p.add_argument("--size", type=parse_size, default=1 << 30, help="big-file size (default: 1G)")
    p.add_argument("--files", type=int, default=2000, help="small files (default: 2000)")
    p.add_argument("--scale", type=int, default=0, metavar="N",
                   help="instead: create N empty files and report what they cost ZooKeeper")
    p.add_argument("--tree", action="store_true",
                   help="instead: tar -x, cp -a, rsync -a, ls -lR, rm -rf of a generated tree and a git clone")
    p.add_argument("--window", action="store_true",
                   help="instead: what a SIGKILLed mount loses of its acknowledged, uncommitted "
                        "unlinks and chmods, under load (--files of each, -w loaders)")
    p.add_argument("--repair", action="store_true",
                   help="instead: write --size of files, SIGKILL a node of 'dfs up' (4 or more), and time "
                        "the blocks' return to 2 and to all copies")
    p.add_argument("--tree-files", type=int, default=3000, help="with --tree: files (default: 3000)")
    p.add_argument("--commits", type=int, default=3000, help="with --tree: commits of the cloned repository")
    p.add_argument("--scratch", default="/tmp/dfs-bench-tree",
                   help="with --tree: local directory for the source tree, archive and repository")
    p.add_argument("-w", "--writers", type=int, default=8, help="with --scale: writer processes; with --window: loaders")
    p.add_argument("--zk", default=os.environ.get("DFS_ZK"), help="with --scale: for fsck "
                   "(default: $DFS_ZK, then the local cluster of 'dfs up')")
    p.add_argument("--fs", default="default", help="with --scale: filesystem name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=optional("tools.bench", "main"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not verbose:
        # the ZooKeeper client's reconnect chatter would break "one clear line on stderr"
        logging.getLogger("dfs.zk").setLevel(logging.CRITICAL)
    return run_command(args.command, lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
