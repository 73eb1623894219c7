"""`dfs fsck [PATH]`: check (and with --repair, fix) a live filesystem (DESIGN.md section 6).

Like S3QL's fsck, each invariant is one `check_*` method; here they sit in
check groups (walk, namespace, blocks, inodes, housekeeping) over one run
state (state.py: FsckState, which also says how a busy cluster is read), and
`Fsck.run` says in which order they run. Nodes are listed before the
namespace is walked. The orphan, unreachable-inode and gc/report checks need
the whole namespace, so they run only when PATH is `/`.

Repairs (only with --repair; --dry-run prints the plan) are the namespace
fixes of `dfs.meta.repairs`, `dfs.meta` for moving or deleting files, and
the primitives of `dfs.maint`. Without --repair fsck changes nothing.
"""

import argparse
import logging
import os
import sys
import time

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.connection import CONNECT_TIMEOUT
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.errors import DfsError, UsageError
from dfs.mkfs import load_config
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.tls import client_context
from dfs.zk import ZkClient
from tools.common import EXIT_OK, EXIT_PROBLEM, cluster_key, connect_zk
from tools.fsck.blocks import BlockChecks
from tools.fsck.housekeeping import Housekeeping, Leftovers
from tools.fsck.inodes import LostFound, UnreachableInodes
from tools.fsck.namespace import NamespaceChecks
from tools.fsck.report import Progress, Report
from tools.fsck.state import FsckState, Options
from tools.fsck.walk import Walk


class Fsck:
    """One fsck run. `await run()` returns the Report."""

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, nodedir: NodeDirectory,
                 blocks: BlockClient, opts: Options, report: Report | None = None,
                 progress: Progress | None = None):
        report = report or Report()
        progress = progress or Progress(report, out=open(os.devnull, "w"))
        self.state = FsckState(zk, paths, config, nodedir, blocks, opts, report, progress)
        self.names = NamespaceChecks(self.state)
        self.blocks = BlockChecks(self.state)
        self.walk = Walk(self.state, self.names, self.blocks)
        self.lost = LostFound(self.state)
        self.unreachable = UnreachableInodes(self.state, self.walk, self.blocks, self.lost)
        self.leftovers = Leftovers(self.state, self.blocks)
        self.housekeeping = Housekeeping(self.state)

    async def run(self) -> Report:
        s = self.state
        t0 = time.monotonic()
        r = s.report
        r.path = s.opts.path
        r.default_replication = s.config.replicas
        r.min_replication = s.config.min_replicas
        s.progress.set_phase("nodes")
        await s.load()
        await s.list_node_blocks()
        start = await self.walk.resolve(s.opts.path)
        s.full = start[0] == ROOT_INO
        s.progress.set_phase("namespace")
        async with trio.open_nursery() as nursery:
            self.blocks.nursery = nursery
            await self.walk.walk(start)
            if s.full:
                s.progress.set_phase("unreachable inodes")
                await self.unreachable.scan()
                s.progress.set_phase("leftovers")
                await self.leftovers.scan()
        self.blocks.nursery = None
        await self.names.check_file_nlinks()
        await self.names.check_dir_links()
        if s.full:
            s.progress.set_phase("housekeeping")
            await self.housekeeping.check_gc_entries()
            await self.housekeeping.check_repair_reports()
            s.progress.set_phase("orphan blocks")
            await self.housekeeping.check_orphan_blocks()
        if s.lost_files:
            await self.lost.repair_lost_files()
        if s.opts.repair:
            r.unrepaired = sum(1 for p in r.problems if not p.repair.startswith("repaired"))
        r.finish(time.monotonic() - t0)
        s.progress.close()
        return r


# ====================================================================== command line

async def run_fsck(args: argparse.Namespace, out=sys.stdout) -> int:
    opts = Options(path=args.path or "/", repair=args.repair, dry_run=args.dry_run,
                   verify_data=args.verify_data, lost_found=args.lost_found, orphan_age=args.orphan_age)
    if opts.orphan_age < 0:
        raise UsageError("--orphan-age must be >= 0")
    if args.node_timeout <= 0:
        raise UsageError("--node-timeout must be > 0")
    if not opts.path.startswith("/"):
        opts.path = "/" + opts.path
    zk = await connect_zk(args, op_timeout=max(args.zk_timeout, 30.0))
    blocks = None
    try:
        paths = FsPaths(default_root(args.fs))
        key = await cluster_key(args, zk)  # first: the key opens ZooKeeper
        try:
            config = await load_config(zk, paths)
        except DfsError as e:
            raise UsageError(e.message) from None
        nodedir = NodeDirectory(zk, paths)
        blocks = BlockClient(nodedir, key=key, reporter="fsck", request_timeout=args.node_timeout,
                             tls=client_context(key) if config.tls else None,
                             connect_timeout=min(args.node_timeout, CONNECT_TIMEOUT))
        report = Report()
        report = await Fsck(zk, paths, config, nodedir, blocks, opts, report, Progress(report)).run()
    finally:
        if blocks is not None:
            await blocks.aclose()
        await zk.close()
    if args.json:
        report.write_json(out)
    else:
        report.write_text(out)
    if opts.repair and not opts.dry_run:
        return EXIT_OK if report.unrepaired == 0 else EXIT_PROBLEM
    return EXIT_OK if report.healthy else EXIT_PROBLEM


def main(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):  # tools.cli quiets dfs.zk already
        logging.getLogger("dfs").setLevel(logging.ERROR)
    return trio.run(run_fsck, args)
