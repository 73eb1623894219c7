"""`dfs why PATH` (or `--ino N`): one file as the cluster sees it, for an operator.

Per file: inode number, size, commit version (the inode znode's version), and
the mounts holding it open (`open/<ino>/<mount-id>`: recorded only for files
unlinked while open, so a file with a path has none). Per block: its replicas
(node, zone, live or dead and for how long, draining), the corrupt reports
against it, and whether it waits in the repair leader's queue. The queue comes
from the leader's status document (`repair/status`), which lists the blocks
being repaired and the first PENDING_SHOWN queued ones, and the nodes still in
their grace period (gone, not yet `dead_after`: no repair starts before).

Exit codes: 0 every block has the file's count of live replicas (its own, set by
`dfs setrep`, or the filesystem's); 1 some block has fewer (or a corrupt report); 2 no such path, usage or connection error.
"""

import argparse
import json
import os
import time

import trio

from dfs.errors import DfsError, QuietError, UsageError
from dfs.maint import cluster
from dfs.meta import Meta
from dfs.mkfs import load_config
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.zk import NoNodeError, ZkClient
from tools.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, cluster_key, connect_zk, human


async def resolve(meta: Meta, path: str) -> int:
    ino = ROOT_INO
    for part in [p for p in path.split("/") if p and p != "."]:
        try:
            ino = (await meta.lookup(ino, os.fsencode(part))).ino
        except DfsError as e:
            raise UsageError(f"{path}: {os.strerror(e.errno)}") from None
    return ino


def repair_state(block_id: str, replicas: list[dict], short: bool, status: dict) -> dict:
    """Where the block stands with the repair leader, from its status document."""
    running = status.get("in_progress") or []
    pending = status.get("pending") or []
    for w in running:
        if w["block"] == block_id:
            return {"state": "repairing", "reason": w["reason"]}
    for pos, w in enumerate(pending, start=len(running) + 1):
        if w["block"] == block_id:
            return {"state": "queued", "position": pos, "queue_length": status.get("queue_length"),
                    "reason": w["reason"]}
    if not short:
        return {"state": "none"}
    if not status:
        return {"state": "not queued", "reason": "no repair leader has published a status"}
    grace = [r["node"] for r in replicas if r["node"] in (status.get("waiting_for_grace") or [])]
    if grace:
        return {"state": "waiting", "reason": f"node(s) {', '.join(grace)} in their grace period"}
    if (status.get("queue_length") or 0) > len(running) + len(pending):
        return {"state": "maybe queued", "reason": "beyond the queue entries the leader publishes"}
    return {"state": "not queued yet", "reason": "the leader's next pass will see it"}


async def explain(zk: ZkClient, paths: FsPaths, meta: Meta, ino: int) -> dict:
    try:
        node, refs, inline = await meta.blockmap.open_file(ino)
    except DfsError as e:
        raise UsageError(f"inode {ino}: {e.message}") from None
    regs = await cluster.registry(zk, paths)
    live = await cluster.live_nodes(zk, paths)
    status = await cluster.repair_status(zk, paths)
    reports = list((await cluster.corrupt_reports(zk, paths)).values())
    try:
        holders = await zk.get_children(paths.open_dir(ino))
    except NoNodeError:
        holders = []
    now = time.time()
    wanted = meta.config.wanted(node.rec.replicas)  # its own (`dfs setrep`) or the filesystem's
    gone_since = status.get("gone_since") or {}
    blocks = []
    for index, ref in sorted(refs.items()):
        replicas = []
        for n in ref.replicas:
            lv, reg = live.get(n), regs.get(n)
            gone = gone_since.get(n)
            replicas.append({"node": n, "zone": (lv or reg).zone if (lv or reg) else "",
                             "status": "live" if lv else "dead",
                             "state": lv.state if lv else (reg.state if reg else "unregistered"),
                             "gone_for": round(now - gone, 1) if gone and not lv else None})
        corrupt = [{"node": r.node_id, "reporter": r.reporter, "reason": r.reason,
                    "reported": r.reported} for r in reports if r.block_id == ref.id]
        counting = sum(r["status"] == "live" and r["state"] == "active"
                       and r["node"] not in {c["node"] for c in corrupt} for r in replicas)
        short = counting < wanted or bool(corrupt)
        blocks.append({"index": index, "id": ref.id, "length": ref.length, "replicas": replicas,
                       "counting_replicas": counting, "corrupt_reports": corrupt,
                       "repair": repair_state(ref.id, replicas, short, status)})
    return {"ino": ino, "type": "file" if node.rec.is_reg else "directory" if node.rec.is_dir
            else "symlink" if node.rec.is_link else "special", "size": node.rec.size,
            "nlink": node.rec.nlink, "version": node.version, "inline": inline is not None,
            "open_by": sorted(holders), "wanted_replicas": wanted,
            "own_replicas": bool(node.rec.replicas),
            "repair_leader": status.get("leader"),
            "repair_status_age": round(now - status["updated"], 1) if status.get("updated") else None,
            "blocks": blocks,
            "healthy": all(b["repair"]["state"] == "none" for b in blocks)}


def render(d: dict) -> str:
    out = [f"{d['path']}: inode {d['ino']}, {d['type']}, {d['size']} bytes ({human(d['size'])}), "
           f"{d['nlink']} links, commit version {d['version']}"]
    out.append(f"  open by mounts: {', '.join(d['open_by'])}" if d["open_by"] else
               "  open by mounts: none recorded (only files unlinked while open are)")
    if d["inline"]:
        out.append("  data inline in ZooKeeper (no blocks, nothing to lose with a node)")
    elif not d["blocks"]:
        out.append("  no blocks")
    age = f", status {d['repair_status_age']:.0f} s old" if d["repair_status_age"] is not None else ""
    own = " (its own, dfs setrep)" if d["own_replicas"] else ""
    out.append(f"  repair leader: {d['repair_leader'] or 'none'}{age}; wanted replicas "
               f"{d['wanted_replicas']}{own}")
    for b in d["blocks"]:
        r = b["repair"]
        state = r["state"] + (f" #{r['position']} of {r['queue_length']}" if "position" in r else "")
        state += f" ({r['reason']})" if r.get("reason") else ""
        out.append(f"  block {b['index']} {b['id']} {human(b['length'])}: "
                   f"{b['counting_replicas']} of {d['wanted_replicas']} copies count; repair: {state}")
        for rep in b["replicas"]:
            gone = f" (gone {rep['gone_for']:.0f} s)" if rep["gone_for"] else ""
            zone = f" zone {rep['zone']}" if rep["zone"] else ""
            draining = f", {rep['state']}" if rep["state"] != "active" else ""
            out.append(f"    {rep['node']}{zone}: {rep['status']}{gone}{draining}")
        for c in b["corrupt_reports"]:
            out.append(f"    CORRUPT on {c['node']}: {c['reason']} (reported by {c['reporter']})")
    return "\n".join(out)


async def _main(args: argparse.Namespace) -> int:
    if (args.path is None) == (args.ino is None):
        raise UsageError("give a PATH or --ino N")
    zk = await connect_zk(args)
    try:
        paths = FsPaths(default_root(args.fs))
        await cluster_key(args, zk)  # the key opens ZooKeeper
        try:
            config = await load_config(zk, paths)
        except DfsError as e:
            raise QuietError(e.message, EXIT_USAGE) from None
        meta = Meta(zk, paths, config)
        ino = args.ino if args.ino is not None else await resolve(meta, args.path)
        doc = {"path": args.path or f"inode {ino}", **await explain(zk, paths, meta, ino)}
    finally:
        await zk.close()
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return EXIT_OK if doc["healthy"] else EXIT_PROBLEM


def main(args: argparse.Namespace) -> int:
    """Errors (ZooKeeper unreachable) are reported by tools.common.run_command."""
    return trio.run(_main, args)
