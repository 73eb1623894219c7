"""fsck's block checks: maps vs sizes, and every replica of every block (one `check_*` each).

The common case (every replica listed by its live node with the right length
and checksum, the right count, spread over zones) is decided from the block
index without I/O (`check_replicas_fast`); anything else goes to a bounded
slow lane that asks the nodes again (a replica the listing lacks may have been
written after it: STAT before it counts as missing) and re-reads the map
before it reports, since a repair may have moved replicas meanwhile. Repairs
are the shared primitives of dfs.maint.repair, version-checked.
"""

import errno

import trio

from dfs.blocks.client import NodeUnavailable
from dfs.errors import DfsError
from dfs.maint import repair
from dfs.maint.cluster import drop_report
from dfs.maint.scan import MapGroup, decode_group, map_groups, read_groups
from dfs.meta import repairs
from dfs.placement import spread_short
from dfs.records import BlockRef
from dfs.zk import NoNodeError
from tools.fsck.report import Problem
from tools.fsck.state import REF, FileInfo, FsckState, decode_inode

SLOW_SLOTS = 64       # blocks being looked at closely (STAT, VERIFY, repair) at once
VERIFY_PER_NODE = 4   # VERIFY requests in flight per node


class BlockChecks:
    def __init__(self, s: FsckState):
        self.s = s
        self.nursery: trio.Nursery | None = None  # the slow lane's, set by the run
        self._slow = trio.Semaphore(SLOW_SLOTS)
        self._verify_limit: dict[str, trio.Semaphore] = {}

    async def check_files(self, files: list[FileInfo]) -> None:
        """Read the block maps of some files (batched) and check every block."""
        by_ino = {f.ino: f for f in files}
        wanted = [(f.ino, int(g)) for f in files for g in f.groups if g.isdigit()]
        async for mg in read_groups(self.s.zk, self.s.paths, wanted):
            await self.check_block_group(by_ino[mg.ino], mg)
        for f in files:
            f.groups = []

    async def mark_referenced(self, ino: int) -> None:
        """Mark the blocks of a map as referenced, without checking them."""
        index = self.s.index.blocks
        async for mg in map_groups(self.s.zk, self.s.paths, ino):
            for ref in mg.blocks.blocks.values():
                e = index.get(ref.id)
                if e is not None:
                    e[0] |= REF

    async def check_block_group(self, f: FileInfo, mg: MapGroup) -> None:
        s = self.s
        bs = s.config.block_size
        per_group = s.config.group_blocks
        r = s.report
        for index, ref in mg.blocks.blocks.items():
            if ref.length > bs or ref.length < 0 or index // per_group != mg.group:
                await self.check_block_length(f, mg, index, ref)
            elif index * bs + ref.length > f.rec.size:
                await self.check_block_extent(f, mg, index, ref)
            r.total_blocks += 1
            r.total_block_bytes += ref.length
            if not self.check_replicas_fast(f, index, ref):
                # bounded: the walk waits here while SLOW_SLOTS blocks are in the slow lane
                await self._slow.acquire()
                self.nursery.start_soon(self._slow_lane, f, index, ref)

    async def check_block_length(self, f: FileInfo, mg: MapGroup, index: int, ref: BlockRef) -> None:
        """A block is no longer than block_size and sits in the group its index belongs to."""
        s = self.s
        if s.in_flux(mg.stat):
            return
        s.problem("bad_block_length", f.path, f"block {index} in group {mg.group}: length {ref.length}, "
                  f"block size {s.config.block_size}", ino=f.ino, block=ref.id)

    async def check_block_extent(self, f: FileInfo, mg: MapGroup, index: int, ref: BlockRef) -> None:
        """No block reaches past the end of its file."""
        s = self.s
        try:
            data, st = await s.zk.get(s.paths.inode(f.ino))
        except NoNodeError:
            return
        if s.in_flux(mg.stat, st):
            return
        size = decode_inode(data).size
        end = index * s.config.block_size + ref.length
        if end <= size:
            return
        p = s.problem("block_past_eof", f.path, f"block {index} ends at {end}, size {size}",
                      ino=f.ino, block=ref.id)
        await s.act(p, "drop the block from the map", repairs.drop_block_past_eof, s.zk, s.paths,
                    s.config, f.ino, index, ref.id)

    # ------------------------------------------------------------------ replicas

    def check_replicas_fast(self, f: FileInfo, index: int, ref: BlockRef) -> bool:
        """The common case decided without I/O; anything unusual goes to `check_replicas`."""
        s = self.s
        e = s.index.blocks.get(ref.id)
        reps = ref.replicas
        ok = e is not None and not s.opts.verify_data and len(reps) == s.config.wanted(f.rec.replicas)
        if ok:
            e[0] |= REF
            bits = 0
            for n in reps:
                b = s.index.bit(n)
                if not b or not e[0] & b or n not in s.live or (
                        s.pairs and ((ref.id, n) in s.index.odd or (ref.id, n) in s.reports)):
                    ok = False
                    break
                bits |= b
            if ok and (e[1] != ref.length or e[2] != ref.checksum or e[0] & ~(bits | REF)
                       or len(set(reps)) != len(reps) or ref.id in s.gc_blocks):
                ok = False
            if ok and spread_short(s.zone_of, reps, s.zones):
                ok = False
        elif e is not None:
            e[0] |= REF
        if ok:
            r = s.report
            r._good_replicas += len(reps)
            if len(reps) >= s.config.needed(f.rec.replicas):
                r.minimally_replicated_blocks += 1
            return True
        return False

    async def _slow_lane(self, f: FileInfo, index: int, ref: BlockRef) -> None:
        try:
            await self.check_replicas(f, index, ref)
        finally:
            self._slow.release()

    async def replica_state(self, ref: BlockRef, node_id: str) -> str:
        """good | missing | corrupt | dead (not live or unreachable) | reported."""
        s = self.s
        if node_id not in s.live:
            return "dead"
        listed = s.index.listed(ref.id, node_id)
        if listed is None:
            try:  # written after the listing?
                st = await s.blocks.stat_block(node_id, ref.id)
                listed = (st["length"], st["checksum"])
            except NodeUnavailable as e:
                s.unreachable(node_id, str(e))
                return "dead"
            except DfsError as e:
                if e.errno == errno.ENOENT:
                    return "missing"
                return "corrupt"
        if listed != (ref.length, ref.checksum):
            return "corrupt"
        if (ref.id, node_id) in s.reports:
            return "reported"
        if s.opts.verify_data:
            sem = self._verify_limit.setdefault(node_id, trio.Semaphore(VERIFY_PER_NODE))
            async with sem:
                try:
                    ok = await s.blocks.verify_block(node_id, ref.id)
                except NodeUnavailable as e:
                    s.unreachable(node_id, str(e))
                    return "dead"
                except DfsError as e:
                    return "missing" if e.errno == errno.ENOENT else "corrupt"
            s.report.verified_replicas += 1
            s.report.verified_bytes += ref.length
            if not ok:
                return "corrupt"
        return "good"

    def check_proof(self, f: FileInfo, index: int, ref: BlockRef) -> None:
        """The ref's write proof is the one a node holding the key made for its id, length
        and checksum (dfs.blocks.protocol.write_proof): else no node confirmed storing
        the block the map names. (Nothing to repair: the bytes are what the replicas say.)"""
        s = self.s
        proven = s.blocks.proven(ref)
        if proven is None:
            s.report.blocks_before_proofs += 1
        elif proven:
            s.report.proven_blocks += 1
        else:
            s.report.unproven_blocks += 1
            s.problem("unproven_block", f.path, f"block {index}: its write proof is not one a node "
                      "made for this id, length and checksum", ino=f.ino, block=ref.id,
                      nodes=list(ref.replicas))

    async def _current(self, ino: int, index: int) -> BlockRef | None:
        """The block at `index` of the map as it is now."""
        try:
            data, _ = await self.s.zk.get(self.s.paths.block_group(ino, index // self.s.config.group_blocks))
        except NoNodeError:
            return None
        return decode_group(data).blocks.get(index)

    async def check_replicas(self, f: FileInfo, index: int, ref: BlockRef) -> None:
        """Each replica exists on a live node with the right checksum; count, nodes and zones."""
        s = self.s
        if s.opts.verify_data:
            self.check_proof(f, index, ref)
        if ref.id in s.gc_blocks:
            s.gc_conflicts.setdefault(s.gc_blocks[ref.id], set()).add(ref.id)
        for n in ref.replicas:
            if (ref.id, n) in s.reports:
                s.reports_seen.add((ref.id, n))
        uniq = list(dict.fromkeys(ref.replicas))
        states: dict[str, str] = {}

        async def one(n: str) -> None:
            states[n] = await self.replica_state(ref, n)
        async with trio.open_nursery() as nursery:
            for n in uniq:
                nursery.start_soon(one, n)
        e = s.index.blocks.get(ref.id)
        strays = [n for n in s.index.holders(e[0]) if n not in uniq] if e is not None else []
        bad = [n for n in uniq if states[n] != "good"]
        if bad or strays:
            # confirm against the map as it is now: a repair may have moved replicas meanwhile
            cur = await self._current(f.ino, index)
            if cur is None or cur.id != ref.id or cur.replicas != ref.replicas:
                s.report.skipped_in_flux += 1
                return
        good = [n for n in uniq if states[n] == "good"]
        r = s.report
        r._good_replicas += len(good)
        if len(good) >= s.config.needed(f.rec.replicas):
            r.minimally_replicated_blocks += 1
        where = f"{f.path} block {index}"
        problems: list[Problem] = []
        corrupt = [n for n in uniq if states[n] in ("corrupt", "reported")]
        missing = [n for n in uniq if states[n] == "missing"]
        dead = [n for n in uniq if states[n] == "dead"]
        r.corrupt_replicas += len(corrupt)
        r.missing_replicas += len(missing)
        r.dead_replicas += len(dead)
        for category, nodes, why in (("corrupt_replica", corrupt, "replica fails its checksum"),
                                     ("missing_replica", missing, "node does not have it"),
                                     ("dead_replica", dead, "node is not live")):
            if nodes:
                problems.append(s.problem(category, f.path, f"block {index}: {why}", ino=f.ino,
                                          block=ref.id, nodes=nodes))
        if not good:
            r.missing_blocks += 1
            r.missing_size += ref.length
            p = s.problem("missing_block", f.path, f"block {index} ({ref.length} B) has no good replica",
                          ino=f.ino, block=ref.id, nodes=list(ref.replicas))
            s.lost_files.setdefault(f.ino, f)
            s.lost_problems.setdefault(f.ino, []).extend([p, *problems])
            return
        target = s.config.wanted(f.rec.replicas)  # the file's own (`dfs setrep`) or the filesystem's
        mis = len(uniq) != len(ref.replicas)
        if spread_short(s.zone_of, good, s.zones):
            mis = True
        if len(good) < target:
            r.under_replicated_blocks += 1
            problems.append(s.problem("under_replicated", f.path, f"block {index}: {len(good)} of {target} "
                                      "good replicas", ino=f.ino, block=ref.id, nodes=good))
        elif len(good) > target:
            r.over_replicated_blocks += 1
            problems.append(s.problem("over_replicated", f.path, f"block {index}: {len(good)} replicas, "
                                      f"target {target}", ino=f.ino, block=ref.id, nodes=good))
        if mis:
            r.mis_replicated_blocks += 1
            problems.append(s.problem("mis_replicated", f.path, f"block {index}: replicas on "
                                      f"{ref.replicas}", ino=f.ino, block=ref.id, nodes=list(ref.replicas)))
        stray_old = []
        if strays and s.full:
            stray_old = await s.old_copies(ref.id, strays)
            if stray_old:
                r.orphan_blocks += 1
                r.orphan_size += ref.length * len(stray_old)
                problems.append(s.problem("orphan_block", where, "copy on a node the map does not list",
                                          ino=f.ino, block=ref.id, nodes=stray_old))
        if problems and s.opts.repair:
            await self.repair_block(f, index, ref, good, corrupt + missing, len(uniq) != len(ref.replicas),
                                    stray_old, problems)

    async def repair_block(self, f: FileInfo, index: int, ref: BlockRef, good: list[str], bad: list[str],
                           duplicates: bool, strays: list[str], problems: list[Problem]) -> None:
        """Re-replicate, drop bad or surplus replicas, delete stray copies (all version-checked)."""
        s = self.s
        target = s.config.wanted(f.rec.replicas)
        plan = []
        copy_more = bad or len(good) < target or any(p.category == "dead_replica" for p in problems)
        if duplicates:
            plan.append("remove duplicate node ids")
        if copy_more:
            plan.append(f"re-replicate (bad: {','.join(bad) or 'none'})")
        elif len(good) > target:
            plan.append(f"drop {len(good) - target} surplus replicas")
        if strays:
            plan.append(f"delete stray copies on {','.join(strays)}")
        if any(p.category == "mis_replicated" for p in problems) and not duplicates:
            plan.append("(zone spread is left to the repair leader)")
        text = "; ".join(plan)
        if s.opts.dry_run:
            for p in problems:
                p.repair = f"would {text}"
            return
        try:
            done = []
            if duplicates:
                ref = await repair.dedupe_replicas(s.ctx, f.ino, index, ref) or ref
                done.append("removed duplicate node ids")
            if copy_more:
                new = await repair.rereplicate(s.ctx, f.ino, index, ref, bad=set(bad), reason="fsck",
                                               target=target)
                if new is not None:
                    done.append(f"replicas now {','.join(new.replicas)}")
                    for n in bad:
                        name = s.reports.get((ref.id, n))
                        if name:
                            await drop_report(s.zk, s.paths, name)
            elif len(good) > target:
                surplus = self._surplus(good, target)
                new = await repair.drop_replicas(s.ctx, f.ino, index, ref, surplus, "fsck: over-replicated")
                done.append(f"dropped {','.join(surplus)}")
            if strays:
                gone = await self._delete_strays(f.ino, index, ref.id, strays)
                done.append(f"deleted stray copies on {','.join(gone)}")
            counted = [p for p in problems if p.category != "mis_replicated" or duplicates]
            for p in problems:
                p.repair = (f"repaired: {'; '.join(done)}" if p in counted
                            else "not repaired: zone spread is left to the repair leader")
        except DfsError as e:
            for p in problems:
                p.repair = f"not repaired: {text} failed ({e})"

    def _surplus(self, good: list[str], target: int) -> list[str]:
        """Which replicas to drop: from the most crowded zones first, keep the rest."""
        keep: list[str] = []
        zones_used: set[str] = set()
        for n in good:  # one per zone first
            z = self.s.zone_of.get(n, "")
            if z not in zones_used and len(keep) < target:
                keep.append(n)
                zones_used.add(z)
        for n in good:
            if n not in keep and len(keep) < target:
                keep.append(n)
        return [n for n in good if n not in keep]

    async def _delete_strays(self, ino: int, index: int, bid: str, nodes: list[str]) -> list[str]:
        """Delete copies of `bid` on nodes its map does not list (unless listed again meanwhile)."""
        cur = await self._current(ino, index)
        listed = cur.replicas if cur is not None and cur.id == bid else []
        gone = await repair.delete_quietly(self.s.ctx, bid, [n for n in nodes if n not in listed])
        if gone:
            await self.s.ctx.audit.append("orphan", block=bid, ino=ino, index=index, src=gone,
                                          reason="fsck: copy not in the map")
        return gone

