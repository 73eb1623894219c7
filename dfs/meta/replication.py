"""`dfs setrep`: a file's own replica count, and the count a directory passes on.

The count is InodeRecord.replicas (0: the filesystem's `replicas`, left out of
the record, so a file without a setting of its own costs no byte). A file or
directory created in a directory copies the directory's count in the same
transaction that creates it (dfs.meta.namespace.mknod), so every file carries
its own target: the writers place that many replicas, the repair leader reads
it with the file's block map and adds or drops copies to match, fsck checks it.

`set_replicas` changes one inode, and with `recursive` everything below it
too: the directory first (what is created in it from then on inherits the new
count), then each level of the tree, in version-checked transactions of up to
BATCH inodes (a conflict re-reads the batch). Each commit is whole and the run
is idempotent: an interrupted one leaves every inode at its old or its new
count, each consistent with its blocks once the leader caught up, and running
it again finishes the job. At the end it sets `repair/rescan`, so the repair
leader starts a pass now rather than at its next periodic scan.
"""

import errno
import stat
import time
from dataclasses import dataclass

from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.meta import Meta
from dfs.records import InodeRecord
from dfs.zk import BadVersionError, NodeExistsError, NoNodeError, Txn

MAX_REPLICAS = 10  # a hard limit whatever the cluster's size
BATCH = 64  # inodes per transaction of a recursive run
ATTEMPTS = 20  # conflicts on one batch before giving up (run it again)


def stored(config: FsConfig, n: int) -> int:
    """What InodeRecord.replicas holds for a count of `n` (the filesystem's: nothing)."""
    return 0 if n == config.replicas else n


@dataclass
class Changed:
    files: int = 0
    dirs: int = 0
    unchanged: int = 0


async def _set_batch(meta: Meta, inos: list[int], own: int, out: Changed) -> None:
    """Give these inodes `own`: their records as stored, only that field changed (times and
    all else as they are), version-checked; a conflict reads them again (gone ones drop out)."""
    paths = meta.paths
    for _ in range(ATTEMPTS):
        got = await meta.zk.get_many([paths.inode(i) for i in inos])
        txn, todo, same = Txn(), [], 0
        for i, g in zip(inos, got):
            if g is None:
                continue
            rec = InodeRecord.decode(g[0])
            if rec.replicas == own:
                same += 1
                continue
            rec.replicas = own
            txn.set(paths.inode(i), rec.encode(), g[1].version)
            todo.append(rec.is_dir)
        if todo:
            try:
                await meta.zk.commit(txn)
            except (BadVersionError, NoNodeError):
                continue
        out.unchanged += same
        out.dirs += sum(todo)
        out.files += len(todo) - sum(todo)
        return
    raise DfsError(errno.EAGAIN, "inodes kept changing while their replica count was set; run it again")


async def set_replicas(meta: Meta, ino: int, n: int, *, recursive: bool = False) -> Changed:
    """Set inode `ino`'s replica count to `n` (and, recursively, of everything below it).

    Only regular files and directories have one (others have no blocks). `n`
    must already be checked against the cluster (tools/setrep.py).
    """
    if not 1 <= n <= MAX_REPLICAS:
        raise DfsError(errno.EINVAL, f"replicas must be 1..{MAX_REPLICAS}")
    own = stored(meta.config, n)
    out = Changed()
    top = await meta.inodes.getattr(ino)
    if not (top.rec.is_dir or top.rec.is_reg):
        raise DfsError(errno.EINVAL, "only files and directories have a replica count")
    await _set_batch(meta, [ino], own, out)
    level = [ino] if recursive and top.rec.is_dir else []
    seen: set[int] = {ino}
    while level:
        below: list[int] = []
        for d in level:
            try:
                entries = await meta.readdir(d)
            except DfsError as e:
                if e.errno == errno.ENOENT:
                    continue  # removed meanwhile
                raise
            inos = []
            for _name, ent, _node in entries:
                kind = stat.S_IFMT(ent.mode)
                if ent.ino in seen or kind not in (stat.S_IFDIR, stat.S_IFREG):
                    continue
                seen.add(ent.ino)  # (a hard-linked file once)
                inos.append(ent.ino)
                if kind == stat.S_IFDIR:
                    below.append(ent.ino)
            for i in range(0, len(inos), BATCH):
                await _set_batch(meta, inos[i:i + BATCH], own, out)
        level = below
    await ask_for_pass(meta)
    return out


async def ask_for_pass(meta: Meta) -> None:
    """Tell the repair leader to scan now (it watches repair/rescan's version)."""
    stamp = str(time.time()).encode()
    try:
        await meta.zk.set(meta.paths.repair_rescan, stamp)
    except NoNodeError:
        try:
            await meta.zk.create(meta.paths.repair_rescan, stamp)
        except NodeExistsError:
            await meta.zk.set(meta.paths.repair_rescan, stamp)
