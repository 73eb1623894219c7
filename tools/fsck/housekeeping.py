"""fsck's checks of what is left behind: znodes of deleted inodes, gc/ entries, repair
reports, and blocks no map names (orphans). All need the whole namespace: PATH `/` only.

A block counts as an orphan only if no block map and no gc/ entry names it, it
is older than --orphan-age, and a STAT still finds it.
"""

import time

from dfs.maint import gc, repair
from dfs.maint.cluster import drop_report
from dfs.meta import repairs
from dfs.zk import ZnodeStat
from dfs.zk.reads import Reads
from tools.fsck.blocks import BlockChecks
from tools.fsck.state import CHUNK, REF, FsckState

GC_STALE_AFTER = 600.0  # seconds; a gc/ entry older than this (or --orphan-age) is stale


class Leftovers:
    """blocks/, dirs/, xattrs/, open/, trash/, leases/ children belong to existing inodes."""

    def __init__(self, s: FsckState, blocks: BlockChecks):
        self.s = s
        self.blocks = blocks

    async def scan(self) -> None:
        s = self.s
        kinds = [("blocks", s.paths.blocks, s.paths.block_map), ("dirs", s.paths.dirs, s.paths.dir),
                 ("xattrs", s.paths.xattrs, s.paths.xattr_dir), ("open", s.paths.open, s.paths.open_dir),
                 ("trash", s.paths.trash, s.paths.trash_entry), ("leases", s.paths.leases, s.paths.lease)]
        for kind, base, child in kinds:
            names = await s.children(base) or []
            cands = [int(n) for n in names if n.isdigit() and int(n) not in s.exists]
            for i in range(0, len(cands), CHUNK):
                reads = Reads()
                part = [(ino, reads.get(s.paths.inode(ino)), reads.get(child(ino))) for ino in cands[i:i + CHUNK]]
                got = await reads.run(s.zk)
                for ino, inode, leftover in part:
                    if got[inode] is not None or got[leftover] is None:
                        continue  # created after the scan, or gone
                    await self.check_leftover(kind, ino, got[leftover][1])

    async def check_leftover(self, kind: str, ino: int, st: ZnodeStat) -> None:
        s = self.s
        if kind == "blocks":
            # its blocks are referenced (not orphans) until gc collects the map
            await self.blocks.mark_referenced(ino)
            if ino in s.gc_inodes or s.in_flux(st):
                return
            p = s.problem("dangling_block_map", f"<inode {ino}>", "block map of an inode that does "
                          "not exist, not queued for gc", ino=ino)
            await s.act(p, "queue the map for gc", repairs.queue_map_for_gc, s.zk, s.paths, ino)
            return
        if s.in_flux(st):
            return
        if kind == "open":
            if await s.children(s.paths.open_dir(ino)):
                return  # a live mount still holds it: it cleans up on release
            p = s.problem("stale_open", f"<inode {ino}>", "open/ entry of an inode that does not exist", ino=ino)
            await s.act(p, "remove it", repairs.remove_stale_open, s.zk, s.paths, ino)
            return
        if kind == "leases":
            p = s.problem("stale_lease", f"<inode {ino}>", "lease of a directory that does not exist", ino=ino)
            await s.act(p, "remove it", repairs.remove_stale_lease, s.zk, s.paths, ino)
            return
        if kind == "trash":
            p = s.problem("stale_trash", f"<inode {ino}>", "trash entry of an inode that does not exist", ino=ino)
            await s.act(p, "remove it", repairs.remove_stale_trash, s.zk, s.paths, ino)
            return
        cat = "leftover_dir_listing" if kind == "dirs" else "leftover_xattrs"
        p = s.problem(cat, f"<inode {ino}>", f"{kind}/{ino} of an inode that does not exist", ino=ino)
        await s.act(p, f"remove {kind}/{ino}", repairs.remove_leftover, s.zk, s.paths, kind, ino)


class Housekeeping:
    def __init__(self, s: FsckState):
        self.s = s

    async def check_gc_entries(self) -> None:
        """gc/ entries name only unreferenced blocks and are collected in time (GC_STALE_AFTER)."""
        s = self.s
        # the collector normally takes seconds; an entry it left alone this long is stuck
        limit = time.time() - max(s.opts.orphan_age, GC_STALE_AFTER)
        for name, blocks in s.gc_conflicts.items():
            p = s.problem("gc_conflict", f"gc/{name}", f"queued for deletion but still in a block map: "
                          f"{len(blocks)} blocks", block=sorted(blocks)[0])
            await s.act(p, "take the blocks in use out of the entry", gc.keep_blocks, s.zk, s.paths, name,
                        blocks)
        for ino, name in s.gc_inodes.items():
            if ino in s.exists:
                reads = Reads()
                inode, entry = reads.get(s.paths.inode(ino)), reads.get(s.paths.gc_entry(name))
                got = await reads.run(s.zk)
                if got[inode] is None or got[entry] is None or s.in_flux(got[inode][1], got[entry][1]):
                    continue
                p = s.problem("gc_conflict", f"gc/{name}", f"whole-map gc entry for inode {ino}, "
                              "which exists", ino=ino)
                await s.act(p, "remove the entry", gc.remove_gc_entry, s.zk, s.paths, name,
                            got[entry][1].version)
        for name, (entry, version, mzxid) in s.gc_entries.items():
            if name in s.gc_conflicts or entry.queued > limit:
                continue
            if entry.inode and entry.inode in s.exists:
                continue
            age = time.time() - entry.queued
            p = s.problem("stale_gc_entry", f"gc/{name}", f"queued {age:.0f} s ago, "
                          f"{len(entry.blocks)} blocks" + (f", inode {entry.inode}" if entry.inode else ""))

            async def collect(name: str = name) -> str:
                n = await gc.collect_gc_entry(s.ctx, name)
                return f"collected ({n} replicas deleted)"
            await s.act(p, "collect it now", collect)

    async def check_repair_reports(self) -> None:
        """repair/corrupt reports are about replicas that some block map still lists."""
        s = self.s
        for (bid, node), name in s.reports.items():
            if (bid, node) in s.reports_seen:
                continue
            st = await s.zk.exists(s.paths.repair_report_named(name))
            if st is None or s.in_flux(st):
                continue
            p = s.problem("stale_repair_report", f"repair/corrupt/{name}",
                          "no block map lists this replica", block=bid, nodes=[node])

            async def drop(name: str = name) -> str:
                await drop_report(s.zk, s.paths, name)
                return "removed the report"
            await s.act(p, "remove the report", drop)

    async def check_orphan_blocks(self) -> None:
        """Blocks on nodes that no block map and no gc entry names, older than --orphan-age,
        or of any age if no one can commit them any more: their writer record (read before
        the maps) was gone, or said they were settled (dfs.meta.writers)."""
        s = self.s
        gc_now: set[str] = set()
        for entry, _ in (await gc.gc_entries(s.zk, s.paths)).values():
            gc_now.update(entry.blocks)
        limit = time.time() - s.opts.orphan_age
        cands = [(bid, e, s.marks.settled(bid)) for bid, e in s.index.blocks.items()
                 if not e[0] & REF and bid not in gc_now and bid not in s.gc_blocks]
        r = s.report
        for bid, e, settled in cands:
            if not settled and e[3] > limit:
                continue
            nodes = await s.old_copies(bid, s.index.holders(e[0]), any_age=settled)
            if not nodes:
                continue
            r.orphan_blocks += 1
            r.orphan_size += e[1] * len(nodes)
            why = "; its writer can no longer commit it" if settled else ""
            p = s.problem("orphan_block", "", f"{e[1]} B, referenced by no block map or gc entry{why}",
                          block=bid, nodes=nodes)

            async def delete(bid: str = bid, nodes: list[str] = nodes) -> str:
                gone = await repair.delete_quietly(s.ctx, bid, nodes)
                await s.ctx.audit.append("orphan", block=bid, src=gone, reason="fsck: unreferenced")
                return f"deleted from {','.join(gone)}"
            await s.act(p, "delete it from the nodes", delete)
            s.progress.tick()
