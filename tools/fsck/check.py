"""`dfs fsck [PATH]`: check (and with --repair, fix) a live filesystem (DESIGN.md section 6).

Like S3QL's fsck, this is a class of `check_*` methods, one invariant each; the
walk feeds them. What the check runs against is a busy cluster, so it never
trusts one read of something that looks wrong:

- `start_zxid` is ZooKeeper's transaction id when the check starts. A suspect
  whose znodes changed after it (mzxid/pzxid > start_zxid) was touched while we
  looked: it is counted as `skipped_in_flux`, not reported.
- Storage nodes are listed (LIST) before the namespace is walked; a replica the
  listing lacks is asked for again (STAT) before it counts as missing, since
  its block may have been written after the listing.
- A block counts as an orphan only if no block map and no gc/ entry names it,
  it is older than --orphan-age, and a STAT still finds it.

Memory: the walk goes directory by directory (a LIFO of pending directories)
and holds one chunk of entries at a time. What is kept for the whole run:
bitmaps of inode numbers (reached, existing), small dicts for the rare
suspects (hard links, directory parents), and an index of the blocks the nodes
hold (block id -> node mask, length, checksum, mtime): O(blocks), about 200
bytes each. Orphan, unreachable-inode and gc/report checks need the whole
namespace, so they run only when PATH is `/`.

Repairs (only with --repair; --dry-run prints the plan) are version-checked
ZooKeeper transactions or the shared primitives of `dfs.maint.repair`
(re-replicate, drop replicas, collect gc entries), and `dfs.meta.store` for moving
or deleting files.
"""

import argparse
import errno
import json
import logging
import os
import stat
import sys
import time
import uuid
from dataclasses import dataclass, field

import trio

from dfs.blocks.client import BlockClient, NodeUnavailable
from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.errors import DfsError, UsageError
from dfs.maint import repair
from dfs.meta import Meta
from dfs.mkfs import load_config
from dfs.names import unescape
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.records import BlockGroup, BlockRef, CorruptReport, DirEntry, GcEntry, InodeRecord, NodeRegistration
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, NotEmptyError, Txn, ZkClient, connect
from tools.fsck.report import Problem, Progress, Report

log = logging.getLogger(__name__)

EXIT_OK, EXIT_DAMAGE, EXIT_USAGE = 0, 1, 2
CHUNK = 512           # directory entries per multi-read round
GROUP_BATCH = 128     # block groups per multi-read (a full group is ~40 KiB)
WORKERS = 12          # directory chunks in flight
SLOW_SLOTS = 64       # blocks being looked at closely (STAT, VERIFY, repair) at once
VERIFY_PER_NODE = 4   # VERIFY requests in flight per node
LOST_FOUND = b"lost+found"
GC_STALE_AFTER = 600.0  # seconds; a gc/ entry older than this (or --orphan-age) is stale
REF = 1               # bit 0 of a BlockIndex mask: some block map names the block


@dataclass
class Options:
    path: str = "/"
    repair: bool = False
    dry_run: bool = False
    verify_data: bool = False
    lost_found: str = "move"  # or "delete"
    orphan_age: float = 3600.0

    @property
    def changing(self) -> bool:
        return self.repair and not self.dry_run


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
    version: int
    mzxid: int
    subdirs: int = 0
    pending: int = 0
    quiet: bool = False  # a subtree found late (moved while we walked): namespace checks off


@dataclass
class FileInfo:
    path: str
    ino: int
    rec: InodeRecord
    version: int
    mzxid: int
    parent: int = 0
    name: bytes = b""
    groups: list[str] = field(default_factory=list)
    lost: bool = False  # a block with no good replica


def _fast(cls):
    """A decoder for a record class that skips dataclasses.fields() per call (a third of the
    walk's CPU); falls back to the class's own decode for payloads of another revision."""
    def decode(data: bytes):
        d = json.loads(data)
        d.pop("revision", None)
        try:
            return cls(**d)
        except TypeError:
            return cls.from_dict(d)
    return decode


decode_inode = _fast(InodeRecord)
decode_dirent = _fast(DirEntry)


def decode_group(data: bytes) -> BlockGroup:
    out = {}
    for i, b in json.loads(data).get("blocks", {}).items():
        try:
            out[int(i)] = BlockRef(**b)
        except TypeError:
            out[int(i)] = BlockRef.from_dict(b)
    return BlockGroup(blocks=out)


def join(parent: str, name: bytes) -> str:
    text = os.fsdecode(name)
    return f"/{text}" if parent == "/" else f"{parent}/{text}"


class Fsck:
    """One fsck run. `await run()` returns the Report."""

    def __init__(self, zk: ZkClient, paths: FsPaths, config: FsConfig, nodedir: NodeDirectory,
                 blocks: BlockClient, opts: Options, report: Report | None = None,
                 progress: Progress | None = None):
        self.zk = zk
        self.paths = paths
        self.config = config
        self.nodedir = nodedir
        self.blocks = blocks
        self.opts = opts
        self.report = report or Report()
        self.progress = progress or Progress(self.report, out=open(os.devnull, "w"))
        self.ctx = repair.RepairContext(zk, paths, config, nodedir, blocks, actor="fsck")
        self.meta = Meta(zk, paths, config, mount_id=f"fsck-{uuid.uuid4().hex[:8]}")
        self.full = True
        self.start_zxid = 0
        self.index = BlockIndex()
        self.live: dict[str, object] = {}
        self.registry: dict[str, NodeRegistration] = {}
        self.zone_of: dict[str, str] = {}
        self.zones = 0
        self.reached = Bitmap()
        self.exists = Bitmap()
        self.dirs_seen = Bitmap()
        self.nlink_suspects: dict[int, list] = {}     # ino -> [nlink, entries seen, path]
        self.dir_first: dict[int, tuple[int, bytes, str]] = {}  # dir -> first (parent, name, path)
        self.dir_suspects: dict[int, list] = {}       # dir -> [(parent, name, path), ...]
        self.reports: dict[tuple[str, str], str] = {}  # (block, node) -> report znode name
        self.reports_seen: set[tuple[str, str]] = set()
        self.gc_entries: dict[str, tuple[GcEntry, int, int]] = {}  # name -> (entry, version, mzxid)
        self.gc_blocks: dict[str, str] = {}           # block -> gc entry name
        self.gc_inodes: dict[int, str] = {}           # inode -> gc entry name (whole map garbage)
        self.gc_conflicts: dict[str, set[str]] = {}   # gc entry -> blocks still referenced
        self.open_inodes: set[int] = set()            # inodes with open/ holders
        self.lost_files: dict[int, FileInfo] = {}
        self.lost_problems: dict[int, list[Problem]] = {}
        self._pairs = False  # any odd listings or corrupt reports at all (fast-path shortcut)
        self.lf_ino: int | None = None
        self._queue: list = []
        self._busy = 0
        self._changed = trio.Event()
        self._slow = trio.Semaphore(SLOW_SLOTS)
        self._verify_limit: dict[str, trio.Semaphore] = {}
        self._nursery: trio.Nursery | None = None
        self._walk_quiet = False

    # ================================================================== the run

    async def run(self) -> Report:
        t0 = time.monotonic()
        r = self.report
        r.path = self.opts.path
        r.default_replication = self.config.replicas
        r.min_replication = self.config.min_replicas
        self.progress.set_phase("nodes")
        await self.load_state()
        await self.list_node_blocks()
        self._pairs = bool(self.index.odd or self.reports)
        start = await self.resolve(self.opts.path)
        self.full = start[0] == ROOT_INO
        self.progress.set_phase("namespace")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self.walk(start)
            if self.full:
                self.progress.set_phase("unreachable inodes")
                await self.scan_unreached()
                self.progress.set_phase("leftovers")
                await self.scan_leftovers()
        self._nursery = None
        self.finish_nlink_checks()
        await self.check_file_nlinks()
        await self.check_dir_links()
        if self.full:
            self.progress.set_phase("housekeeping")
            await self.check_gc_entries()
            await self.check_repair_reports()
            self.progress.set_phase("orphan blocks")
            await self.check_orphan_blocks()
        if self.lost_files:
            await self.repair_lost_files()
        if self.opts.repair:
            r.unrepaired = sum(1 for p in r.problems if not p.repair.startswith("repaired"))
        r.finish(time.monotonic() - t0)
        self.progress.close()
        return r

    def problem(self, category: str, path: str = "", detail: str = "", *, ino: int = 0,
                block: str = "", nodes: list[str] | None = None) -> Problem:
        return self.report.add(Problem(category, path, detail, ino, block, list(nodes or [])))

    def in_flux(self, *stats) -> bool:
        """Did any of these znodes (ZnodeStat or None) change after the check started?"""
        for st in stats:
            if st is not None and (st.mzxid > self.start_zxid or st.pzxid > self.start_zxid):
                self.report.skipped_in_flux += 1
                return True
        return False

    async def act(self, p: Problem, plan: str, coro_fn, *args) -> None:
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

    # ================================================================== state

    async def load_state(self) -> None:
        """Nodes (registry, live), corrupt reports, gc entries, open holders, and start_zxid."""
        await self.zk.get(self.paths.config)
        self.start_zxid = self.zk.last_zxid
        self.registry = await repair.registry(self.ctx)
        await self.nodedir.refresh()
        self.live = self.nodedir.live()
        for n, live in self.live.items():
            self.zone_of[n] = live.zone
        self.zones = len({live.zone for live in self.live.values()})
        self.report.live_nodes = len(self.live)
        self.report.dead_nodes = sum(1 for n, reg in self.registry.items()
                                     if n not in self.live and reg.state != "retired")
        names = await self._children(self.paths.repair_reports) or []
        got = await self.zk.get_many([f"{self.paths.repair_reports}/{n}" for n in names])
        for name, item in zip(names, got):
            if item is not None:
                rep = CorruptReport.decode(item[0])
                self.reports[(rep.block_id, rep.node_id)] = name
        names = await self._children(self.paths.gc) or []
        for i in range(0, len(names), 64):
            part = names[i:i + 64]
            for name, item in zip(part, await self.zk.get_many([self.paths.gc_entry(n) for n in part])):
                if item is None:
                    continue
                entry = GcEntry.decode(item[0])
                self.gc_entries[name] = (entry, item[1].version, item[1].mzxid)
                for bid in entry.blocks:
                    self.gc_blocks[bid] = name
                if entry.inode:
                    self.gc_inodes[entry.inode] = name
        opened = await self._children(self.paths.open) or []
        holders = await self.zk.children_many([self.paths.open_dir(int(i)) for i in opened if i.isdigit()])
        for i, h in zip([int(i) for i in opened if i.isdigit()], holders):
            if h:
                self.open_inodes.add(i)

    async def _children(self, path: str) -> list[str] | None:
        try:
            return await self.zk.get_children(path)
        except NoNodeError:
            return None

    async def list_node_blocks(self) -> None:
        """LIST every live node (streamed) into the block index."""
        index = self.index
        now = time.time()

        async def one(node_id: str) -> None:
            n = 0
            try:
                async for bid, length, csum, mtime in self.blocks.list_blocks(node_id):
                    index.add(node_id, bid, length, csum, mtime or now)
                    n += 1
                    if n % 4096 == 0:
                        self.progress.tick()
            except DfsError as e:
                self.unreachable(node_id, str(e))

        for node_id in self.live:
            index.slots.setdefault(node_id, len(index.slots))
        async with trio.open_nursery() as nursery:
            for node_id in list(self.live):
                nursery.start_soon(one, node_id)

    def unreachable(self, node_id: str, why: str) -> None:
        if node_id in self.live:
            del self.live[node_id]
            self.report.live_nodes -= 1
            self.report.dead_nodes += 1
            self.problem("node_unreachable", detail=why, nodes=[node_id])

    async def resolve(self, path: str) -> tuple[int, str, InodeRecord]:
        """PATH -> (ino, normalized path, inode); UsageError if it does not exist."""
        ino = ROOT_INO
        parts = [p for p in path.split("/") if p and p != "."]
        norm = "/"
        for part in parts:
            try:
                node = await self.meta.lookup(ino, os.fsencode(part))
            except DfsError as e:
                raise UsageError(f"{path}: {os.strerror(e.errno)}") from None
            ino = node.ino
            norm = join(norm, os.fsencode(part))
        got = await self.zk.get_many([self.paths.inode(ino)])
        if got[0] is None:
            raise UsageError(f"{path}: no such file or directory")
        self.report.path = norm
        return ino, norm, decode_inode(got[0][0])

    # ================================================================== the walk

    async def walk(self, start: tuple[int, str, InodeRecord], quiet: bool = False) -> None:
        """Walk the tree under `start` with WORKERS tasks (a LIFO of chunks keeps the frontier small)."""
        ino, path, rec = start
        got = await self.zk.get_many([self.paths.inode(ino)])
        if got[0] is None:
            return
        st = got[0][1]
        self.reached.add(ino)
        if not rec.is_dir:
            f = FileInfo(path, ino, rec, st.version, st.mzxid)
            self.count_file(f)
            if rec.is_reg:
                f.groups = await self._children(self.paths.block_map(ino)) or []
                await self.check_files([f])
            return
        self.dirs_seen.add(ino)
        self.report.total_dirs += 1
        if ino == ROOT_INO and not quiet:
            await self.check_root(rec, st)
        self._queue.append(("dir", DirWalk(ino, path, rec.nlink, st.version, st.mzxid, quiet=quiet)))
        async with trio.open_nursery() as nursery:
            for _ in range(WORKERS):
                nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        while True:
            while not self._queue:
                if self._busy == 0:
                    self._poke()
                    return
                await self._changed.wait()
            item = self._queue.pop()
            self._busy += 1
            try:
                if item[0] == "dir":
                    await self.walk_dir(item[1])
                else:
                    await self.walk_chunk(item[1], item[2])
            finally:
                self._busy -= 1
                self._poke()
            self.progress.tick()

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _push(self, item: tuple) -> None:
        self._queue.append(item)
        self._poke()

    async def walk_dir(self, d: DirWalk) -> None:
        names = await self._children(self.paths.dir(d.ino))
        if names is None:
            if not d.quiet:
                await self.check_dir_listing(d)
            return
        if not names:
            await self.finish_dir(d)
            return
        chunks = [names[i:i + CHUNK] for i in range(0, len(names), CHUNK)]
        d.pending = len(chunks)
        for c in reversed(chunks):
            self._push(("chunk", d, c))

    async def walk_chunk(self, d: DirWalk, names: list[str]) -> None:
        base = self.paths.dir(d.ino)
        dirents = await self.zk.get_many([f"{base}/{n}" for n in names])
        todo: list[tuple[str, DirEntry, object]] = []
        reads: list[tuple[str, str]] = []
        repeats: list[tuple[str, DirEntry, object]] = []
        for name, got in zip(names, dirents):
            if got is None:
                continue  # removed while we listed
            ent = decode_dirent(got[0])
            if ent.ino in self.reached:
                repeats.append((name, ent, got[1]))
                continue
            self.reached.add(ent.ino)
            todo.append((name, ent, got[1]))
            reads.append(("get", self.paths.inode(ent.ino)))
            reads.append(("children", self.paths.block_map(ent.ino)) if not stat.S_ISDIR(ent.mode)
                         else ("get", self.paths.dir(ent.ino)))
        got = await self.zk.read_many(reads) if reads else []
        files: list[FileInfo] = []
        for k, (name, ent, dst) in enumerate(todo):
            path = join(d.path, unescape(name))
            item, extra = got[2 * k], got[2 * k + 1]
            if item is None:
                self.reached.discard(ent.ino)
                if not d.quiet:
                    await self.check_dangling_dirent(d, name, ent, path)
                continue
            rec = decode_inode(item[0])
            st = item[1]
            if stat.S_IFMT(rec.mode) != stat.S_IFMT(ent.mode) and not d.quiet:
                await self.check_dirent_type(d, name, ent, rec, path)
            if rec.is_dir:
                d.subdirs += 1
                self.dirs_seen.add(ent.ino)
                self.report.total_dirs += 1
                self.dir_first[ent.ino] = (d.ino, name, path)
                if rec.parent != d.ino and not d.quiet:
                    self.dir_suspects[ent.ino] = [(d.ino, name, path)]
                self._push(("dir", DirWalk(ent.ino, path, rec.nlink, st.version, st.mzxid, quiet=d.quiet)))
                continue
            f = FileInfo(path, ent.ino, rec, st.version, st.mzxid, d.ino, unescape(name))
            self.count_file(f)
            if rec.nlink != 1:
                self.nlink_suspects[ent.ino] = [rec.nlink, 1, path]
            if rec.is_reg:
                if stat.S_ISDIR(ent.mode):  # the entry lied about the type: read the map now
                    extra = await self._children(self.paths.block_map(ent.ino))
                f.groups = extra or []
                files.append(f)
        for name, ent, dst in repeats:
            await self.count_repeat(d, name, ent)
        if files:
            await self.check_files(files)
        d.pending -= 1
        if d.pending == 0:
            await self.finish_dir(d)

    def count_file(self, f: FileInfo) -> None:
        r = self.report
        if f.rec.is_link:
            r.total_symlinks += 1
        else:
            r.total_files += 1
            r.total_size += f.rec.size if f.rec.is_reg else 0

    async def count_repeat(self, d: DirWalk, name: str, ent: DirEntry) -> None:
        """A second entry for an inode already reached: a hard link, or a directory linked twice."""
        if ent.ino in self.dirs_seen:
            if d.quiet:
                return
            first = self.dir_first.get(ent.ino)
            links = self.dir_suspects.setdefault(ent.ino, [first] if first else [])
            links.append((d.ino, name, join(d.path, unescape(name))))
            return
        s = self.nlink_suspects.get(ent.ino)
        if s is None:
            self.nlink_suspects[ent.ino] = [1, 2, join(d.path, unescape(name))]
        else:
            s[1] += 1

    async def finish_dir(self, d: DirWalk) -> None:
        if d.nlink != 2 + d.subdirs and not d.quiet:
            await self.check_dir_nlink(d)

    # ================================================================== namespace checks

    async def check_root(self, rec: InodeRecord, st) -> None:
        """The root is a directory whose parent is itself or unset."""
        if rec.parent not in (0, ROOT_INO) and not self.in_flux(st):
            p = self.problem("wrong_parent", "/", f"root's parent is {rec.parent}", ino=ROOT_INO)
            await self.act(p, "set the root's parent to 0", self._set_parent, ROOT_INO, 0)

    async def check_dir_listing(self, d: DirWalk) -> None:
        """Every directory inode has its dirs/<ino> znode."""
        got = await self.zk.read_many([("get", self.paths.inode(d.ino)), ("get", self.paths.dir(d.ino))])
        if got[0] is None or got[1] is not None or self.in_flux(got[0][1]):
            return
        p = self.problem("missing_dir_listing", d.path, "directory has no dirs/ znode", ino=d.ino)

        async def fix() -> str:
            await self.zk.commit(Txn().check(self.paths.inode(d.ino), got[0][1].version)
                                 .create(self.paths.dir(d.ino)))
            return "created an empty listing"
        await self.act(p, "create an empty listing", fix)

    async def check_dangling_dirent(self, d: DirWalk, name: str, ent: DirEntry, path: str) -> None:
        """Every entry names an existing inode."""
        got = await self.zk.read_many([("get", f"{self.paths.dir(d.ino)}/{name}"),
                                       ("get", self.paths.inode(ent.ino))])
        if got[0] is None or got[1] is not None or self.in_flux(got[0][1]):
            return
        if decode_dirent(got[0][0]).ino != ent.ino:
            return
        p = self.problem("dangling_dirent", path, f"entry names inode {ent.ino}, which does not exist",
                         ino=ent.ino)
        version = got[0][1].version

        async def fix() -> str:
            await self.zk.commit(Txn().delete(f"{self.paths.dir(d.ino)}/{name}", version)
                                 .set(self.paths.dir(d.ino), str(time.time_ns()).encode()))
            if stat.S_ISDIR(ent.mode):
                await self._fix_dir_nlink(d.ino)
            return "removed the entry"
        await self.act(p, "remove the entry", fix)

    async def check_dirent_type(self, d: DirWalk, name: str, ent: DirEntry, rec: InodeRecord,
                                path: str) -> None:
        """An entry's file type matches its inode's."""
        got = await self.zk.read_many([("get", f"{self.paths.dir(d.ino)}/{name}"),
                                       ("get", self.paths.inode(ent.ino))])
        if got[0] is None or got[1] is None or self.in_flux(got[0][1], got[1][1]):
            return
        p = self.problem("dirent_type", path, f"entry says type {stat.S_IFMT(ent.mode):o}, "
                         f"inode is {stat.S_IFMT(rec.mode):o}", ino=ent.ino)
        version = got[0][1].version

        async def fix() -> str:
            await self.zk.commit(Txn().set(f"{self.paths.dir(d.ino)}/{name}",
                                           DirEntry(ent.ino, stat.S_IFMT(rec.mode)).encode(), version))
            return "rewrote the entry's type"
        await self.act(p, "rewrite the entry's type", fix)

    async def count_subdirs(self, ino: int) -> tuple[int, object, object] | None:
        """Fresh count of a directory's subdirectories: (count, inode stat, dirs/ stat)."""
        names = await self._children(self.paths.dir(ino))
        if names is None:
            return None
        base = self.paths.dir(ino)
        count = 0
        for i in range(0, len(names), CHUNK):
            part = names[i:i + CHUNK]
            ents = [decode_dirent(g[0]) for g in await self.zk.get_many([f"{base}/{n}" for n in part]) if g]
            inodes = await self.zk.get_many([self.paths.inode(e.ino) for e in ents])
            count += sum(1 for g in inodes if g is not None and decode_inode(g[0]).is_dir)
        got = await self.zk.read_many([("get", self.paths.inode(ino)), ("get", self.paths.dir(ino))])
        if got[0] is None or got[1] is None:
            return None
        return count, got[0], got[1]

    async def check_dir_nlink(self, d: DirWalk) -> None:
        """A directory's nlink is 2 + its subdirectories."""
        fresh = await self.count_subdirs(d.ino)
        if fresh is None:
            return
        count, (data, st), (_, dst) = fresh
        rec = decode_inode(data)
        if rec.nlink == 2 + count or self.in_flux(st, dst):
            return
        p = self.problem("wrong_dir_nlink", d.path, f"nlink {rec.nlink}, expected {2 + count}", ino=d.ino)
        await self.act(p, f"set nlink to {2 + count}", self._fix_dir_nlink, d.ino)

    async def _fix_dir_nlink(self, ino: int) -> str:
        fresh = await self.count_subdirs(ino)
        if fresh is None:
            return "directory is gone"
        count, (data, st), _ = fresh
        rec = decode_inode(data)
        if rec.nlink == 2 + count:
            return "already right"
        rec.nlink = 2 + count
        await self.zk.commit(Txn().set(self.paths.inode(ino), rec.encode(), st.version))
        return f"set nlink to {rec.nlink}"

    async def _set_parent(self, ino: int, parent: int) -> str:
        data, st = await self.zk.get(self.paths.inode(ino))
        rec = decode_inode(data)
        rec.parent = parent
        await self.zk.commit(Txn().set(self.paths.inode(ino), rec.encode(), st.version))
        return f"set parent to {parent}"

    def finish_nlink_checks(self) -> None:
        """Only suspects whose count disagrees with their nlink need a second look."""
        if not self.full:
            self.nlink_suspects.clear()  # links from outside the subtree are unknown
            return
        self.nlink_suspects = {i: s for i, s in self.nlink_suspects.items() if s[0] != s[1]}

    async def check_file_nlinks(self) -> None:
        """A file's nlink is the number of entries naming it."""
        items = list(self.nlink_suspects.items())
        for i in range(0, len(items), CHUNK):
            part = items[i:i + CHUNK]
            got = await self.zk.get_many([self.paths.inode(ino) for ino, _ in part])
            for (ino, (_, count, path)), item in zip(part, got):
                if item is None or self.in_flux(item[1]):
                    continue
                rec = decode_inode(item[0])
                if rec.nlink == count:
                    continue
                p = self.problem("wrong_nlink", path, f"nlink {rec.nlink}, {count} entries name it", ino=ino)
                await self.act(p, f"set nlink to {count}", self._set_nlink, ino, count, item[1].version)

    async def _set_nlink(self, ino: int, nlink: int, version: int) -> str:
        data, st = await self.zk.get(self.paths.inode(ino))
        if st.version != version:
            raise BadVersionError()
        rec = decode_inode(data)
        rec.nlink = nlink
        await self.zk.commit(Txn().set(self.paths.inode(ino), rec.encode(), version))
        return f"set nlink to {nlink}"

    async def check_dir_links(self) -> None:
        """A directory is named by exactly one entry, in the directory its `parent` names."""
        for ino, links in self.dir_suspects.items():
            links = [l for l in links if l is not None]
            got = await self.zk.read_many([("get", self.paths.inode(ino))] +
                                          [("get", f"{self.paths.dir(par)}/{name}") for par, name, _ in links])
            if got[0] is None or self.in_flux(*[g[1] for g in got if g is not None]):
                continue
            rec = decode_inode(got[0][0])
            links = [l for l, g in zip(links, got[1:]) if g is not None and decode_dirent(g[0]).ino == ino]
            if not links:
                continue
            true = [l for l in links if l[0] == rec.parent]
            keep = true[0] if true else links[0]
            for par, name, path in links:
                if (par, name) == keep[:2]:
                    continue
                p = self.problem("dir_hardlink", path, f"directory {ino} is also {keep[2]}", ino=ino)

                async def drop(par=par, name=name) -> str:
                    _, st = await self.zk.get(f"{self.paths.dir(par)}/{name}")
                    await self.zk.commit(Txn().delete(f"{self.paths.dir(par)}/{name}", st.version))
                    await self._fix_dir_nlink(par)
                    return "removed the extra entry"
                await self.act(p, "remove the extra entry", drop)
            if keep[0] != rec.parent:
                p = self.problem("wrong_parent", keep[2], f"parent field {rec.parent}, held by {keep[0]}", ino=ino)
                await self.act(p, f"set parent to {keep[0]}", self._set_parent, ino, keep[0])

    # ================================================================== blocks of files

    async def check_files(self, files: list[FileInfo]) -> None:
        """Read the block maps of some files (batched) and check every block."""
        wanted = [(f, g) for f in files for g in f.groups if g.isdigit()]
        for i in range(0, len(wanted), GROUP_BATCH):
            part = wanted[i:i + GROUP_BATCH]
            got = await self.zk.get_many([self.paths.block_group(f.ino, int(g)) for f, g in part])
            for (f, g), item in zip(part, got):
                if item is not None:
                    await self.check_block_group(f, int(g), decode_group(item[0]), item[1])
        for f in files:
            f.groups = []

    async def check_block_group(self, f: FileInfo, g: int, grp: BlockGroup, gst) -> None:
        bs = self.config.block_size
        per_group = self.config.group_blocks
        r = self.report
        for index, ref in grp.blocks.items():
            if ref.length > bs or ref.length < 0 or index // per_group != g:
                await self.check_block_length(f, g, index, ref, gst)
            elif index * bs + ref.length > f.rec.size:
                await self.check_block_extent(f, g, index, ref, gst)
            r.total_blocks += 1
            r.total_block_bytes += ref.length
            if not self.check_replicas_fast(f, index, ref):
                # bounded: the walk waits here while SLOW_SLOTS blocks are in the slow lane
                await self._slow.acquire()
                self._nursery.start_soon(self._slow_lane, f, index, ref)

    async def check_block_length(self, f: FileInfo, g: int, index: int, ref: BlockRef, gst) -> None:
        """A block is no longer than block_size and sits in the group its index belongs to."""
        if self.in_flux(gst):
            return
        self.problem("bad_block_length", f.path, f"block {index} in group {g}: length {ref.length}, "
                     f"block size {self.config.block_size}", ino=f.ino, block=ref.id)

    async def check_block_extent(self, f: FileInfo, g: int, index: int, ref: BlockRef, gst) -> None:
        """No block reaches past the end of its file."""
        got = await self.zk.get_many([self.paths.inode(f.ino)])
        if got[0] is None or self.in_flux(gst, got[0][1]):
            return
        size = decode_inode(got[0][0]).size
        bs = self.config.block_size
        if index * bs + ref.length <= size:
            return
        p = self.problem("block_past_eof", f.path, f"block {index} ends at {index * bs + ref.length}, "
                         f"size {size}", ino=f.ino, block=ref.id)

        async def fix() -> str:
            # version-checked on the inode (size) and the group; the ref goes to gc/
            data, st = await self.zk.get(self.paths.inode(f.ino))
            gdata, gst2 = await self.zk.get(self.paths.block_group(f.ino, g))
            grp = decode_group(gdata)
            cur = grp.blocks.get(index)
            if cur is None or cur.id != ref.id or index * bs + cur.length <= decode_inode(data).size:
                return "nothing to do any more"
            del grp.blocks[index]
            txn = Txn().check(self.paths.inode(f.ino), st.version)
            if grp.blocks:
                txn.set(self.paths.block_group(f.ino, g), grp.encode(), gst2.version)
            else:
                txn.delete(self.paths.block_group(f.ino, g), gst2.version)
            txn.create(self.paths.gc_entry(uuid.uuid4().hex),
                       GcEntry(blocks={ref.id: list(ref.replicas)}, queued=time.time()).encode())
            await self.zk.commit(txn)
            return "dropped the block from the map (queued for gc)"
        await self.act(p, "drop the block from the map", fix)

    # ------------------------------------------------------------------ replicas

    def check_replicas_fast(self, f: FileInfo, index: int, ref: BlockRef) -> bool:
        """The common case decided without I/O; anything unusual goes to `check_replicas`."""
        e = self.index.blocks.get(ref.id)
        reps = ref.replicas
        ok = e is not None and not self.opts.verify_data and len(reps) == self.config.replicas
        if ok:
            e[0] |= REF
            bits = 0
            for n in reps:
                b = self.index.bit(n)
                if not b or not e[0] & b or n not in self.live or (
                        self._pairs and ((ref.id, n) in self.index.odd or (ref.id, n) in self.reports)):
                    ok = False
                    break
                bits |= b
            if ok and (e[1] != ref.length or e[2] != ref.checksum or e[0] & ~(bits | REF)
                       or len(set(reps)) != len(reps) or ref.id in self.gc_blocks):
                ok = False
            if ok and self.zones > 1 and len({self.zone_of.get(n) for n in reps}) < min(len(reps), self.zones):
                ok = False
        elif e is not None:
            e[0] |= REF
        if ok:
            r = self.report
            r._good_replicas += len(reps)
            if len(reps) >= self.config.min_replicas:
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
        if node_id not in self.live:
            return "dead"
        listed = self.index.listed(ref.id, node_id)
        if listed is None:
            try:  # written after the listing?
                st = await self.blocks.stat_block(node_id, ref.id)
                listed = (st["length"], st["checksum"])
            except NodeUnavailable as e:
                self.unreachable(node_id, str(e))
                return "dead"
            except DfsError as e:
                if e.errno == errno.ENOENT:
                    return "missing"
                return "corrupt"
        if listed != (ref.length, ref.checksum):
            return "corrupt"
        if (ref.id, node_id) in self.reports:
            return "reported"
        if self.opts.verify_data:
            sem = self._verify_limit.setdefault(node_id, trio.Semaphore(VERIFY_PER_NODE))
            async with sem:
                try:
                    ok = await self.blocks.verify_block(node_id, ref.id)
                except NodeUnavailable as e:
                    self.unreachable(node_id, str(e))
                    return "dead"
                except DfsError as e:
                    return "missing" if e.errno == errno.ENOENT else "corrupt"
            self.report.verified_replicas += 1
            self.report.verified_bytes += ref.length
            if not ok:
                return "corrupt"
        return "good"

    async def check_replicas(self, f: FileInfo, index: int, ref: BlockRef) -> None:
        """Each replica exists on a live node with the right checksum; count, nodes and zones."""
        if ref.id in self.gc_blocks:
            self.gc_conflicts.setdefault(self.gc_blocks[ref.id], set()).add(ref.id)
        for n in ref.replicas:
            if (ref.id, n) in self.reports:
                self.reports_seen.add((ref.id, n))
        uniq = list(dict.fromkeys(ref.replicas))
        states: dict[str, str] = {}

        async def one(n: str) -> None:
            states[n] = await self.replica_state(ref, n)
        async with trio.open_nursery() as nursery:
            for n in uniq:
                nursery.start_soon(one, n)
        e = self.index.blocks.get(ref.id)
        strays = [n for n in self.index.holders(e[0]) if n not in uniq] if e is not None else []
        bad = [n for n in uniq if states[n] != "good"]
        if bad or strays:
            # confirm against the map as it is now: a repair may have moved replicas meanwhile
            got = await self.zk.get_many([self.paths.block_group(f.ino, index // self.config.group_blocks)])
            cur = decode_group(got[0][0]).blocks.get(index) if got[0] is not None else None
            if cur is None or cur.id != ref.id or cur.replicas != ref.replicas:
                self.report.skipped_in_flux += 1
                return
        good = [n for n in uniq if states[n] == "good"]
        r = self.report
        r._good_replicas += len(good)
        if len(good) >= self.config.min_replicas:
            r.minimally_replicated_blocks += 1
        where = f"{f.path} block {index}"
        problems: list[Problem] = []
        corrupt = [n for n in uniq if states[n] in ("corrupt", "reported")]
        missing = [n for n in uniq if states[n] == "missing"]
        dead = [n for n in uniq if states[n] == "dead"]
        if corrupt:
            r.corrupt_replicas += len(corrupt)
            problems.append(self.problem("corrupt_replica", f.path, f"block {index}: replica fails its "
                                         f"checksum", ino=f.ino, block=ref.id, nodes=corrupt))
        if missing:
            r.missing_replicas += len(missing)
            problems.append(self.problem("missing_replica", f.path, f"block {index}: node does not have it",
                                         ino=f.ino, block=ref.id, nodes=missing))
        if dead:
            r.dead_replicas += len(dead)
            problems.append(self.problem("dead_replica", f.path, f"block {index}: node is not live",
                                         ino=f.ino, block=ref.id, nodes=dead))
        if not good:
            r.missing_blocks += 1
            r.missing_size += ref.length
            p = self.problem("missing_block", f.path, f"block {index} ({ref.length} B) has no good replica",
                             ino=f.ino, block=ref.id, nodes=list(ref.replicas))
            f.lost = True
            self.lost_files.setdefault(f.ino, f)
            self.lost_problems.setdefault(f.ino, []).extend([p, *problems])
            return
        target = self.config.replicas
        mis = len(uniq) != len(ref.replicas)
        if self.zones > 1 and len({self.zone_of.get(n) for n in good}) < min(len(good), self.zones):
            mis = True
        if len(good) < target:
            r.under_replicated_blocks += 1
            problems.append(self.problem("under_replicated", f.path, f"block {index}: {len(good)} of {target} "
                                         "good replicas", ino=f.ino, block=ref.id, nodes=good))
        elif len(good) > target:
            r.over_replicated_blocks += 1
            problems.append(self.problem("over_replicated", f.path, f"block {index}: {len(good)} replicas, "
                                         f"target {target}", ino=f.ino, block=ref.id, nodes=good))
        if mis:
            r.mis_replicated_blocks += 1
            problems.append(self.problem("mis_replicated", f.path, f"block {index}: replicas on "
                                         f"{ref.replicas}", ino=f.ino, block=ref.id, nodes=list(ref.replicas)))
        stray_old = []
        if strays and self.full:
            stray_old = await self._old_copies(ref.id, strays)
            if stray_old:
                r.orphan_blocks += 1
                r.orphan_size += ref.length * len(stray_old)
                problems.append(self.problem("orphan_block", where, "copy on a node the map does not list",
                                             ino=f.ino, block=ref.id, nodes=stray_old))
        if problems and self.opts.repair:
            await self.repair_block(f, index, ref, good, corrupt + missing, len(uniq) != len(ref.replicas),
                                    stray_old, problems)

    async def _old_copies(self, bid: str, node_ids: list[str]) -> list[str]:
        """Those of `node_ids` that still hold `bid` and have for longer than --orphan-age."""
        out = []
        limit = time.time() - self.opts.orphan_age
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

    async def repair_block(self, f: FileInfo, index: int, ref: BlockRef, good: list[str], bad: list[str],
                           duplicates: bool, strays: list[str], problems: list[Problem]) -> None:
        """Re-replicate, drop bad or surplus replicas, delete stray copies (all version-checked)."""
        target = self.config.replicas
        plan = []
        if duplicates:
            plan.append("remove duplicate node ids")
        if bad or len(good) < target or any(p.category == "dead_replica" for p in problems):
            plan.append(f"re-replicate (bad: {','.join(bad) or 'none'})")
        elif len(good) > target:
            plan.append(f"drop {len(good) - target} surplus replicas")
        if strays:
            plan.append(f"delete stray copies on {','.join(strays)}")
        if any(p.category == "mis_replicated" for p in problems) and not duplicates:
            plan.append("(zone spread is left to the repair leader)")
        text = "; ".join(plan)
        if self.opts.dry_run:
            for p in problems:
                p.repair = f"would {text}"
            return
        try:
            done = []
            if duplicates:
                ref = await self._dedupe_replicas(f.ino, index, ref) or ref
                done.append("removed duplicate node ids")
            if bad or len(good) < target or any(p.category == "dead_replica" for p in problems):
                new = await repair.rereplicate(self.ctx, f.ino, index, ref, bad=set(bad), reason="fsck")
                if new is not None:
                    done.append(f"replicas now {','.join(new.replicas)}")
                    for n in bad:
                        await self._delete_report(ref.id, n)
            elif len(good) > target:
                surplus = self._surplus(good, target)
                new = await repair.drop_replicas(self.ctx, f.ino, index, ref, surplus, "fsck: over-replicated")
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
            z = self.zone_of.get(n, "")
            if z not in zones_used and len(keep) < target:
                keep.append(n)
                zones_used.add(z)
        for n in good:
            if n not in keep and len(keep) < target:
                keep.append(n)
        return [n for n in good if n not in keep]

    async def _dedupe_replicas(self, ino: int, index: int, ref: BlockRef) -> BlockRef | None:
        path = self.paths.block_group(ino, index // self.config.group_blocks)
        data, st = await self.zk.get(path)
        grp = decode_group(data)
        cur = grp.blocks.get(index)
        if cur is None or cur.id != ref.id:
            return None
        cur.replicas = list(dict.fromkeys(cur.replicas))
        cur.gen += 1
        await self.zk.commit(Txn().set(path, grp.encode(), st.version))
        return cur

    async def _delete_strays(self, ino: int, index: int, bid: str, nodes: list[str]) -> list[str]:
        got = await self.zk.get_many([self.paths.block_group(ino, index // self.config.group_blocks)])
        cur = decode_group(got[0][0]).blocks.get(index) if got[0] else None
        gone = []
        for n in nodes:
            if cur is not None and cur.id == bid and n in cur.replicas:
                continue  # listed again meanwhile
            try:
                await self.blocks.delete_block(n, bid)
                gone.append(n)
            except DfsError as e:
                if e.errno == errno.ENOENT:
                    gone.append(n)
        if gone:
            await repair.audit(self.ctx, "orphan", block=bid, ino=ino, index=index, src=gone,
                               reason="fsck: copy not in the map")
        return gone

    async def _delete_report(self, bid: str, node_id: str) -> None:
        name = self.reports.get((bid, node_id))
        if name:
            try:
                await self.zk.delete(f"{self.paths.repair_reports}/{name}")
            except NoNodeError:
                pass

    # ================================================================== files whose data is lost

    async def lost_found(self) -> int:
        if self.lf_ino is None:
            try:
                self.lf_ino = (await self.meta.lookup(ROOT_INO, LOST_FOUND)).ino
            except DfsError as e:
                if e.errno != errno.ENOENT:
                    raise
                self.lf_ino = (await self.meta.mkdir(ROOT_INO, LOST_FOUND, 0o700, uid=0, gid=0)).ino
        return self.lf_ino

    async def repair_lost_files(self) -> None:
        """Files with a missing block: into /lost+found, or deleted with --lost-found delete."""
        if not self.opts.repair:
            return
        for f in self.lost_files.values():
            probs = self.lost_problems.get(f.ino, [])
            in_lf = f.path.startswith(f"/{LOST_FOUND.decode()}/")
            if in_lf and self.opts.lost_found == "move":
                for p in probs:
                    p.repair = "not repaired: data lost (already in /lost+found)"
                continue
            what = "delete the file" if self.opts.lost_found == "delete" else "move the file to /lost+found"
            if not f.parent:
                for p in probs:
                    p.repair = "not repaired: data lost (unreachable inode: see orphan_inode)"
                continue
            if self.opts.dry_run:
                for p in probs:
                    p.repair = f"would {what} (data lost)"
                continue
            try:
                if self.opts.lost_found == "delete":
                    await self.meta.unlink(f.parent, f.name)
                    done = "deleted the file"
                else:
                    lf = await self.lost_found()
                    new = f"{f.ino}-{os.fsdecode(f.name)}"[:255].encode(errors="surrogateescape")
                    await self.meta.rename(f.parent, f.name, lf, new)
                    done = f"moved to /lost+found/{os.fsdecode(new)}"
                for p in probs:
                    p.repair = f"data lost; {done}"  # done what can be done, but damage is left
            except DfsError as e:
                for p in probs:
                    p.repair = f"not repaired: {what} failed ({e})"

    # ================================================================== unreachable inodes

    async def scan_unreached(self) -> None:
        """Every inode is reachable from the root (nlink-0 inodes held open are fine)."""
        shards = await self._children(self.paths.inodes) or []
        candidates: list[int] = []
        for i in range(0, len(shards), 16):
            part = shards[i:i + 16]
            lists = await self.zk.children_many([f"{self.paths.inodes}/{s}" for s in part])
            for names in lists:
                for name in names or []:
                    if name.isdigit():
                        ino = int(name)
                        self.exists.add(ino)
                        if ino not in self.reached:
                            candidates.append(ino)
        if not candidates:
            return
        info: dict[int, tuple[InodeRecord, object]] = {}
        for i in range(0, len(candidates), CHUNK):
            part = candidates[i:i + CHUNK]
            for ino, item in zip(part, await self.zk.get_many([self.paths.inode(n) for n in part])):
                if item is not None:
                    info[ino] = (decode_inode(item[0]), item[1])
        # Directories that moved while we walked (their inode changed): walk them now, quietly.
        for ino, (rec, st) in sorted(info.items()):
            if rec.is_dir and st.mzxid > self.start_zxid and ino not in self.reached:
                self.report.skipped_in_flux += 1
                await self.walk((ino, f"<inode {ino}>", rec), quiet=True)
        orphans: dict[int, tuple[InodeRecord, object]] = {}
        files: list[FileInfo] = []
        for ino, (rec, st) in sorted(info.items()):
            if ino in self.reached:
                continue
            self.reached.add(ino)
            label = f"<inode {ino}>"
            if st.mzxid > self.start_zxid:
                self.report.skipped_in_flux += 1  # created or moved while we walked
            elif not rec.is_dir and rec.nlink == 0 and ino in self.open_inodes:
                label = f"<unlinked open inode {ino}>"
            else:
                orphans[ino] = (rec, st)
                label = f"<unreachable inode {ino}>"
            if rec.is_reg:
                f = FileInfo(label, ino, rec, st.version, st.mzxid)
                files.append(f)
        lists = await self.zk.children_many([self.paths.block_map(f.ino) for f in files]) if files else []
        for f, groups in zip(files, lists):
            f.groups = groups or []
        for i in range(0, len(files), CHUNK):
            await self.check_files(files[i:i + CHUNK])
        if orphans:
            await self.check_orphan_inodes(orphans)

    async def check_orphan_inodes(self, orphans: dict[int, tuple[InodeRecord, object]]) -> None:
        """Unreachable inodes: report each; repair the top ones (not inside another unreachable dir)."""
        covered: dict[int, int] = {}  # inode -> unreachable directory holding an entry for it
        for ino, (rec, _) in orphans.items():
            if not rec.is_dir:
                continue
            names = await self._children(self.paths.dir(ino)) or []
            base = self.paths.dir(ino)
            for i in range(0, len(names), CHUNK):
                for g in await self.zk.get_many([f"{base}/{n}" for n in names[i:i + CHUNK]]):
                    if g is not None:
                        covered[decode_dirent(g[0]).ino] = ino
        tops = [ino for ino in orphans if ino not in covered]
        # cycles: unreachable directories that only contain each other
        seen_top: set[int] = set()
        for ino in orphans:
            chain, cur = [], ino
            while cur in covered and cur not in chain:
                chain.append(cur)
                cur = covered[cur]
            if cur in chain and not seen_top & set(chain):
                head = min(chain[chain.index(cur):])
                seen_top.add(head)
                self.problem("dir_cycle", f"<unreachable inode {head}>",
                             f"directories {sorted(chain[chain.index(cur):])} contain each other", ino=head)
                tops.append(head)
        for ino, (rec, st) in sorted(orphans.items()):
            kind = "directory" if rec.is_dir else "file" if rec.is_reg else "inode"
            p = self.problem("orphan_inode", f"<unreachable inode {ino}>",
                             f"{kind}, nlink {rec.nlink}, reached by no entry"
                             + (f" (inside unreachable directory {covered[ino]})" if ino in covered else ""),
                             ino=ino)
            if ino not in tops:
                if self.opts.repair:
                    p.repair = f"{'would be ' if self.opts.dry_run else ''}repaired with its directory"
                    if not self.opts.dry_run:
                        p.repair = "repaired: with its directory"
                continue
            if not rec.is_dir and rec.nlink == 0:
                await self.act(p, "delete the unlinked inode (no mount holds it open)", self._release, ino)
            elif self.opts.lost_found == "delete":
                await self.act(p, "delete it", self._relink, ino, covered.get(ino), True)
            else:
                await self.act(p, "move it to /lost+found", self._relink, ino, covered.get(ino), False)

    async def _release(self, ino: int) -> str:
        await self.meta.release_orphan(ino)
        return "deleted the unlinked inode"

    async def _relink(self, ino: int, cycle_parent: int | None, delete: bool) -> str:
        """Give an unreachable inode an entry in /lost+found (one version-checked transaction)."""
        lf = await self.lost_found()
        name = str(ino).encode()
        got = await self.zk.read_many([("get", self.paths.inode(ino)), ("get", self.paths.inode(lf)),
                                       ("get", self.paths.dirent(lf, name))])
        if got[0] is None:
            return "gone meanwhile"
        if got[2] is not None:
            name = f"{ino}-{uuid.uuid4().hex[:6]}".encode()
        rec, st = decode_inode(got[0][0]), got[0][1]
        lrec, lst = decode_inode(got[1][0]), got[1][1]
        txn = Txn()
        txn.create(self.paths.dirent(lf, name), DirEntry(ino, stat.S_IFMT(rec.mode)).encode())
        if rec.is_dir:
            rec.parent = lf
            lrec.nlink += 1
            txn.set(self.paths.inode(lf), lrec.encode(), lst.version)
        else:
            rec.nlink = 1  # no entry named it: this one is the only one
            txn.check(self.paths.inode(lf), lst.version)
        txn.set(self.paths.inode(ino), rec.encode(), st.version)
        txn.set(self.paths.dir(lf), str(time.time_ns()).encode())
        if cycle_parent is not None:  # break the cycle: drop the entry inside it
            names = await self._children(self.paths.dir(cycle_parent)) or []
            base = self.paths.dir(cycle_parent)
            for n, g in zip(names, await self.zk.get_many([f"{base}/{n}" for n in names])):
                if g is not None and decode_dirent(g[0]).ino == ino:
                    txn.delete(f"{base}/{n}", g[1].version)
        await self.zk.commit(txn)
        where = f"/lost+found/{os.fsdecode(name)}"
        if not delete:
            return f"moved to {where}"
        await self._remove_tree(lf, name)
        return f"deleted (via {where})"

    async def _remove_tree(self, parent: int, name: bytes) -> None:
        node = await self.meta.lookup(parent, name)
        if not node.rec.is_dir:
            await self.meta.unlink(parent, name)
            return
        for child, ent, _ in await self.meta.readdir(node.ino):
            await self._remove_tree(node.ino, child)
        await self.meta.rmdir(parent, name)

    # ================================================================== leftovers

    async def scan_leftovers(self) -> None:
        """blocks/, dirs/, xattrs/, open/ children belong to existing inodes."""
        kinds = [("blocks", self.paths.blocks), ("dirs", self.paths.dirs),
                 ("xattrs", self.paths.xattrs), ("open", self.paths.open)]
        for kind, base in kinds:
            names = await self._children(base) or []
            cands = [int(n) for n in names if n.isdigit() and int(n) not in self.exists]
            for i in range(0, len(cands), CHUNK):
                part = cands[i:i + CHUNK]
                reads = [("get", self.paths.inode(n)) for n in part] + [("get", f"{base}/{n}") for n in part]
                got = await self.zk.read_many(reads)
                for k, ino in enumerate(part):
                    if got[k] is not None or got[len(part) + k] is None:
                        continue  # created after the scan, or gone
                    await self.check_leftover(kind, ino, got[len(part) + k][1])

    async def check_leftover(self, kind: str, ino: int, st) -> None:
        if kind == "blocks":
            # its blocks are referenced (not orphans) until gc collects the map
            groups = await self._children(self.paths.block_map(ino)) or []
            f = FileInfo(f"<block map of deleted inode {ino}>", ino, InodeRecord(mode=stat.S_IFREG, size=1 << 62),
                         0, 0, groups=groups)
            await self._mark_only(f)
            if ino in self.gc_inodes or self.in_flux(st):
                return
            p = self.problem("dangling_block_map", f"<inode {ino}>", "block map of an inode that does "
                             "not exist, not queued for gc", ino=ino)

            async def fix() -> str:
                # guard: the inode must still not exist (create+delete fails if it does)
                path = self.paths.inode(ino)
                await self.zk.commit(Txn().create(path).delete(path).create(
                    self.paths.gc_entry(f"inode-{ino}"), GcEntry(inode=ino, queued=time.time()).encode()))
                return "queued the map for gc"
            await self.act(p, "queue the map for gc", fix)
            return
        if self.in_flux(st):
            return
        if kind == "open":
            holders = await self._children(self.paths.open_dir(ino))
            if holders:
                return  # a live mount still holds it: it cleans up on release
            p = self.problem("stale_open", f"<inode {ino}>", "open/ entry of an inode that does not exist", ino=ino)

            async def fix_open() -> str:
                await self.zk.delete(self.paths.open_dir(ino))
                return "removed it"
            await self.act(p, "remove it", fix_open)
            return
        cat = "leftover_dir_listing" if kind == "dirs" else "leftover_xattrs"
        base = self.paths.dir(ino) if kind == "dirs" else self.paths.xattr_dir(ino)
        p = self.problem(cat, f"<inode {ino}>", f"{kind}/{ino} of an inode that does not exist", ino=ino)

        async def fix_rest() -> str:
            guard = self.paths.inode(ino)
            names = await self._children(base) or []
            txn = Txn().create(guard).delete(guard)
            for n in names:
                txn.delete(f"{base}/{n}")
            txn.delete(base)
            await self.zk.commit(txn)
            return f"removed {kind}/{ino} and its {len(names)} children"
        await self.act(p, f"remove {kind}/{ino}", fix_rest)

    async def _mark_only(self, f: FileInfo) -> None:
        """Mark the blocks of a map as referenced, without checking them."""
        for i in range(0, len(f.groups), GROUP_BATCH):
            part = f.groups[i:i + GROUP_BATCH]
            for item in await self.zk.get_many([f"{self.paths.block_map(f.ino)}/{g}" for g in part]):
                if item is not None:
                    for ref in decode_group(item[0]).blocks.values():
                        e = self.index.blocks.get(ref.id)
                        if e is not None:
                            e[0] |= REF

    # ================================================================== housekeeping

    async def check_gc_entries(self) -> None:
        """gc/ entries name only unreferenced blocks and are collected in time (GC_STALE_AFTER)."""
        # the collector normally takes seconds; an entry it left alone this long is stuck
        limit = time.time() - max(self.opts.orphan_age, GC_STALE_AFTER)
        for name, blocks in self.gc_conflicts.items():
            entry, version, _ = self.gc_entries[name]
            p = self.problem("gc_conflict", f"gc/{name}", f"queued for deletion but still in a block map: "
                             f"{len(blocks)} blocks", block=sorted(blocks)[0])

            async def fix(name=name, blocks=blocks) -> str:
                data, st = await self.zk.get(self.paths.gc_entry(name))
                entry = GcEntry.decode(data)
                for b in blocks:
                    entry.blocks.pop(b, None)
                txn = Txn()
                if entry.blocks or entry.inode:
                    txn.set(self.paths.gc_entry(name), entry.encode(), st.version)
                else:
                    txn.delete(self.paths.gc_entry(name), st.version)
                await self.zk.commit(txn)
                return "took the blocks in use out of the entry"
            await self.act(p, "take the blocks in use out of the entry", fix)
        for ino, name in self.gc_inodes.items():
            if ino in self.exists:
                got = await self.zk.get_many([self.paths.inode(ino), self.paths.gc_entry(name)])
                if got[0] is None or got[1] is None or self.in_flux(got[0][1], got[1][1]):
                    continue
                p = self.problem("gc_conflict", f"gc/{name}", f"whole-map gc entry for inode {ino}, "
                                 "which exists", ino=ino)
                version = got[1][1].version

                async def drop(name=name, version=version) -> str:
                    await self.zk.delete(self.paths.gc_entry(name), version)
                    return "removed the entry"
                await self.act(p, "remove the entry", drop)
        for name, (entry, version, mzxid) in self.gc_entries.items():
            if name in self.gc_conflicts or entry.queued > limit:
                continue
            if entry.inode and entry.inode in self.exists:
                continue
            age = time.time() - entry.queued
            p = self.problem("stale_gc_entry", f"gc/{name}", f"queued {age:.0f} s ago, "
                             f"{len(entry.blocks)} blocks" + (f", inode {entry.inode}" if entry.inode else ""))

            async def collect(name=name) -> str:
                n = await repair.collect_gc_entry(self.ctx, name)
                return f"collected ({n} replicas deleted)"
            await self.act(p, "collect it now", collect)

    async def check_repair_reports(self) -> None:
        """repair/corrupt reports are about replicas that some block map still lists."""
        for (bid, node), name in self.reports.items():
            if (bid, node) in self.reports_seen:
                continue
            got = await self.zk.get_many([f"{self.paths.repair_reports}/{name}"])
            if got[0] is None or self.in_flux(got[0][1]):
                continue
            p = self.problem("stale_repair_report", f"repair/corrupt/{name}",
                             "no block map lists this replica", block=bid, nodes=[node])

            async def drop(name=name) -> str:
                await self.zk.delete(f"{self.paths.repair_reports}/{name}")
                return "removed the report"
            await self.act(p, "remove the report", drop)

    async def check_orphan_blocks(self) -> None:
        """Blocks on nodes that no block map and no gc entry names, older than --orphan-age."""
        gc_now: set[str] = set()
        names = await self._children(self.paths.gc) or []
        for i in range(0, len(names), 64):
            part = names[i:i + 64]
            for item in await self.zk.get_many([self.paths.gc_entry(n) for n in part]):
                if item is not None:
                    gc_now.update(GcEntry.decode(item[0]).blocks)
        limit = time.time() - self.opts.orphan_age
        cands = [(bid, e) for bid, e in self.index.blocks.items()
                 if not e[0] & REF and bid not in gc_now and bid not in self.gc_blocks and e[3] <= limit]
        r = self.report
        for bid, e in cands:
            nodes = await self._old_copies(bid, self.index.holders(e[0]))
            if not nodes:
                continue
            r.orphan_blocks += 1
            r.orphan_size += e[1] * len(nodes)
            p = self.problem("orphan_block", "", f"{e[1]} B, referenced by no block map or gc entry",
                             block=bid, nodes=nodes)

            async def delete(bid=bid, nodes=nodes) -> str:
                gone = []
                for n in nodes:
                    try:
                        await self.blocks.delete_block(n, bid)
                        gone.append(n)
                    except DfsError as ex:
                        if ex.errno == errno.ENOENT:
                            gone.append(n)
                await repair.audit(self.ctx, "orphan", block=bid, src=gone, reason="fsck: unreferenced")
                return f"deleted from {','.join(gone)}"
            await self.act(p, "delete it from the nodes", delete)
            self.progress.tick()


# ====================================================================== command line

async def run_fsck(args: argparse.Namespace, out=sys.stdout) -> int:
    from tools.cli import resolve_zk

    opts = Options(path=args.path or "/", repair=args.repair, dry_run=args.dry_run,
                   verify_data=args.verify_data, lost_found=args.lost_found, orphan_age=args.orphan_age)
    if opts.orphan_age < 0:
        raise UsageError("--orphan-age must be >= 0")
    if not opts.path.startswith("/"):
        opts.path = "/" + opts.path
    zk = await connect(resolve_zk(args), timeout=args.zk_timeout, op_timeout=max(args.zk_timeout, 30.0))
    blocks = None
    try:
        paths = FsPaths(default_root(args.fs))
        try:
            config = await load_config(zk, paths)
        except DfsError as e:
            raise UsageError(e.message) from None
        nodedir = NodeDirectory(zk, paths)
        blocks = BlockClient(nodedir, reporter="fsck")
        report = Report()
        progress = Progress(report)
        fsck = Fsck(zk, paths, config, nodedir, blocks, opts, report, progress)
        report = await fsck.run()
    finally:
        if blocks is not None:
            await blocks.aclose()
        await zk.close()
    if args.json:
        report.write_json(out)
    else:
        report.write_text(out)
    if opts.repair and not opts.dry_run:
        return EXIT_OK if report.unrepaired == 0 else EXIT_DAMAGE
    return EXIT_OK if report.healthy else EXIT_DAMAGE


def main(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", False):
        # the ZooKeeper client's reconnect chatter would break "one clear line on stderr"
        logging.getLogger("dfs.zk").setLevel(logging.CRITICAL)
        logging.getLogger("dfs").setLevel(logging.ERROR)
    return trio.run(run_fsck, args)
