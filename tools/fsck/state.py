"""What one fsck run knows, and the helpers every check group reports and repairs through.

Memory: what is kept for the whole run is bitmaps of inode numbers (reached,
existing), small dicts for the rare suspects (hard links, directory parents),
and an index of the blocks the nodes hold (block id -> node mask, length,
checksum, mtime): O(blocks), about 200 bytes each.
"""

import json
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import trio

from dfs.blocks.client import BlockClient
from dfs.blocks.connection import NodeSlow
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs import placement
from dfs.maint import cluster
from dfs.maint.cluster import RepairContext
from dfs.maint.gc import gc_entries
from dfs.meta import Meta
from dfs.meta.writers import WriterMarks, read_marks
from dfs.paths import FsPaths
from dfs.records import DirEntry, GcEntry, InodeRecord, NodeLive, NodeRegistration
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError, ZkClient, ZnodeStat
from tools.fsck.report import Problem, Progress, Report

log = logging.getLogger(__name__)

LIST_PATIENCE = 10    # a slow node's second listing may take this many request timeouts
CHUNK = 512           # directory entries (or inodes) per multi-read round
REF = 1               # bit 0 of a BlockIndex mask: some block map names the block


@dataclass
class Options:
    path: str = "/"
    repair: bool = False
    dry_run: bool = False
    verify_data: bool = False
    lost_found: str = "move"  # or "delete"
    orphan_age: float = 3600.0


class Bitmap:
    """A growable set of small non-negative ints (inode numbers), one bit each."""

    def __init__(self, size: int = 1 << 16):
        self.bits = bytearray((size >> 3) + 1)

    def add(self, n: int) -> None:
        i = n >> 3
        if i >= len(self.bits):
            self.bits.extend(bytes(max(i + 1 - len(self.bits), len(self.bits))))
        self.bits[i] |= 1 << (n & 7)

    def discard(self, n: int) -> None:
        i = n >> 3
        if i < len(self.bits):
            self.bits[i] &= ~(1 << (n & 7)) & 0xFF

    def __contains__(self, n: int) -> bool:
        i = n >> 3
        return i < len(self.bits) and bool(self.bits[i] >> (n & 7) & 1)


class BlockIndex:
    """What the nodes hold: block id -> [mask, length, checksum, newest mtime].

    Bit 0 of the mask: referenced by a block map; bit slot(node) + 1: the node
    lists it. A node whose listing disagrees with the first one about length or
    checksum is remembered in `odd`.
    """

    def __init__(self) -> None:
        self.slots: dict[str, int] = {}
        self.blocks: dict[str, list] = {}
        self.odd: dict[tuple[str, str], tuple[int, str]] = {}

    def bit(self, node_id: str) -> int:
        s = self.slots.get(node_id)
        return 0 if s is None else 2 << s

    def add(self, node_id: str, bid: str, length: int, checksum: str, mtime: float) -> None:
        bit = 2 << self.slots.setdefault(node_id, len(self.slots))
        e = self.blocks.get(bid)
        if e is None:
            self.blocks[bid] = [bit, length, checksum, mtime]
            return
        e[0] |= bit
        if e[1] != length or e[2] != checksum:
            self.odd[(bid, node_id)] = (length, checksum)
        if mtime > e[3]:
            e[3] = mtime

    def listed(self, bid: str, node_id: str) -> tuple[int, str] | None:
        e = self.blocks.get(bid)
        if e is None or not e[0] & self.bit(node_id):
            return None
        return self.odd.get((bid, node_id)) or (e[1], e[2])

    def holders(self, mask: int) -> list[str]:
        return [n for n, s in self.slots.items() if mask & (2 << s)]


@dataclass
class DirWalk:
    """One directory being walked: what its entries add up to."""

    ino: int
    path: str
    nlink: int
    subdirs: int = 0
    pending: int = 0
    quiet: bool = False  # a subtree found late (moved while we walked): namespace checks off


@dataclass
class FileInfo:
    path: str
    ino: int
    rec: InodeRecord
    parent: int = 0
    name: bytes = b""
    groups: list[str] = field(default_factory=list)


def _fast(cls):
    """A decoder for a record class that skips dataclasses.fields() per call (a third of the
    walk's CPU) on revision 1's long form; compact records and payloads of another
    revision take the class's own from_dict."""
    def decode(data: bytes):
        d = json.loads(data)
        revision = d.pop("revision", None)
        if revision is None:
            return cls.from_dict(d)
        try:
            return cls(**d)
        except TypeError:
            return cls.from_dict({**d, "revision": revision})
    return decode


decode_inode = _fast(InodeRecord)
decode_dirent = _fast(DirEntry)


def join(parent: str, name: bytes) -> str:
    text = os.fsdecode(name)
    return f"/{text}" if parent == "/" else f"{parent}/{text}"


class FsckState:
    """One run's knowledge of the cluster and its findings; `problem`, `in_flux`, `act`.

    A busy cluster is never trusted on one read of something that looks wrong:
    `start_zxid` is ZooKeeper's transaction id when the run starts, and a
    suspect whose znodes changed after it (mzxid/pzxid > start_zxid) is
    counted as `skipped_in_flux`, not reported.
    """

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, nodedir: NodeDirectory,
                 blocks: BlockClient, opts: Options, report: Report, progress: Progress):
        self.zk = zk
        self.paths = paths
        self.config = config
        self.nodedir = nodedir
        self.blocks = blocks
        self.opts = opts
        self.report = report
        self.progress = progress
        self.ctx = RepairContext(zk, paths, config, nodedir, blocks, actor="fsck")
        self.meta = Meta(zk, paths, config, mount_id=f"fsck-{uuid.uuid4().hex[:8]}")
        self.full = True  # PATH is `/`: the whole-namespace checks run too
        self.start_zxid = 0
        self.index = BlockIndex()
        self.live: dict[str, NodeLive] = {}
        self.registry: dict[str, NodeRegistration] = {}
        self.zone_of: dict[str, str] = {}
        self.zones = 0
        self.reached = Bitmap()
        self.exists = Bitmap()
        self.reports: dict[tuple[str, str], str] = {}  # (block, node) -> report znode name
        self.reports_seen: set[tuple[str, str]] = set()
        self.gc_entries: dict[str, tuple[GcEntry, int, int]] = {}  # name -> (entry, version, mzxid)
        self.gc_blocks: dict[str, str] = {}           # block -> gc entry name
        self.gc_inodes: dict[int, str] = {}           # inode -> gc entry name (whole map garbage)
        self.gc_conflicts: dict[str, set[str]] = {}   # gc entry -> blocks still referenced
        self.open_inodes: set[int] = set()            # inodes with open/ holders
        self.trash_inodes: set[int] = set()           # inodes with a trash/ entry (dfs.meta.trash)
        self.lost_files: dict[int, FileInfo] = {}     # files with a block that has no good replica
        self.lost_problems: dict[int, list[Problem]] = {}
        self.pairs = False  # any odd listings or corrupt reports at all (fast-path shortcut)
        self.marks = WriterMarks()  # the writer records, read before any block map

    def problem(self, category: str, path: str = "", detail: str = "", *, ino: int = 0,
                block: str = "", nodes: list[str] | None = None) -> Problem:
        return self.report.add(Problem(category, path, detail, ino, block, list(nodes or [])))

    def in_flux(self, *stats: ZnodeStat | None) -> bool:
        """Did any of these znodes (ZnodeStat or None) change after the check started?"""
        for st in stats:
            if st is not None and (st.mzxid > self.start_zxid or st.pzxid > self.start_zxid):
                self.report.skipped_in_flux += 1
                return True
        return False

    async def act(self, p: Problem, plan: str, coro_fn: Callable[..., Awaitable[str | None]], *args) -> None:
        """Repair `p` by `await coro_fn(*args)` (returns a description), or record the plan."""
        if not self.opts.repair:
            return
        if self.opts.dry_run:
            p.repair = f"would {plan}"
            return
        try:
            done = await coro_fn(*args)
            p.repair = f"repaired: {done or plan}"
        except (DfsError, BadVersionError, NoNodeError, NodeExistsError, NotEmptyError) as e:
            p.repair = f"not repaired: {plan} failed ({e!r})"

    async def children(self, path: str) -> list[str] | None:
        try:
            return await self.zk.get_children(path)
        except NoNodeError:
            return None

    # ------------------------------------------------------------------ what the run starts from

    async def load(self) -> None:
        """Nodes (registry, live), corrupt reports, gc entries, open holders, and start_zxid."""
        await self.zk.get(self.paths.config)
        self.start_zxid = self.zk.last_zxid
        self.marks = await read_marks(self.zk, self.paths)
        self.registry = await cluster.registry(self.zk, self.paths)
        await self.nodedir.refresh()
        self.live = self.nodedir.live()
        self.zone_of = {n: live.zone for n, live in self.live.items()}
        self.zones = len(placement.zones(self.live.values()))  # a retired node that runs is no zone
        self.report.live_nodes = len(self.live)
        self.report.dead_nodes = sum(1 for n, reg in self.registry.items()
                                     if n not in self.live and reg.state != "retired")
        for name, rep in (await cluster.corrupt_reports(self.zk, self.paths)).items():
            self.reports[(rep.block_id, rep.node_id)] = name
        for name, (entry, st) in (await gc_entries(self.zk, self.paths)).items():
            self.gc_entries[name] = (entry, st.version, st.mzxid)
            for bid in entry.blocks:
                self.gc_blocks[bid] = name
            if entry.inode:
                self.gc_inodes[entry.inode] = name
        opened = [int(i) for i in await self.children(self.paths.open) or [] if i.isdigit()]
        holders = await self.zk.children_many([self.paths.open_dir(i) for i in opened])
        self.open_inodes.update(i for i, h in zip(opened, holders) if h)
        self.trash_inodes.update(int(i) for i in await self.children(self.paths.trash) or [] if i.isdigit())

    async def list_node_blocks(self) -> None:
        """LIST every live node (streamed) into the block index."""
        index = self.index
        now = time.time()

        async def one(node_id: str) -> None:
            # A node that is connected but slow (a busy disk) gets a second, longer
            # try before it counts as dead (a block listed twice is counted once).
            for patience in (None, LIST_PATIENCE * self.blocks.request_timeout):
                n = 0
                try:
                    async for bid, length, csum, mtime in self.blocks.list_blocks(node_id, timeout=patience):
                        index.add(node_id, bid, length, csum, mtime or now)
                        n += 1
                        if n % 4096 == 0:
                            self.progress.tick()
                    return
                except NodeSlow as e:
                    why = str(e)
                    log.warning("%s: listing it again with more patience", why)
                except DfsError as e:
                    why = str(e)
                    break
            self.unreachable(node_id, why)

        for node_id in self.live:
            index.slots.setdefault(node_id, len(index.slots))
        async with trio.open_nursery() as nursery:
            for node_id in list(self.live):
                nursery.start_soon(one, node_id)
        self.pairs = bool(index.odd or self.reports)

    def unreachable(self, node_id: str, why: str) -> None:
        if node_id in self.live:
            del self.live[node_id]
            self.report.live_nodes -= 1
            self.report.dead_nodes += 1
            self.problem("node_unreachable", detail=why, nodes=[node_id])

    async def old_copies(self, bid: str, node_ids: list[str], any_age: bool = False) -> list[str]:
        """Those of `node_ids` that still hold `bid` and have for longer than --orphan-age
        (any_age: however young)."""
        out = []
        limit = math.inf if any_age else time.time() - self.opts.orphan_age
        for n in node_ids:
            if n not in self.live:
                continue
            try:
                st = await self.blocks.stat_block(n, bid)
            except DfsError:
                continue
            if st["mtime"] <= limit:
                out.append(n)
        return out

