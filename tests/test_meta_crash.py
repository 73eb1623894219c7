"""A client killed (SIGKILL) in the middle of its operations leaves every
transaction either fully applied or not at all (GitHub issue 2).

A worker process (tests/helpers/meta_worker.py) changes the namespace at random
with several concurrent tasks; we kill it by PID after a random 0.5-2 s, a few
rounds in a row, and after each round an independent checker reads ZooKeeper
directly (plain kazoo, no `Meta`) and verifies the namespace invariants.
"""

import os
import random
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from dfs.config import FsConfig
from dfs.mkfs import mkfs
from dfs.names import unescape
from dfs.paths import ROOT_INO, FsPaths
from dfs.records import BlockGroup, DirEntry, GcEntry, InodeRecord
from dfs.zk import NoNodeError

WORKER = Path(__file__).parent / "helpers" / "meta_worker.py"
ROUNDS = 6


class NamespaceChecker:
    """Reads one filesystem's znodes and lists every broken invariant (empty: consistent)."""

    def __init__(self, client: KazooClient, paths: FsPaths, committed_blocks: set[str] = frozenset()):
        self.zk = client
        self.paths = paths
        self.committed_blocks = committed_blocks
        self.problems: list[str] = []

    def children(self, path: str) -> list[str]:
        try:
            return self.zk.get_children(path)
        except NoNodeError:
            return []

    def load(self) -> None:
        p = self.paths
        self.inodes: dict[int, InodeRecord] = {}
        for shard in self.children(p.inodes):
            for name in self.children(f"{p.inodes}/{shard}"):
                ino = int(name)
                if p.inode_shard(ino) != f"{p.inodes}/{shard}":
                    self.problems.append(f"inode {ino} in the wrong shard {shard}")
                self.inodes[ino] = InodeRecord.decode(self.zk.get(p.inode(ino))[0])
        self.dirs: dict[int, dict[bytes, DirEntry]] = {}
        for d in self.children(p.dirs):
            ino = int(d)
            self.dirs[ino] = {unescape(c): DirEntry.decode(self.zk.get(f"{p.dir(ino)}/{c}")[0])
                              for c in self.children(p.dir(ino))}
        self.block_maps: dict[int, dict[int, BlockGroup]] = {}
        for b in self.children(p.blocks):
            ino = int(b)
            self.block_maps[ino] = {int(g): BlockGroup.decode(self.zk.get(p.block_group(ino, int(g)))[0])
                                    for g in self.children(p.block_map(ino))}
        self.gc_blocks: set[str] = set()
        self.gc_inodes: set[int] = set()
        for g in self.children(p.gc):
            entry = GcEntry.decode(self.zk.get(p.gc_entry(g))[0])
            self.gc_blocks |= set(entry.blocks)
            if entry.inode:
                self.gc_inodes.add(entry.inode)
        self.open = {int(o) for o in self.children(p.open)}
        self.xattr_dirs = {int(x) for x in self.children(p.xattrs)}

    def check(self) -> list[str]:
        self.load()
        self.check_dirents_point_to_inodes()
        self.check_link_counts()
        self.check_directories()
        self.check_reachable()
        self.check_block_maps()
        self.check_gc()
        self.check_xattrs()
        return self.problems

    def check_dirents_point_to_inodes(self) -> None:
        for parent, entries in self.dirs.items():
            for name, ent in entries.items():
                rec = self.inodes.get(ent.ino)
                if rec is None:
                    self.problems.append(f"dirent {parent}/{name!r} -> missing inode {ent.ino}")
                elif stat.S_IFMT(rec.mode) != ent.mode:
                    self.problems.append(f"dirent {parent}/{name!r} type {ent.mode:o} != inode {ent.ino}")

    def names_of(self) -> Counter:
        return Counter(ent.ino for entries in self.dirs.values() for ent in entries.values())

    def check_link_counts(self) -> None:
        named = self.names_of()
        for ino, rec in self.inodes.items():
            if rec.is_dir:
                continue
            if rec.nlink == 0 and named[ino] == 0 and ino in self.open:
                continue  # unlinked while open: held by open/<ino>
            if rec.nlink != named[ino]:
                self.problems.append(f"inode {ino}: nlink {rec.nlink} but {named[ino]} dirents")

    def check_directories(self) -> None:
        containing: dict[int, list[int]] = {}
        for parent, entries in self.dirs.items():
            for ent in entries.values():
                containing.setdefault(ent.ino, []).append(parent)
        for ino, rec in self.inodes.items():
            if rec.is_dir != (ino in self.dirs):
                self.problems.append(f"inode {ino}: is_dir {rec.is_dir} but dirs/{ino} exists: {ino in self.dirs}")
            if not rec.is_dir:
                continue
            subdirs = sum(1 for e in self.dirs.get(ino, {}).values() if stat.S_ISDIR(e.mode))
            if rec.nlink != 2 + subdirs:
                self.problems.append(f"dir {ino}: nlink {rec.nlink}, {subdirs} subdirectories")
            if ino == ROOT_INO:
                continue
            parents = containing.get(ino, [])
            if len(parents) != 1:
                self.problems.append(f"dir {ino} named by {len(parents)} dirents")
            elif rec.parent != parents[0]:
                self.problems.append(f"dir {ino}: parent field {rec.parent}, named in {parents[0]}")
        for d in self.dirs:
            if d not in self.inodes:
                self.problems.append(f"dirs/{d} without an inode")

    def check_reachable(self) -> None:
        seen = {ROOT_INO}
        todo = [ROOT_INO]
        while todo:
            d = todo.pop()
            for ent in self.dirs.get(d, {}).values():
                if ent.ino not in seen:
                    seen.add(ent.ino)
                    if stat.S_ISDIR(ent.mode):
                        todo.append(ent.ino)
        for ino, rec in self.inodes.items():
            if ino not in seen and not (rec.nlink == 0 and ino in self.open):
                self.problems.append(f"inode {ino} ({'dir' if rec.is_dir else 'file'}) unreachable from root")

    def check_block_maps(self) -> None:
        for ino in self.block_maps:
            rec = self.inodes.get(ino)
            if rec is None and ino in self.gc_inodes:
                continue  # a whole map handed to gc
            if rec is None or not rec.is_reg:
                self.problems.append(f"blocks/{ino} but inode {ino} is {'missing' if rec is None else 'not a file'}")

    def live_blocks(self) -> dict[str, int]:
        out = {}
        for ino, groups in self.block_maps.items():
            if ino in self.gc_inodes and ino not in self.inodes:
                continue
            for g in groups.values():
                for ref in g.blocks.values():
                    out[ref.id] = ino
        return out

    def check_gc(self) -> None:
        live = self.live_blocks()
        for block_id in live.keys() & self.gc_blocks:
            self.problems.append(f"block {block_id} of inode {live[block_id]} is both live and in gc/")
        gone = {b for ino in self.gc_inodes for g in self.block_maps.get(ino, {}).values()
                for b in (r.id for r in g.blocks.values())}
        for block_id in self.committed_blocks - live.keys() - self.gc_blocks - gone:
            self.problems.append(f"block {block_id} dropped without a gc/ entry")

    def check_xattrs(self) -> None:
        for ino in self.xattr_dirs - self.inodes.keys():
            self.problems.append(f"xattrs/{ino} of a missing inode")


def run_round(hosts: str, root: str, seed: int, log: Path, rng: random.Random) -> str:
    """Start the worker, SIGKILL it after 0.5-2 s of work; returns its stderr."""
    proc = subprocess.Popen([sys.executable, str(WORKER), hosts, root, str(seed), str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready = proc.stdout.readline()
        assert ready == b"ready\n", (ready, proc.stderr.read().decode())
        time.sleep(rng.uniform(0.5, 2.0))
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        err = proc.stderr.read().decode()
        assert alive, f"worker died on its own (exit {proc.returncode}):\n{err}"
        return err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.slow
async def test_sigkill_leaves_transactions_whole(zk, zk_hosts, fs_paths, tmp_path):
    await mkfs(zk, fs_paths, FsConfig(block_size=1 << 20, group_blocks=4))
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=10)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    log = tmp_path / "committed-blocks"
    try:
        for r in range(ROUNDS):
            run_round(zk_hosts, fs_paths.root, seed + r, log, rng)
            committed = set(log.read_text().split()) if log.exists() else set()
            checker = NamespaceChecker(client, fs_paths, committed)
            problems = checker.check()
            assert not problems, f"round {r} (seed {seed + r}):\n" + "\n".join(problems[:40])
        # the worker really did something
        assert len(checker.inodes) > 3 and committed, (len(checker.inodes), len(committed))
    finally:
        client.stop()
        client.close()


def test_checker_finds_damage(zk_hosts, fs_root):
    """The checker itself is not blind: a few hand-made inconsistencies are reported."""
    import trio

    from dfs.meta import Meta
    from dfs.zk import connect

    paths = FsPaths(fs_root)

    async def build() -> tuple[int, int, int]:
        z = await connect(zk_hosts)
        try:
            cfg = FsConfig(group_blocks=4)
            await mkfs(z, paths, cfg)
            m = Meta(z, paths, cfg)
            d = await m.mkdir(ROOT_INO, b"d", 0o755, uid=0, gid=0)
            f = await m.create(d.ino, b"f", 0o644, uid=0, gid=0)
            g = await m.create(ROOT_INO, b"g", 0o644, uid=0, gid=0)
            return d.ino, f.ino, g.ino
        finally:
            await z.close()

    d, f, g = trio.run(build)
    client = KazooClient(hosts=zk_hosts)
    client.start(timeout=10)
    try:
        assert NamespaceChecker(client, paths).check() == []
        # an nlink off by one, a dirent without its inode, a directory's parent wrong
        rec = InodeRecord.decode(client.get(paths.inode(f))[0])
        rec.nlink = 2
        client.set(paths.inode(f), rec.encode())
        client.delete(paths.inode(g))
        drec = InodeRecord.decode(client.get(paths.inode(d))[0])
        drec.parent = 12345
        client.set(paths.inode(d), drec.encode())
        problems = NamespaceChecker(client, paths, {"0" * 32}).check()
        text = "\n".join(problems)
        assert f"inode {f}: nlink 2 but 1 dirents" in text
        assert f"missing inode {g}" in text
        assert f"dir {d}: parent field 12345" in text
        assert "dropped without a gc/ entry" in text
    finally:
        client.stop()
        client.close()
