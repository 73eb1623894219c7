"""What the repair leader does (DESIGN.md section 5), running inside one storage node.

Two tasks while leading:
- the observer (every `tick` s) follows the registry and `nodes/live`: when each
  registered node left, which are dead (gone longer than `config.dead_after`),
  which joined, which are draining; and corrupt-replica reports. It asks for a
  repair pass when something changed (a death interrupts a running pass).
- the repair pass scans every block map (streaming) and queues what needs
  work, in priority tiers like HDFS's low-redundancy queues: blocks with 1
  counting replica, then 2, ... (replicas on draining nodes do not count, so a
  block only on draining nodes is most urgent), then surplus replicas. Each
  file's target is its own count (`dfs setrep`, InodeRecord.replicas, read with
  its map) or the filesystem's; a surplus replica leaves only after the ones
  that stay pass VERIFY, and leaves the map before its bytes are deleted. A tier
  is finished before the next starts; inside a tier `concurrency` repairs run
  at once, paced by a bandwidth limit.

No pass starts while a node is in its grace period (gone, not yet dead): what
the map says about a block is not final until then, and planning early would
repair 2-copy blocks before 1-copy ones when two nodes die a moment apart.
Progress goes to `repair/status` (JSON) for `dfs status`.

A block written short (dfs/blocks/client.py: a slow node missed the write's
grace) leaves a report with reason SHORT_WRITE: a new report starts a pass,
which re-replicates the block once its file's commit references it. A hint
for a block not referenced yet stays (up to SHORT_WRITE_WAIT) and brings
another pass every HINT_RESCAN s, as its commit may follow any moment.

A pass that leaves blocks short (every copy failed: a source or target cut off,
or the leader itself unable to reach the nodes while it keeps its ZooKeeper
session) asks for another pass RETRY_FIRST s later, then after twice as long
each time nothing gets done, up to RETRY_MAX s; a pass with nothing left undone
resets that. Nothing else would look at those blocks again before the next
periodic scan (a minute), their short-write hints are spent, and no node left
or came back.
"""

import collections
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from dfs import metrics
from dfs.blocks.client import SHORT_WRITE
from dfs.config import NodeSettings
from dfs.errors import DfsError
from dfs.maint import cluster, repair
from dfs.maint.cluster import RepairContext
from dfs.maint.pacing import CopyBudget
from dfs.maint.scan import block_groups_wanted
from dfs.paths import FsPaths
from dfs.placement import spread_short, zones
from dfs.records import BlockRef, CorruptReport, NodeRegistration
from dfs.zk import NoNodeError, ZkClient

log = logging.getLogger(__name__)

PENDING_SHOWN = 20  # queue items listed in the status document
SHORT_WRITE_WAIT = 300.0  # s a short-write hint waits for its block's commit
HINT_RESCAN = 5.0  # s between passes while such a hint waits
RETRY_FIRST = 1.0  # s after a pass that left blocks short, the next
RETRY_MAX = 15.0  # s: ... doubling while passes leave them short, at most this
MAX_WORKERS = 512  # repairs in flight at once, at most (per node: settings.repair_concurrency)


@dataclass(order=True)
class Work:
    tier: int  # lower first: counting replicas left (surplus: a high tier)
    ino: int
    index: int
    ref: BlockRef = field(compare=False)
    kind: str = field(compare=False, default="replicate")  # replicate | surplus
    bad: frozenset = field(compare=False, default=frozenset())
    reason: str = field(compare=False, default="under-replicated")
    reports: list = field(compare=False, default_factory=list)  # corrupt report znodes
    target: int = field(compare=False, default=0)  # the file's replicas (`dfs setrep`; 0: config's)

    def describe(self) -> dict:
        return {"block": self.ref.id, "ino": self.ino, "index": self.index, "kind": self.kind,
                "copies": self.tier if self.kind == "replicate" else None,
                "reason": self.reason, "bytes": self.ref.length}


SURPLUS_TIER = 1000


class Repairer:
    """The leader's repair work.

    Args:
      ctx: repair context of this node (its nodedir is kept fresh by the node).
      node_id: this node (published as the leader).
      settings: the node's knobs: repair concurrency (copies each node takes part in
        at once), bandwidth (bytes/s each node sends and receives, 0: unlimited), scan interval
        (seconds between periodic full scans).
      maintenance_lock: held for a whole pass; the gc collector holds it for
        its orphan scans, so the two never overlap.
      on_node_return: called with a node id that joined or came back (the gc
        collector scans it for orphans).
      status_extra: returns more fields for the status document (gc progress).
      tick: seconds between observations.
    """

    def __init__(self, ctx: RepairContext, node_id: str, settings: NodeSettings, *,
                 maintenance_lock: trio.Lock,
                 on_node_return: Callable[[str], None] | None = None,
                 status_extra: Callable[[], dict] | None = None, tick: float = 1.0):
        self.ctx = ctx
        self.node_id = node_id
        self.concurrency = settings.repair_concurrency  # per node (dfs.maint.pacing)
        self.budget = CopyBudget(settings.repair_concurrency, settings.repair_bandwidth)
        self.scan_interval = settings.repair_scan_interval
        self.tick = tick
        self.registry: dict[str, NodeRegistration] = {}
        self.gone_since: dict[str, float] = {}  # wall-clock time each node left nodes/live
        self.known_live: set[str] = set()
        self.dead: set[str] = set()
        self.want_pass = trio.Event()
        self.pass_scope: trio.CancelScope | None = None
        self.last_scan = 0.0
        self.elected = time.time()
        # for the status document
        self.queue: collections.deque[Work] = collections.deque()
        self.in_progress: dict[str, Work] = {}
        self.done_in_pass = 0
        self.pass_bytes_left = 0
        self.pass_started = 0.0
        self.pass_copied_bytes = 0
        self.counts: dict[str, int] = {}
        self.node_refs: dict[str, int] = {}
        self.reports_planned: set[str] = set()  # report znodes a pass has looked at
        self.hints_waiting = False  # short-write hints of blocks not committed yet
        self.rescan_seen: int | None = None  # repair/rescan's mzxid when last looked at
        self.unfinished = 0  # blocks of this pass left short (failed copies, errors)
        self.retry_at: float | None = None  # monotonic time of the pass retrying them
        self.retry_delay = RETRY_FIRST
        self.on_node_return = on_node_return
        self.status_extra = status_extra
        self.maintenance_lock = maintenance_lock
        self.unproven_seen: set[str] = set()  # refs with a bad write proof, logged once

    @property
    def zk(self) -> ZkClient:
        return self.ctx.zk

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        await self._load_previous_status()
        self.want_pass.set()  # a new leader looks at everything once
        metrics.LEADER.set(1)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._observe_loop)
                nursery.start_soon(self._status_loop)
                await self._pass_loop()
        finally:  # only the leader speaks for the cluster's blocks
            metrics.LEADER.set(0)
            for gauge in (metrics.REPAIR_QUEUE, metrics.BLOCKS, metrics.NODES):
                gauge.clear()
            metrics.EXPOSURE.set(0)

    async def _load_previous_status(self) -> None:
        """Inherit when nodes left from the previous leader, so its grace periods keep running."""
        try:
            data, _ = await self.zk.get(self.ctx.paths.repair_status)
            old = json.loads(data)
            self.gone_since = {k: float(v) for k, v in (old.get("gone_since") or {}).items()}
        except (NoNodeError, ValueError, TypeError, AttributeError):
            pass

    async def _observe_loop(self) -> None:
        while True:
            try:
                await self.observe()
            except DfsError as e:
                log.warning("repair observer: %s", e)
            await trio.sleep(self.tick)

    async def observe(self) -> None:
        self.registry = await cluster.registry(self.ctx.zk, self.ctx.paths)
        live = set(self.ctx.nodedir.live())
        now = time.time()
        for node_id, reg in self.registry.items():
            if node_id in live or reg.state == "retired":
                self.gone_since.pop(node_id, None)
            else:
                self.gone_since.setdefault(node_id, now)
        for node_id in list(self.gone_since):
            if node_id not in self.registry:
                del self.gone_since[node_id]
        dead = {n for n, t in self.gone_since.items() if now - t >= self.ctx.config.dead_after}
        newly_dead = dead - self.dead
        returned = (live - self.known_live) & set(self.registry)
        self.dead, self.known_live = dead, live
        if newly_dead:
            log.info("nodes dead (gone > %g s): %s", self.ctx.config.dead_after, sorted(newly_dead))
            if self.pass_scope is not None:
                self.pass_scope.cancel()  # plan again with the new picture
            self.want_pass.set()
        if returned:
            log.info("nodes joined or came back: %s", sorted(returned))
            self.want_pass.set()
            if self.on_node_return is not None:
                for n in returned:
                    self.on_node_return(n)
        if any(r.state == "draining" for r in self.registry.values()):
            if time.monotonic() - self.last_scan > 5 * self.tick:
                self.want_pass.set()
        if time.monotonic() - self.last_scan > self.scan_interval:
            self.want_pass.set()
        try:
            reports = set(await self.zk.get_children(self.ctx.paths.repair_reports))
        except NoNodeError:
            reports = set()
        if reports - self.reports_planned:
            self.want_pass.set()
        if self.hints_waiting and time.monotonic() - self.last_scan > HINT_RESCAN:
            self.want_pass.set()
        if self.retry_at is not None and time.monotonic() >= self.retry_at:
            self.retry_at = None
            self.want_pass.set()
        try:  # `dfs setrep` changed replica counts
            rescan = await self.zk.exists(self.ctx.paths.repair_rescan)
        except NoNodeError:
            rescan = None
        seen = rescan.mzxid if rescan is not None else 0
        if seen != self.rescan_seen:
            if self.rescan_seen is not None:
                self.want_pass.set()
            self.rescan_seen = seen

    def in_grace(self) -> list[str]:
        return [n for n in self.gone_since if n not in self.dead]

    async def _pass_loop(self) -> None:
        while True:
            await self.want_pass.wait()
            while self.in_grace():
                await trio.sleep(self.tick)
            self.want_pass = trio.Event()
            with trio.CancelScope() as scope:
                self.pass_scope = scope
                try:
                    async with self.maintenance_lock:
                        progress = await self.repair_pass()
                    if progress:
                        self.want_pass.set()  # look again: verify, and finish drains
                except DfsError as e:
                    log.warning("repair pass failed: %s", e)
                    await trio.sleep(self.tick)
            self.pass_scope = None
            self.queue, self.in_progress = collections.deque(), {}
            if scope.cancelled_caught:
                log.info("repair pass interrupted; planning again")

    # ------------------------------------------------------------------ one pass

    async def _reports(self) -> dict[str, list[tuple[str, CorruptReport]]]:
        """Corrupt reports by block id: [(znode name, report)]."""
        base = self.ctx.paths.repair_reports
        try:
            names = await self.zk.get_children(base)
        except NoNodeError:
            return {}
        out: dict[str, list] = {}
        for name, item in zip(names, await self.zk.get_many([self.ctx.paths.repair_report_named(n)
                                                             for n in names])):
            if item is None:
                continue
            try:
                rep = CorruptReport.decode(item[0])
            except (ValueError, TypeError):
                await self._delete_report(name)
                continue
            out.setdefault(rep.block_id, []).append((name, rep))
        return out

    async def _delete_report(self, name: str) -> None:
        try:
            await self.zk.delete(self.ctx.paths.repair_report_named(name))
        except NoNodeError:
            pass

    async def _confirm_bad(self, ref: BlockRef, node_id: str) -> bool:
        """Is the reported replica really bad? (A read may have failed in transit.)"""
        if self.ctx.nodedir.get(node_id) is None:
            return True  # cannot ask; a gone node's replica does not count anyway
        try:
            return not await self.ctx.blocks.verify_block(node_id, ref.id)
        except DfsError as e:
            return e.errno == 2  # ENOENT: the replica is missing

    async def scan(self) -> list[Work]:
        """Read every block map; return the work, sorted by priority."""
        ctx = self.ctx
        reports = await self._reports()
        work: list[Work] = []
        counts = {"blocks": 0, "under_replicated": 0, "missing": 0, "over_replicated": 0,
                  "waiting": 0, "corrupt": 0, "on_draining": 0, "mis_spread": 0, "exposed_bytes": 0,
                  "impossible": 0, "unproven": 0}
        live = ctx.nodedir.live()
        active = sum(1 for n in live.values() if n.state == "active")
        zone_of, zone_count = {n: lv.zone for n, lv in live.items()}, len(zones(live.values()))
        counts["active_nodes"] = active
        node_refs: dict[str, int] = {}
        seen_reports: set[str] = set()
        async for (ino, _group, grp, _stat), own in block_groups_wanted(ctx.zk, ctx.paths):
            replicas = ctx.config.wanted(own)  # this file's target
            for index, ref in grp.blocks.items():
                counts["blocks"] += 1
                if ctx.blocks.proven(ref) is False:
                    # no node confirmed storing this block with this checksum: a bug's ref,
                    # not data to spread (fsck --verify-data reports it as unproven_block)
                    counts["unproven"] += 1
                    if ref.id not in self.unproven_seen:
                        self.unproven_seen.add(ref.id)
                        log.error("inode %d block %d (%s): its write proof does not verify; "
                                  "not repairing it", ino, index, ref.id)
                    continue
                for n in ref.replicas:
                    node_refs[n] = node_refs.get(n, 0) + 1
                bad: set[str] = set()
                names = []
                for name, rep in reports.get(ref.id, []):
                    seen_reports.add(name)
                    if rep.reason != SHORT_WRITE and rep.node_id in ref.replicas and \
                            await self._confirm_bad(ref, rep.node_id):
                        bad.add(rep.node_id)
                    names.append(name)
                counting = [n for n in ref.replicas if ctx.counts(n, bad)]
                sources = [n for n in ref.replicas if ctx.can_serve(n, bad)]
                waiting = [n for n in ref.replicas if n in self.gone_since and n not in self.dead]
                stale = [n for n in ref.replicas if n not in counting]
                if any(ctx.nodedir.get(n) is not None and ctx.nodedir.get(n).state != "active"
                       for n in ref.replicas):
                    counts["on_draining"] += 1
                if bad:
                    counts["corrupt"] += 1
                if not sources:
                    counts["missing"] += 1
                    continue
                if len(counting) < replicas or (stale and not waiting):
                    if len(counting) < replicas:
                        counts["under_replicated"] += 1
                        counts["exposed_bytes"] += ref.length
                        if active <= len(counting) and not bad:  # no node to copy to: say so, plan nothing
                            counts["impossible"] += 1
                            continue
                    if waiting and not bad:
                        counts["waiting"] += 1
                        continue
                    if bad:
                        reason = "corrupt replica"
                    elif any(n in self.dead for n in ref.replicas):
                        reason = "dead node"
                    elif len(sources) > len(counting):
                        reason = "draining node"
                    else:
                        reason = "under-replicated"
                    work.append(Work(len(counting), ino, index, ref, "replicate",
                                     frozenset(bad), reason, names, replicas))
                elif names:
                    for name in names:  # the report was wrong or is settled already
                        await self._delete_report(name)
                elif len(counting) > replicas:
                    counts["over_replicated"] += 1
                    work.append(Work(SURPLUS_TIER, ino, index, ref, "surplus", reason="surplus",
                                     target=replicas))
                elif spread_short(zone_of, counting, zone_count):
                    counts["mis_spread"] += 1
                    work.append(Work(SURPLUS_TIER, ino, index, ref, "spread", reason="zone spread"))
        self.reports_planned = {name for items in reports.values() for name, _ in items}
        self.hints_waiting = False
        for block_id, items in reports.items():
            for name, rep in items:
                if name in seen_reports:
                    continue
                if rep.reason == SHORT_WRITE and time.time() - rep.reported < SHORT_WRITE_WAIT:
                    self.hints_waiting = True  # its commit may not have happened yet
                    continue
                await self._delete_report(name)  # the block is not referenced (any more)
        self.counts = counts
        self.node_refs = node_refs
        work.sort()
        return work

    async def repair_pass(self) -> bool:
        """One scan and the work it found. Returns True if anything changed."""
        self.last_scan = time.monotonic()
        await self._retire_drained_nodes(before=True)
        work = await self.scan()
        self.queue = collections.deque(work)
        self.pass_started = time.monotonic()
        self.pass_copied_bytes = 0
        self.done_in_pass = 0
        self.unfinished = 0
        self.pass_bytes_left = sum(w.ref.length for w in work if w.kind == "replicate")
        if work:
            log.info("repair pass: %d blocks to work on (%s)", len(work), self.counts)
        changed = False
        tiers = sorted({w.tier for w in work})
        for tier in tiers:
            size = sum(1 for w in work if w.tier == tier)

            async def worker(tier: int = tier) -> None:
                nonlocal changed
                while self.queue and self.queue[0].tier == tier:
                    w = self.queue.popleft()
                    self.in_progress[w.ref.id] = w
                    try:
                        if await self._do(w):
                            changed = True
                    except DfsError as e:
                        self.unfinished += 1
                        log.warning("repair of block %s (inode %d index %d) failed: %s",
                                    w.ref.id, w.ino, w.index, e)
                    finally:
                        del self.in_progress[w.ref.id]
                        self.done_in_pass += 1
                        if w.kind == "replicate":
                            self.pass_bytes_left -= w.ref.length

            async with trio.open_nursery() as nursery:
                # enough workers to keep every node's copy slots busy (self.budget)
                for _ in range(min(self.concurrency * max(1, len(self.known_live)), size, MAX_WORKERS)):
                    nursery.start_soon(worker)
        await self._retire_drained_nodes(before=False)
        self._schedule_retry()
        return changed

    def _schedule_retry(self) -> None:
        """After a pass: another one soon if it left blocks short, later each time it did."""
        if not self.unfinished:
            self.retry_at, self.retry_delay = None, RETRY_FIRST
            return
        log.info("repair pass left %d blocks short; next try in %g s", self.unfinished,
                 self.retry_delay)
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(2 * self.retry_delay, RETRY_MAX)

    async def _do(self, w: Work) -> bool:
        ctx = self.ctx
        if w.kind == "surplus":
            new = await repair.trim(ctx, w.ino, w.index, w.ref, w.target or ctx.config.replicas)
            if new is not None and new.replicas != w.ref.replicas:
                metrics.REPAIRS.labels("surplus").inc()
                return True
            return False
        if w.kind == "spread":
            new = await repair.respread(ctx, w.ino, w.index, w.ref, budget=self.budget)
            if new is None or new.replicas != w.ref.replicas:
                metrics.REPAIRS.labels("zone spread").inc()
                return True
            return False
        before = ctx.stats["copied_bytes"]
        new = await repair.rereplicate(ctx, w.ino, w.index, w.ref, bad=w.bad, reason=w.reason,
                                       budget=self.budget, target=w.target)
        if new is not None and sum(map(ctx.counts, new.replicas)) < (w.target or ctx.config.replicas):
            self.unfinished += 1  # every copy failed (or some): _schedule_retry
        copied = ctx.stats["copied_bytes"] - before
        self.pass_copied_bytes += copied
        metrics.REPAIRED_BYTES.inc(copied)
        for name in w.reports:
            await self._delete_report(name)
        changed = new is None or new.replicas != w.ref.replicas
        if changed:
            metrics.REPAIRS.labels(w.reason).inc()
        return changed

    async def _retire_drained_nodes(self, before: bool) -> None:
        """Mark draining nodes that no block map references any more as retired."""
        if before:
            return  # node_refs is from the previous scan; checked after this pass's scan
        for node_id, reg in self.registry.items():
            if reg.state != "draining" or self.node_refs.get(node_id, 0):
                continue
            if self.queue or self.in_progress:
                continue
            await mark_retired(self.zk, self.ctx.paths, node_id)
            await self.ctx.audit.append("retire", src=[node_id], reason="drained")
            log.info("node %s drained: retired", node_id)

    # ------------------------------------------------------------------ status

    def status(self) -> dict:
        elapsed = max(time.monotonic() - self.pass_started, 1e-3) if self.pass_started else 0
        rate = self.pass_copied_bytes / elapsed if elapsed else 0.0
        eta = self.pass_bytes_left / rate if rate > 0 else None
        doc = {
            "leader": self.node_id,
            "elected": self.elected,
            "updated": time.time(),
            "gone_since": self.gone_since,
            "dead": sorted(self.dead),
            "waiting_for_grace": sorted(self.in_grace()),
            "queue_length": len(self.queue) + len(self.in_progress),
            "done_in_pass": self.done_in_pass,
            "in_progress": [w.describe() for w in self.in_progress.values()],
            "pending": [w.describe() for w in itertools.islice(self.queue, PENDING_SHOWN)],
            "order": "fewest counting replicas first (1 before 2), then surplus replicas",
            "eta_seconds": eta,
            "repair_bytes_per_second": rate,
            "counts": self.counts,
            "totals": dict(self.ctx.stats),
        }
        if self.status_extra is not None:
            doc.update(self.status_extra())
        return doc

    def export_metrics(self) -> None:
        """The leader's gauges (dfs.metrics), from the last scan and the queue as it is now."""
        queue: collections.Counter = collections.Counter(
            w.kind if w.kind in ("surplus", "spread") else str(w.tier)
            for w in itertools.chain(self.queue, self.in_progress.values()))
        for urgency in set(queue) | {"0", "1", "2", "surplus"}:
            metrics.REPAIR_QUEUE.labels(urgency).set(queue.get(urgency, 0))
        for state in ("under_replicated", "missing", "corrupt", "over_replicated", "waiting", "mis_spread"):
            metrics.BLOCKS.labels(state).set(self.counts.get(state, 0))
        metrics.BLOCKS.labels("total").set(self.counts.get("blocks", 0))
        metrics.EXPOSURE.set(self.counts.get("exposed_bytes", 0))
        for state, n in (("live", len(self.known_live)), ("gone", len(self.in_grace())),
                         ("dead", len(self.dead))):
            metrics.NODES.labels(state).set(n)

    async def _status_loop(self) -> None:
        path = self.ctx.paths.repair_status
        while True:
            self.export_metrics()
            data = json.dumps(self.status()).encode()
            try:
                try:
                    await self.zk.set(path, data)
                except NoNodeError:
                    await self.zk.create(path, data)
            except Exception as e:  # best effort; the next round tries again
                log.debug("could not publish repair status: %s", e)
            await trio.sleep(self.tick)


async def mark_retired(zk: ZkClient, paths: FsPaths, node_id: str) -> bool:
    """draining -> retired (version-checked). False if the node is not draining."""
    found = await cluster.set_node_state(zk, paths, node_id, {"draining"}, "retired")
    return found in ("draining", "retired")
