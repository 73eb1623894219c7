"""fsck's namespace checks: entries, link counts, parents (one `check_*` per invariant).

The walk (tools/fsck/walk.py) feeds them what it sees; the suspects they keep
(hard links, directories reached twice) are few, and each is read again
before it is reported. Fixes are dfs.meta.repairs functions.
"""

import stat

from dfs.meta import repairs
from dfs.names import unescape
from dfs.paths import ROOT_INO
from dfs.records import DirEntry, InodeRecord
from dfs.zk import ZnodeStat
from dfs.zk.reads import Reads
from tools.fsck.state import CHUNK, Bitmap, DirWalk, FsckState, decode_dirent, decode_inode, join


class NamespaceChecks:
    def __init__(self, s: FsckState):
        self.s = s
        self.dirs_seen = Bitmap()
        self.nlink_suspects: dict[int, list] = {}     # ino -> [nlink, entries seen, path]
        self.dir_first: dict[int, tuple[int, str, str]] = {}  # dir -> first (parent, name, path)
        self.dir_suspects: dict[int, list] = {}       # dir -> [(parent, name, path), ...]

    # ------------------------------------------------------------------ what the walk saw

    def saw_dir(self, d: DirWalk, name: str, ino: int, rec: InodeRecord, path: str) -> None:
        """Entry `name` of `d` is directory `ino`, reached for the first time."""
        self.dirs_seen.add(ino)
        self.dir_first[ino] = (d.ino, name, path)
        if rec.parent != d.ino and not d.quiet:
            self.dir_suspects[ino] = [(d.ino, name, path)]

    def saw_file(self, ino: int, rec: InodeRecord, path: str) -> None:
        if rec.nlink != 1:
            self.nlink_suspects[ino] = [rec.nlink, 1, path]

    def saw_again(self, d: DirWalk, name: str, ent: DirEntry) -> None:
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

    # ------------------------------------------------------------------ checks during the walk

    async def check_root(self, rec: InodeRecord, st: ZnodeStat) -> None:
        """The root is a directory whose parent is itself or unset."""
        s = self.s
        if rec.parent not in (0, ROOT_INO) and not s.in_flux(st):
            p = s.problem("wrong_parent", "/", f"root's parent is {rec.parent}", ino=ROOT_INO)
            await s.act(p, "set the root's parent to 0", repairs.set_inode_field, s.zk, s.paths, ROOT_INO,
                        "parent", 0)

    async def check_dir_listing(self, d: DirWalk) -> None:
        """Every directory inode has its dirs/<ino> znode."""
        s = self.s
        reads = Reads()
        inode, listing = reads.get(s.paths.inode(d.ino)), reads.get(s.paths.dir(d.ino))
        got = await reads.run(s.zk)
        if got[inode] is None or got[listing] is not None or s.in_flux(got[inode][1]):
            return
        p = s.problem("missing_dir_listing", d.path, "directory has no dirs/ znode", ino=d.ino)
        await s.act(p, "create an empty listing", repairs.create_dir_listing, s.zk, s.paths, d.ino,
                    got[inode][1].version)

    async def check_dangling_dirent(self, d: DirWalk, name: str, ent: DirEntry, path: str) -> None:
        """Every entry names an existing inode."""
        s = self.s
        reads = Reads()
        entry, inode = reads.get(s.paths.dirent_named(d.ino, name)), reads.get(s.paths.inode(ent.ino))
        got = await reads.run(s.zk)
        if got[entry] is None or got[inode] is not None or s.in_flux(got[entry][1]):
            return
        if decode_dirent(got[entry][0]).ino != ent.ino:
            return
        p = s.problem("dangling_dirent", path, f"entry names inode {ent.ino}, which does not exist",
                      ino=ent.ino)
        version = got[entry][1].version

        async def fix() -> str:
            await repairs.remove_entry(s.zk, s.paths, d.ino, name, version)
            if stat.S_ISDIR(ent.mode):
                await repairs.fix_dir_nlink(s.zk, s.paths, d.ino)
            return "removed the entry"
        await s.act(p, "remove the entry", fix)

    async def check_dirent_type(self, d: DirWalk, name: str, ent: DirEntry, rec: InodeRecord,
                                path: str) -> None:
        """An entry's file type matches its inode's."""
        s = self.s
        reads = Reads()
        entry, inode = reads.get(s.paths.dirent_named(d.ino, name)), reads.get(s.paths.inode(ent.ino))
        got = await reads.run(s.zk)
        if got[entry] is None or got[inode] is None or s.in_flux(got[entry][1], got[inode][1]):
            return
        p = s.problem("dirent_type", path, f"entry says type {stat.S_IFMT(ent.mode):o}, "
                      f"inode is {stat.S_IFMT(rec.mode):o}", ino=ent.ino)
        await s.act(p, "rewrite the entry's type", repairs.set_entry_type, s.zk, s.paths, d.ino, name,
                    ent.ino, rec.mode, got[entry][1].version)

    async def check_dir_nlink(self, d: DirWalk) -> None:
        """A directory's nlink is 2 + its subdirectories."""
        s = self.s
        if d.nlink == 2 + d.subdirs or d.quiet:
            return
        fresh = await repairs.count_subdirs(s.zk, s.paths, d.ino)
        if fresh is None:
            return
        want = 2 + fresh.count
        if fresh.rec.nlink == want or s.in_flux(fresh.inode_stat, fresh.listing_stat):
            return
        p = s.problem("wrong_dir_nlink", d.path, f"nlink {fresh.rec.nlink}, expected {want}", ino=d.ino)
        await s.act(p, f"set nlink to {want}", repairs.fix_dir_nlink, s.zk, s.paths, d.ino)

    # ------------------------------------------------------------------ checks after the walk

    async def check_file_nlinks(self) -> None:
        """A file's nlink is the number of entries naming it."""
        s = self.s
        if not s.full:
            return  # links from outside the subtree are unknown
        items = [(i, sus) for i, sus in self.nlink_suspects.items() if sus[0] != sus[1]]
        for i in range(0, len(items), CHUNK):
            part = items[i:i + CHUNK]
            got = await s.zk.get_many([s.paths.inode(ino) for ino, _ in part])
            for (ino, (_, count, path)), item in zip(part, got):
                if item is None or s.in_flux(item[1]):
                    continue
                rec = decode_inode(item[0])
                if rec.nlink == count:
                    continue
                p = s.problem("wrong_nlink", path, f"nlink {rec.nlink}, {count} entries name it", ino=ino)
                await s.act(p, f"set nlink to {count}", repairs.set_inode_field, s.zk, s.paths, ino,
                            "nlink", count, item[1].version)

    async def check_dir_links(self) -> None:
        """A directory is named by exactly one entry, in the directory its `parent` names."""
        s = self.s
        for ino, links in self.dir_suspects.items():
            links = [link for link in links if link is not None]
            reads = Reads()
            inode = reads.get(s.paths.inode(ino))
            entries = [reads.get(s.paths.dirent_named(par, name)) for par, name, _ in links]
            got = await reads.run(s.zk)
            if got[inode] is None or s.in_flux(got[inode][1], *[got[h][1] for h in entries if got[h]]):
                continue
            rec = decode_inode(got[inode][0])
            links = [link for link, h in zip(links, entries)
                     if got[h] is not None and decode_dirent(got[h][0]).ino == ino]
            if not links:
                continue
            true = [link for link in links if link[0] == rec.parent]
            keep = true[0] if true else links[0]
            for par, name, path in links:
                if (par, name) == keep[:2]:
                    continue
                p = s.problem("dir_hardlink", path, f"directory {ino} is also {keep[2]}", ino=ino)

                async def drop(par: int = par, name: str = name) -> str:
                    await repairs.remove_entry(s.zk, s.paths, par, name)
                    await repairs.fix_dir_nlink(s.zk, s.paths, par)
                    return "removed the extra entry"
                await s.act(p, "remove the extra entry", drop)
            if keep[0] != rec.parent:
                p = s.problem("wrong_parent", keep[2], f"parent field {rec.parent}, held by {keep[0]}", ino=ino)
                await s.act(p, f"set parent to {keep[0]}", repairs.set_inode_field, s.zk, s.paths,
                            ino, "parent", keep[0])
