"""`dfs whatif --down NODE[,NODE...]`: which files would be lost if those nodes were gone now.

From the block maps (the one walk, dfs.maint.scan) and the live set: a replica
survives when its node is live, not named in --down, and no corrupt report
stands against it. Nodes already gone count as down. A file is *lost* when one
of its blocks keeps no surviving replica, *single-copy* when one keeps exactly
one (and none is lost). Inline files (bytes in ZooKeeper) have no blocks and
are never lost. Paths come from a namespace walk, made only when some file is
at risk; an inode no directory names (unlinked but held open) has no path.

Exit codes: 0 nothing would be lost; 1 something would; 2 usage (an unknown or
ambiguous node id) or connection error.
"""

import argparse
import json
import stat
from dataclasses import dataclass, field

import trio

from dfs.errors import DfsError, QuietError, UsageError
from dfs.maint import cluster
from dfs.maint.scan import block_groups
from dfs.meta import Meta
from dfs.mkfs import load_config
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.zk import ZkClient
from tools.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, cluster_key, connect_zk

WALKERS = 8  # directories listed at once by paths_of


@dataclass
class Risk:
    """What losing `down` (plus the nodes gone already) does to the block maps."""

    down: list[str]
    already_down: list[str]
    total_blocks: int = 0
    lost: dict[int, int] = field(default_factory=dict)  # ino -> blocks left with no copy
    single: dict[int, int] = field(default_factory=dict)  # ino -> blocks left with one copy
    lost_now: set[int] = field(default_factory=set)  # inodes unreadable already


def resolve_nodes(names: list[str], known: set[str]) -> list[str]:
    """Node ids from ids or unique prefixes; UsageError names what matches none or many."""
    out = []
    for name in names:
        hits = [n for n in known if n.startswith(name)] if name else []
        if name in known:
            hits = [name]
        if len(hits) != 1:
            why = "matches no node" if not hits else f"is ambiguous ({', '.join(sorted(hits))})"
            raise UsageError(f"node {name!r} {why}; see 'dfs status'")
        out.append(hits[0])
    return sorted(set(out))


async def assess(zk: ZkClient, paths: FsPaths, down: list[str]) -> Risk:
    """The files at risk if `down` (node ids) were gone now."""
    regs = await cluster.registry(zk, paths)
    live = set(await cluster.live_nodes(zk, paths))
    bad = {(r.block_id, r.node_id) for r in (await cluster.corrupt_reports(zk, paths)).values()}
    risk = Risk(down, sorted(n for n, reg in regs.items() if n not in live and reg.state != "retired"))
    survivors = live - set(down)
    async for mg in block_groups(zk, paths):
        for ref in mg.blocks.blocks.values():
            risk.total_blocks += 1
            left = sum(n in survivors and (ref.id, n) not in bad for n in ref.replicas)
            if left == 0:
                risk.lost[mg.ino] = risk.lost.get(mg.ino, 0) + 1
                if not any(n in live and (ref.id, n) not in bad for n in ref.replicas):
                    risk.lost_now.add(mg.ino)
            elif left == 1:
                risk.single[mg.ino] = risk.single.get(mg.ino, 0) + 1
    for ino in risk.lost:
        risk.single.pop(ino, None)
    return risk


async def paths_of(meta: Meta, inos: set[int]) -> dict[int, list[str]]:
    """Every path naming one of `inos` (a walk of the whole namespace, WALKERS directories at once)."""
    found: dict[int, list[str]] = {}
    limit = trio.CapacityLimiter(WALKERS)

    async def walk(ino: int, path: str, nursery: trio.Nursery) -> None:
        async with limit:
            try:
                entries = await meta.readdir(ino)
            except DfsError:  # removed while we walk
                return
        for name, ent, _ in entries:
            p = f"{path.rstrip('/')}/{name.decode(errors='surrogateescape')}"
            if ent.ino in inos:
                found.setdefault(ent.ino, []).append(p)
            if stat.S_ISDIR(ent.mode):
                nursery.start_soon(walk, ent.ino, p, nursery)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(walk, ROOT_INO, "/", nursery)
    return {ino: sorted(ps) for ino, ps in found.items()}


def file_list(counts: dict[int, int], names: dict[int, list[str]], now: set[int]) -> list[dict]:
    return [{"ino": ino, "paths": names.get(ino, []), "blocks": n, "unreadable_now": ino in now}
            for ino, n in sorted(counts.items(), key=lambda kv: (names.get(kv[0], ["~"]), kv[0]))]


def render(doc: dict) -> str:
    out = [f"if {', '.join(doc['down'])} went down"
           + (f" (with {', '.join(doc['already_down'])} down already)" if doc["already_down"] else "")
           + f": {len(doc['lost_files'])} files lost, {len(doc['single_copy_files'])} left with"
             f" one copy ({doc['total_blocks']} blocks checked)"]
    for title, key in (("LOST (unreadable)", "lost_files"), ("ONE COPY LEFT", "single_copy_files")):
        for f in doc[key]:
            where = ", ".join(f["paths"]) or f"inode {f['ino']} (no path: unlinked, held open)"
            note = "; unreadable already" if f["unreadable_now"] else ""
            out.append(f"  {title}: {where} ({f['blocks']} blocks{note})")
    out.append(f"status: {doc['status']}")
    return "\n".join(out)


async def _main(args: argparse.Namespace) -> int:
    zk = await connect_zk(args)
    try:
        paths = FsPaths(default_root(args.fs))
        await cluster_key(args, zk)  # the key opens ZooKeeper
        try:
            config = await load_config(zk, paths)
        except DfsError as e:  # no filesystem there: exit 2, as 1 means "would lose data"
            raise QuietError(e.message, EXIT_USAGE) from None
        known = set(await cluster.registry(zk, paths)) | set(await cluster.live_nodes(zk, paths))
        down = resolve_nodes([n.strip() for n in args.down.split(",")], known)
        risk = await assess(zk, paths, down)
        names = await paths_of(Meta(zk, paths, config), set(risk.lost) | set(risk.single)) \
            if risk.lost or risk.single else {}
    finally:
        await zk.close()
    doc = {"status": "LOSS" if risk.lost else "SAFE", "down": risk.down,
           "already_down": risk.already_down, "total_blocks": risk.total_blocks,
           "lost_blocks": sum(risk.lost.values()), "single_copy_blocks": sum(risk.single.values()),
           "lost_files": file_list(risk.lost, names, risk.lost_now),
           "single_copy_files": file_list(risk.single, names, set())}
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return EXIT_PROBLEM if risk.lost else EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Errors (no filesystem, ZooKeeper unreachable) are reported by tools.common.run_command."""
    return trio.run(_main, args)
