"""`dfs status`: nodes, cluster health, the repair queue and scrub coverage, for people
(or --json); `--watch` redraws it until interrupted (plain ANSI: a clear-screen
and a text bar need no terminal library).

Exit codes: 0 healthy; 1 blocks are missing, under-replicated or have corrupt
replicas reported, or the metadata service is full (creates fail with ENOSPC);
2 ZooKeeper unreachable or no filesystem (one line on stderr). `--watch` exits 0 when
interrupted.
"""

import argparse
import json
import sys
import time

import trio

from dfs.errors import DfsError, QuietError
from dfs.maint import capacity, cluster
from dfs.maint.scan import block_groups_wanted
from dfs.meta.trash import trash_usage
from dfs.mkfs import load_config
from dfs.paths import FsPaths, default_root
from dfs.zk import ZkClient
from tools.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, cluster_key, connect_zk, human

BAR = 30  # characters of the repair progress bar


async def gather(zk: ZkClient, paths: FsPaths) -> dict:
    config = await load_config(zk, paths)
    regs = await cluster.registry(zk, paths)
    live = await cluster.live_nodes(zk, paths)
    repair = await cluster.repair_status(zk, paths)
    leader = await cluster.repair_leader(zk, paths)
    corrupt = len(await cluster.report_names(zk, paths))
    cap = await capacity.read_state(zk, paths)
    trashed, trash_bytes = await trash_usage(zk, paths)

    # block health, from the maps and the live view (streamed group by group)
    blocks = under = missing = 0
    per_node: dict[str, int] = {}
    referenced = 0  # bytes the maps name, every replica counted
    active = {n for n, lv in live.items() if lv.state == "active"}
    async for mg, own in block_groups_wanted(zk, paths):
        wanted = config.wanted(own)  # the file's own count (`dfs setrep`) or the filesystem's
        for ref in mg.blocks.blocks.values():
            blocks += 1
            for n in ref.replicas:
                per_node[n] = per_node.get(n, 0) + 1
            referenced += ref.length * len(ref.replicas)
            if not any(n in live for n in ref.replicas):
                missing += 1
            elif sum(n in active for n in ref.replicas) < wanted:
                under += 1
    now = time.time()
    nodes = []
    for node_id in sorted(set(regs) | set(live)):
        reg, lv = regs.get(node_id), live.get(node_id)
        gone = (repair.get("gone_since") or {}).get(node_id)
        nodes.append({
            "node_id": node_id,
            "status": "live" if lv else "dead",
            "state": reg.state if reg else (lv.state if lv else "?"),
            "address": lv.address if lv else (reg.address if reg else ""),
            "zone": (lv or reg).zone if (lv or reg) else "",
            "capacity": lv.capacity if lv else None,
            "used": lv.used if lv else None,
            "free": lv.free if lv else None,
            "blocks": lv.blocks if lv else None,
            "referenced_blocks": per_node.get(node_id, 0),
            "gone_for": round(now - gone, 1) if gone and not lv else None,
            "metrics": lv.metrics if lv else "",
            "scrub": lv.scrub if lv else {},
        })
    scrubbed = [n["scrub"] for n in nodes if n["scrub"]]
    stored = sum(sc["stored_bytes"] for sc in scrubbed)
    return {
        "filesystem": paths.root,
        "replicas": config.replicas,
        "min_replicas": config.min_replicas,
        "dead_after": config.dead_after,
        "nodes": nodes,
        "live_nodes": sum(1 for n in nodes if n["status"] == "live"),
        "dead_nodes": sum(1 for n in nodes if n["status"] == "dead" and n["state"] != "retired"),
        "repair_leader": leader,
        "total_blocks": blocks,
        "under_replicated_blocks": under,
        "missing_blocks": missing,
        "corrupt_replicas": corrupt,
        # the live nodes' scrub figures, weighted by what each stores
        "scrub": {"coverage": sum(sc["coverage"] * sc["stored_bytes"] for sc in scrubbed) / stored
                  if stored else 1.0,
                  "oldest_unverified": max(sc["oldest_unverified"] for sc in scrubbed),
                  "period": max(sc["period"] for sc in scrubbed), "nodes": len(scrubbed)}
        if scrubbed else {},
        "metadata": {**cap.to_dict(), "zk_heap": config.zk_heap},
        # what the maps name vs what the live nodes hold (the difference: copies gc has not
        # taken yet, in-flight writes, replicas on dead nodes counted by the maps only)
        "space": {"referenced_bytes": referenced,
                  "stored_bytes": stored if scrubbed else None},
        "trash": {"entries": trashed, "bytes": trash_bytes, "trash_days": config.trash_days},
        "repair": {k: repair.get(k) for k in ("leader", "updated", "queue_length", "done_in_pass",
                                              "in_progress",
                                              "pending", "order", "eta_seconds",
                                              "repair_bytes_per_second", "counts", "totals",
                                              "gc_pending", "dead", "waiting_for_grace")}
        if repair else {},
    }


def render(s: dict) -> str:
    out = [f"filesystem {s['filesystem']}: replicas {s['replicas']} (min {s['min_replicas']}), "
           f"dead after {s['dead_after']:g} s"]
    health = "HEALTHY" if not (s["missing_blocks"] or s["under_replicated_blocks"]
                               or s["corrupt_replicas"]) else "DEGRADED"
    out.append(f"health: {health}  blocks {s['total_blocks']}, under-replicated "
               f"{s['under_replicated_blocks']}, missing {s['missing_blocks']}, corrupt replicas "
               f"reported {s['corrupt_replicas']}")
    out.append(f"nodes: {s['live_nodes']} live, {s['dead_nodes']} dead; repair leader: "
               f"{s['repair_leader'] or 'none'}")
    out.append(f"  {'NODE':16} {'STATUS':6} {'STATE':9} {'ADDRESS':21} {'CAPACITY':>10} "
               f"{'USED':>10} {'BLOCKS':>7} {'SCRUBBED':>8}")
    for n in s["nodes"]:
        cap = human(n["capacity"]) if n["capacity"] is not None else "-"
        used = human(n["used"]) if n["used"] is not None else "-"
        blocks = str(n["blocks"]) if n["blocks"] is not None else f"({n['referenced_blocks']})"
        status = n["status"] + (f" {n['gone_for']:.0f}s" if n["gone_for"] else "")
        scrubbed = f"{n['scrub']['coverage']:.0%}" if n["scrub"] else "-"
        out.append(f"  {n['node_id']:16} {status:6} {n['state']:9} {n['address']:21} {cap:>10} "
                   f"{used:>10} {blocks:>7} {scrubbed:>8}")
    sc = s["scrub"]
    if sc:
        out.append(f"scrub: {sc['coverage']:.1%} of stored bytes verified within the last "
                   f"{duration(sc['period'])}; oldest unverified replica "
                   f"{duration(sc['oldest_unverified'])} old ({sc['nodes']} nodes report)")
    sp = s.get("space") or {}
    if sp.get("stored_bytes") is not None:
        out.append(f"space: {human(sp['referenced_bytes'])} referenced by block maps (all replicas), "
                   f"{human(sp['stored_bytes'])} stored on the live nodes")
    out += render_metadata(s["metadata"], s["nodes"])
    r = s["repair"]
    if r:
        if (r.get("counts") or {}).get("impossible"):
            out.append(f"{r['counts']['impossible']} blocks cannot get {s['replicas']} replicas: "
                       f"{r['counts']['active_nodes']} active live nodes")
        exposed = (r.get("counts") or {}).get("exposed_bytes")
        if exposed is not None:
            out.append(f"exposure: {human(exposed)} acknowledged but not at full redundancy")
        eta = f", ETA {duration(r['eta_seconds'])}" if r.get("eta_seconds") else ""
        rate = r.get("repair_bytes_per_second") or 0
        queued, done = r.get("queue_length") or 0, r.get("done_in_pass") or 0
        out.append(f"repair queue: {queued} blocks{eta}"
                   + (f" at {human(rate)}/s" if rate else "")
                   + f"; order: {r.get('order', '')}")
        if queued:
            filled = round(BAR * done / (done + queued))
            out.append(f"  [{'#' * filled}{'.' * (BAR - filled)}] {done}/{done + queued} "
                       f"blocks of this pass{eta}")
        for w in (r.get("in_progress") or [])[:5]:
            out.append(f"  repairing block {w['block']} (inode {w['ino']} #{w['index']}): "
                       f"{w['reason']}")
        for w in (r.get("pending") or [])[:10]:
            out.append(f"  queued    block {w['block']} (inode {w['ino']} #{w['index']}): "
                       f"{w['reason']}, {w.get('copies')} copies")
        if r.get("gc_pending"):
            out.append(f"gc: {r['gc_pending']} entries pending")
    t = s.get("trash") or {}
    if t:
        out.append(f"trash: {t['entries']} files, {human(t['bytes'])}"
                   + (f" (kept {t['trash_days']:g} days)" if t["trash_days"] else " (off)"))
    return "\n".join(out)


def duration(seconds: float) -> str:
    """90 -> '2 min', 7 days -> '7.0 d'."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}" if unit == "d" else f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def render_metadata(m: dict, nodes: list[dict]) -> list[str]:
    heap = f"ZooKeeper heap {human(m['zk_heap'])}"
    if not m["checked"]:
        who = "the repair leader has not measured it yet" if nodes else "no storage node runs"
        return [f"metadata: {heap}; usage unknown ({who})"]
    share = m["used"] / m["limit"] if m["limit"] else 1.0
    out = [f"metadata: {m['znodes']} znodes, ~{human(m['used'])} of {human(m['limit'])} allowed "
           f"({share:.0%}; {heap}), measured {max(0, time.time() - m['checked']):.0f} s ago"]
    if m["full"]:
        out.append("WARNING: metadata full: creates fail with ENOSPC until files are removed "
                   "or ZooKeeper gets more heap (dfs up --zk-heap)")
    elif share >= 0.8:
        out.append(f"warning: metadata {share:.0%} full: creates will fail with ENOSPC at 100%")
    return out


async def watch(zk: ZkClient, paths: FsPaths, interval: float) -> None:
    """Redraw the status every `interval` s until cancelled (Ctrl-C)."""
    out = sys.stdout
    out.write("\x1b[?25l")  # no cursor blinking over the picture
    try:
        while True:
            try:
                text = render(await gather(zk, paths))
            except DfsError as e:  # ZooKeeper away for a while: say so, keep watching
                text = f"cannot read the status: {e.message}"
            out.write(f"\x1b[H\x1b[2J{time.strftime('%H:%M:%S')}  dfs status --watch (every "
                      f"{interval:g} s; Ctrl-C to stop)\n{text}\n")
            out.flush()
            await trio.sleep(interval)
    finally:
        out.write("\x1b[?25h")
        out.flush()


async def _main(args: argparse.Namespace) -> int:
    zk = await connect_zk(args)
    paths = FsPaths(default_root(args.fs))
    try:
        await cluster_key(args, zk)
        if args.watch:
            await watch(zk, paths, args.interval)
        s = await gather(zk, paths)
    except DfsError as e:  # ZooKeeper gone, or no filesystem there: exit 2
        raise QuietError(e.message, EXIT_USAGE) from None
    finally:
        await zk.close()
    print(json.dumps(s, indent=2) if args.json else render(s))
    problem = (s["missing_blocks"] or s["under_replicated_blocks"] or s["corrupt_replicas"]
               or s["metadata"]["full"])
    return EXIT_PROBLEM if problem else EXIT_OK


def main(args: argparse.Namespace) -> int:
    """Errors are reported by tools.common.run_command (ZooKeeper unreachable, no filesystem: 2)."""
    try:
        return trio.run(_main, args)
    except KeyboardInterrupt:  # the way out of --watch
        return EXIT_OK
