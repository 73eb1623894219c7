"""What every `dfs` subcommand shares: where ZooKeeper and the key are, sizes, exit codes, one-line errors.

Exit codes (DESIGN.md section 7): 0 success; 1 ran and found a problem or
refused; 2 usage or connection error. A command reports a failure by raising
`QuietError(message, exitcode)` (UsageError: exit 2); `run_command` is the one
place that turns it, ZkUnavailable and any other DfsError into one line on
stderr and the exit code, with no traceback.
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable

from dfs.errors import DfsError, QuietError, UsageError, ZkUnavailable
from dfs.keys import default_key_file, unlock, zk_tls
from dfs.paths import FsPaths, default_root
from dfs.zk import ZkClient, connect

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130
STATE_DIR = ".dfs"


def parse_size(text: str) -> int:
    """'4M' -> 4194304; accepts K, M, G suffixes (powers of 1024) and plain bytes."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = t[-1] if t and t[-1] in "KMG" else ""
    try:
        return int(float(t[: len(t) - len(suffix)]) * units[suffix])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def drop_caches() -> bool:
    """Drop the kernel's page cache (root only), so reads that follow come from the filesystem."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '12h', '2d' -> seconds (argparse type)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    scale = units.get(t[-1:], None)
    try:
        value = float(t[:-1] if scale else t) * (scale or 1)
    except ValueError:
        value = -1
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 90s, 30m, 12h, 2d)")
    return value


def human(n: float) -> str:
    """4194304 -> '4.0 MiB' (bytes below 1 KiB as '512 B')."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def local_zk() -> str | None:
    """The ZooKeeper of the cluster `dfs up` started in this directory, if any."""
    state = Path(STATE_DIR) / "cluster.json"
    try:
        return json.loads(state.read_text())["zk"]
    except (OSError, ValueError, KeyError):
        return None


def resolve_zk(args: argparse.Namespace) -> str:
    """--zk (whose default tools/cli.py takes from $DFS_ZK), else the local cluster's."""
    zk = args.zk or local_zk()
    if not zk:
        raise UsageError("no ZooKeeper given: use --zk HOST:PORT, set DFS_ZK, or run 'dfs up' first")
    return zk


def resolve_key_file(args: argparse.Namespace) -> Path:
    """Where the command's key is (dfs/keys.py): --key-file (default $DFS_KEY_FILE), the
    local cluster's <state>/<fs>.key when no ZooKeeper was named, else ~/.config/dfs/<fs>.key."""
    if args.key_file:
        return Path(args.key_file).absolute()
    if not args.zk and local_zk():
        return (Path(STATE_DIR) / f"{args.fs}.key").absolute()
    return default_key_file(args.fs, args.config_home)


async def cluster_key(args: argparse.Namespace, zk: ZkClient) -> bytes:
    """The command's key, checked against the filesystem's (QuietError, exit 2, if it is not)."""
    try:
        key, _ = await unlock(zk, FsPaths(default_root(args.fs)), resolve_key_file(args), args.fs)
    except DfsError as e:
        raise UsageError(e.message) from None
    return key


async def connect_zk(args: argparse.Namespace, op_timeout: float | None = None) -> ZkClient:
    """A session on the command's ZooKeeper, giving up after --zk-timeout (exit 2)."""
    hosts = resolve_zk(args)
    return await connect(hosts, timeout=args.zk_timeout,
                         op_timeout=args.zk_timeout if op_timeout is None else op_timeout,
                         tls=zk_tls(hosts, resolve_key_file(args)) if hosts.startswith("tls:") else None)


def _only_leaf(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested groups (a nursery's), or the group itself."""
    while isinstance(group, BaseExceptionGroup) and len(group.exceptions) == 1:
        group = group.exceptions[0]
    return group


def run_command(command: str, fn: Callable[[], int]) -> int:
    """Run a subcommand; a QuietError or DfsError becomes one line on stderr and its exit code."""
    try:
        try:
            return fn()
        except BaseExceptionGroup as group:  # raised inside a nursery
            raise _only_leaf(group) from None
    except QuietError as e:
        print(f"dfs {command}: {e.message}", file=sys.stderr)
        return e.exitcode
    except ZkUnavailable as e:
        print(f"dfs {command}: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except DfsError as e:
        print(f"dfs {command}: {e}", file=sys.stderr)
        return EXIT_PROBLEM
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
