"""fsck's whole-namespace inode checks: unreachable inodes, and files whose data is lost.

Both run only when PATH is `/`. A directory that moved while the walk ran
(its inode changed after start_zxid) is walked again, quietly, before
anything is called unreachable. Repairs put things into /lost+found (or
delete them with --lost-found delete), through dfs.meta (Meta for what a
mount could do, dfs.meta.repairs for the rest).
"""

import errno
import os

from dfs.errors import DfsError
from dfs.meta import repairs
from dfs.paths import ROOT_INO
from dfs.records import InodeRecord
from dfs.zk import ZnodeStat
from tools.fsck.blocks import BlockChecks
from tools.fsck.report import Problem
from tools.fsck.state import CHUNK, FileInfo, FsckState, decode_dirent, decode_inode
from tools.fsck.walk import Walk

LOST_FOUND = b"lost+found"
SHARD_BATCH = 16  # inode shards listed in one multi-read


class LostFound:
    """/lost+found (made when first needed) and the files whose data is lost."""

    def __init__(self, s: FsckState):
        self.s = s
        self._ino: int | None = None

    async def ino(self) -> int:
        if self._ino is None:
            meta = self.s.meta
            try:
                self._ino = (await meta.lookup(ROOT_INO, LOST_FOUND)).ino
            except DfsError as e:
                if e.errno != errno.ENOENT:
                    raise
                self._ino = (await meta.mkdir(ROOT_INO, LOST_FOUND, 0o700, uid=0, gid=0)).ino
        return self._ino

    async def repair_lost_files(self) -> None:
        """Files with a missing block: into /lost+found, or deleted with --lost-found delete."""
        s = self.s
        if not s.opts.repair:
            return
        for f in s.lost_files.values():
            probs = s.lost_problems.get(f.ino, [])
            in_lf = f.path.startswith(f"/{LOST_FOUND.decode()}/")
            if in_lf and s.opts.lost_found == "move":
                for p in probs:
                    p.repair = "not repaired: data lost (already in /lost+found)"
                continue
            what = "delete the file" if s.opts.lost_found == "delete" else "move the file to /lost+found"
            if not f.parent:
                for p in probs:
                    p.repair = "not repaired: data lost (unreachable inode: see orphan_inode)"
                continue
            if s.opts.dry_run:
                for p in probs:
                    p.repair = f"would {what} (data lost)"
                continue
            try:
                if s.opts.lost_found == "delete":
                    await s.meta.unlink(f.parent, f.name)
                    done = "deleted the file"
                else:
                    lf = await self.ino()
                    new = f"{f.ino}-{os.fsdecode(f.name)}"[:255].encode(errors="surrogateescape")
                    await s.meta.namespace.rename(f.parent, f.name, lf, new)
                    done = f"moved to /lost+found/{os.fsdecode(new)}"
                for p in probs:
                    p.repair = f"data lost; {done}"  # done what can be done, but damage is left
            except DfsError as e:
                for p in probs:
                    p.repair = f"not repaired: {what} failed ({e})"

    async def remove_tree(self, parent: int, name: bytes) -> None:
        meta = self.s.meta
        node = await meta.lookup(parent, name)
        if not node.rec.is_dir:
            await meta.unlink(parent, name)
            return
        for child, _ent, _ in await meta.readdir(node.ino):
            await self.remove_tree(node.ino, child)
        await meta.rmdir(parent, name)


class UnreachableInodes:
    def __init__(self, s: FsckState, walk: Walk, blocks: BlockChecks, lost: LostFound):
        self.s = s
        self.walk = walk
        self.blocks = blocks
        self.lost = lost

    async def scan(self) -> None:
        """Every inode is reachable from the root (nlink-0 inodes held open are fine)."""
        s = self.s
        shards = await s.children(s.paths.inodes) or []
        candidates: list[int] = []
        for i in range(0, len(shards), SHARD_BATCH):
            lists = await s.zk.children_many([s.paths.inode_shard_named(n) for n in shards[i:i + SHARD_BATCH]])
            for names in lists:
                for name in names or []:
                    if name.isdigit():
                        ino = int(name)
                        s.exists.add(ino)
                        if ino not in s.reached:
                            candidates.append(ino)
        if not candidates:
            return
        info: dict[int, tuple[InodeRecord, ZnodeStat]] = {}
        for i in range(0, len(candidates), CHUNK):
            part = candidates[i:i + CHUNK]
            for ino, item in zip(part, await s.zk.get_many([s.paths.inode(n) for n in part])):
                if item is not None:
                    info[ino] = (decode_inode(item[0]), item[1])
        # Directories that moved while we walked (their inode changed): walk them now, quietly.
        for ino, (rec, st) in sorted(info.items()):
            if rec.is_dir and st.mzxid > s.start_zxid and ino not in s.reached:
                s.report.skipped_in_flux += 1
                await self.walk.walk((ino, f"<inode {ino}>", rec), quiet=True)
        orphans: dict[int, tuple[InodeRecord, ZnodeStat]] = {}
        files: list[FileInfo] = []
        for ino, (rec, st) in sorted(info.items()):
            if ino in s.reached:
                continue
            s.reached.add(ino)
            label = f"<inode {ino}>"
            if st.mzxid > s.start_zxid:
                s.report.skipped_in_flux += 1  # created or moved while we walked
            elif not rec.is_dir and rec.nlink == 0 and ino in s.open_inodes:
                label = f"<unlinked open inode {ino}>"
            elif not rec.is_dir and rec.nlink == 0 and ino in s.trash_inodes:
                label = f"<trash inode {ino}>"
            else:
                orphans[ino] = (rec, st)
                label = f"<unreachable inode {ino}>"
            if rec.is_reg:
                files.append(FileInfo(label, ino, rec))
        lists = await s.zk.children_many([s.paths.block_map(f.ino) for f in files]) if files else []
        for f, groups in zip(files, lists):
            f.groups = groups or []
        for i in range(0, len(files), CHUNK):
            await self.blocks.check_files(files[i:i + CHUNK])
        if orphans:
            await self.check_orphan_inodes(orphans)

    async def check_orphan_inodes(self, orphans: dict[int, tuple[InodeRecord, ZnodeStat]]) -> None:
        """Unreachable inodes: report each; repair the top ones (not inside another unreachable dir)."""
        s = self.s
        covered: dict[int, int] = {}  # inode -> unreachable directory holding an entry for it
        for ino, (rec, _) in orphans.items():
            if not rec.is_dir:
                continue
            names = await s.children(s.paths.dir(ino)) or []
            for i in range(0, len(names), CHUNK):
                for g in await s.zk.get_many([s.paths.dirent_named(ino, n) for n in names[i:i + CHUNK]]):
                    if g is not None:
                        covered[decode_dirent(g[0]).ino] = ino
        tops = [ino for ino in orphans if ino not in covered]
        # cycles: unreachable directories that only contain each other
        seen_top: set[int] = set()
        cycles: dict[int, Problem] = {}  # head -> its dir_cycle problem, repaired with the head
        for ino in orphans:
            chain, cur = [], ino
            while cur in covered and cur not in chain:
                chain.append(cur)
                cur = covered[cur]
            if cur in chain and not seen_top & set(chain):
                head = min(chain[chain.index(cur):])
                seen_top.add(head)
                cycles[head] = s.problem("dir_cycle", f"<unreachable inode {head}>",
                                         f"directories {sorted(chain[chain.index(cur):])} contain each other",
                                         ino=head)
                tops.append(head)
        for ino, (rec, st) in sorted(orphans.items()):
            kind = "directory" if rec.is_dir else "file" if rec.is_reg else "inode"
            p = s.problem("orphan_inode", f"<unreachable inode {ino}>",
                          f"{kind}, nlink {rec.nlink}, reached by no entry"
                          + (f" (inside unreachable directory {covered[ino]})" if ino in covered else ""),
                          ino=ino)
            if ino not in tops:
                if s.opts.repair:
                    p.repair = ("would be repaired with its directory" if s.opts.dry_run
                                else "repaired: with its directory")
                continue
            if not rec.is_dir and rec.nlink == 0:
                await s.act(p, "delete the unlinked inode (no mount holds it open)", self._release, ino)
            elif s.opts.lost_found == "delete":
                await s.act(p, "delete it", self._relink, ino, covered.get(ino), True)
            else:
                await s.act(p, "move it to /lost+found", self._relink, ino, covered.get(ino), False)
            if ino in cycles:
                cycles[ino].repair = p.repair

    async def _release(self, ino: int) -> str:
        await self.s.meta.namespace.release_orphan(ino)
        return "deleted the unlinked inode"

    async def _relink(self, ino: int, cycle_parent: int | None, delete: bool) -> str:
        """Give an unreachable inode an entry in /lost+found; then delete it if asked to."""
        lf = await self.lost.ino()
        name = await repairs.link_orphan(self.s.zk, self.s.paths, ino, lf, cycle_parent)
        if name is None:
            return "gone meanwhile"
        where = f"/lost+found/{os.fsdecode(name)}"
        if not delete:
            return f"moved to {where}"
        await self.lost.remove_tree(lf, name)
        return f"deleted (via {where})"
