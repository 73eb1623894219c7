"""The namespace in ZooKeeper: POSIX semantics, names, races between two clients."""

import errno
import stat

import pytest
import trio

from dfs.config import FsConfig
from dfs.errors import DfsError
from dfs.meta import RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE, Meta
from dfs.mkfs import mkfs
from dfs.paths import ROOT_INO
from dfs.records import BlockRef, GcEntry
from dfs.zk import connect

UID, GID = 1000, 1000


@pytest.fixture
async def meta(zk, fs_paths):
    config = FsConfig(block_size=1 << 20, group_blocks=4)
    await mkfs(zk, fs_paths, config)
    return Meta(zk, fs_paths, config)


@pytest.fixture
async def meta2(zk_hosts, fs_paths, meta):
    """A second client with its own ZooKeeper session."""
    zk2 = await connect(zk_hosts)
    try:
        yield Meta(zk2, fs_paths, meta.config)
    finally:
        await zk2.close()


def errno_of(excinfo) -> int:
    return excinfo.value.errno


async def mkfile(m: Meta, parent: int, name: bytes, mode: int = 0o644):
    return await m.create(parent, name, mode, uid=UID, gid=GID)


async def mkdir(m: Meta, parent: int, name: bytes, mode: int = 0o755):
    return await m.mkdir(parent, name, mode, uid=UID, gid=GID)


async def names(m: Meta, ino: int) -> list[bytes]:
    return [n for n, _, _ in await m.readdir(ino)]


# ---------------------------------------------------------------- basics

async def test_create_lookup_getattr(meta):
    f = await mkfile(meta, ROOT_INO, b"a.txt", 0o640)
    got = await meta.lookup(ROOT_INO, b"a.txt")
    assert got.ino == f.ino
    assert stat.S_ISREG(got.rec.mode) and stat.S_IMODE(got.rec.mode) == 0o640
    assert (got.rec.uid, got.rec.gid, got.rec.nlink, got.rec.size) == (UID, GID, 1, 0)
    root = await meta.inodes.getattr(ROOT_INO)
    assert root.rec.mtime_ns >= got.rec.mtime_ns  # parent's mtime moved


async def test_create_many_makes_files_like_create_in_one_commit(meta):
    d = await mkdir(meta, ROOT_INO, b"d")
    made = await meta.namespace.create_many(d.ino, [b"a", b"b", b"c"], 0o640, uid=UID, gid=GID)
    assert [m.ino for m in made] == sorted({m.ino for m in made})  # new numbers, in order
    assert await names(meta, d.ino) == [b"a", b"b", b"c"]
    for name, m in zip([b"a", b"b", b"c"], made):
        got = await meta.lookup(d.ino, name)
        assert got.ino == m.ino and stat.S_IMODE(got.rec.mode) == 0o640 and got.rec.nlink == 1
        assert (got.rec.uid, got.rec.gid, got.rec.size) == (UID, GID, 0)
    assert (await meta.inodes.getattr(d.ino)).rec.mtime_ns >= made[-1].rec.mtime_ns
    # one name taken: the batch falls back to one by one and stops there with EEXIST
    with pytest.raises(DfsError) as e:
        await meta.namespace.create_many(d.ino, [b"x", b"b", b"y"], 0o644, uid=UID, gid=GID)
    assert errno_of(e) == errno.EEXIST
    assert await names(meta, d.ino) == [b"a", b"b", b"c", b"x"]
    assert (await meta.lookup(d.ino, b"b")).ino == made[1].ino  # untouched
    with pytest.raises(DfsError) as e:
        await meta.namespace.create_many(d.ino, [b"ok", b"a/b"], 0o644, uid=UID, gid=GID)
    assert errno_of(e) == errno.EINVAL and b"ok" not in await names(meta, d.ino)


async def test_dot_and_dotdot(meta):
    d = await mkdir(meta, ROOT_INO, b"d")
    sub = await mkdir(meta, d.ino, b"sub")
    assert (await meta.lookup(sub.ino, b".")).ino == sub.ino
    assert (await meta.lookup(sub.ino, b"..")).ino == d.ino
    assert (await meta.lookup(ROOT_INO, b"..")).ino == ROOT_INO
    with pytest.raises(DfsError) as e:
        await mkfile(meta, d.ino, b".")
    assert errno_of(e) == errno.EINVAL
    with pytest.raises(DfsError) as e:
        await mkdir(meta, d.ino, b"..")
    assert errno_of(e) == errno.EINVAL


async def test_errors(meta):
    f = await mkfile(meta, ROOT_INO, b"f")
    d = await mkdir(meta, ROOT_INO, b"d")
    await mkfile(meta, d.ino, b"inside")
    cases = [
        (meta.lookup(ROOT_INO, b"missing"), errno.ENOENT),
        (mkfile(meta, ROOT_INO, b"f"), errno.EEXIST),
        (mkdir(meta, ROOT_INO, b"d"), errno.EEXIST),
        (meta.rmdir(ROOT_INO, b"d"), errno.ENOTEMPTY),
        (meta.rmdir(ROOT_INO, b"f"), errno.ENOTDIR),
        (meta.unlink(ROOT_INO, b"d"), errno.EISDIR),
        (meta.unlink(ROOT_INO, b"missing"), errno.ENOENT),
        (meta.lookup(f.ino, b"x"), errno.ENOTDIR),
        (mkfile(meta, f.ino, b"x"), errno.ENOTDIR),
        (mkfile(meta, ROOT_INO, b"n" * 256), errno.ENAMETOOLONG),
        (meta.lookup(ROOT_INO, b"n" * 256), errno.ENAMETOOLONG),
        (meta.namespace.rename(ROOT_INO, b"d", d.ino, b"moved"), errno.EINVAL),
        (meta.namespace.rename(ROOT_INO, b"f", ROOT_INO, b"d"), errno.EISDIR),
        (meta.namespace.rename(ROOT_INO, b"d", ROOT_INO, b"f"), errno.ENOTDIR),
        (meta.namespace.link(d.ino, ROOT_INO, b"dirlink"), errno.EPERM),
        (meta.inodes.readlink(f.ino), errno.EINVAL),
        (mkfile(meta, 999_999, b"x"), errno.ENOENT),
    ]
    for coro, want in cases:
        with pytest.raises(DfsError) as e:
            await coro
        assert errno_of(e) == want, (coro, e.value)
    # a name of exactly 255 bytes is fine
    await mkfile(meta, ROOT_INO, b"n" * 255)


async def test_names_any_byte(meta):
    weird = [b".hidden", b"with space", b"new\nline", b"\xff\xfe\x80 not utf8", b"%41",
             b"%2F", b"...", b"zookeeper", b"tab\there", b"\x01\x7f", "ünïcødé".encode(),
             b"a%b%%c", b"-", b"~"]
    for n in weird:
        await mkfile(meta, ROOT_INO, n)
    assert sorted(await names(meta, ROOT_INO)) == sorted(weird)
    for n in weird:
        assert (await meta.lookup(ROOT_INO, n)).rec.is_reg
    with pytest.raises(DfsError):
        await mkfile(meta, ROOT_INO, b"a/b")
    with pytest.raises(DfsError):
        await mkfile(meta, ROOT_INO, b"a\0b")


async def test_mkdir_rmdir_nlink(meta):
    d = await mkdir(meta, ROOT_INO, b"d")
    assert d.rec.nlink == 2
    assert (await meta.inodes.getattr(ROOT_INO)).rec.nlink == 3
    await mkdir(meta, d.ino, b"s1")
    await mkdir(meta, d.ino, b"s2")
    assert (await meta.inodes.getattr(d.ino)).rec.nlink == 4
    await meta.rmdir(d.ino, b"s1")
    assert (await meta.inodes.getattr(d.ino)).rec.nlink == 3
    await meta.rmdir(d.ino, b"s2")
    await meta.rmdir(ROOT_INO, b"d")
    assert (await meta.inodes.getattr(ROOT_INO)).rec.nlink == 2
    with pytest.raises(DfsError) as e:
        await meta.inodes.getattr(d.ino)
    assert errno_of(e) == errno.ENOENT


async def test_hard_links(meta):
    f = await mkfile(meta, ROOT_INO, b"f")
    d = await mkdir(meta, ROOT_INO, b"d")
    await meta.namespace.link(f.ino, d.ino, b"f2")
    await meta.namespace.link(f.ino, ROOT_INO, b"f3")
    assert (await meta.inodes.getattr(f.ino)).rec.nlink == 3
    await meta.unlink(ROOT_INO, b"f")
    assert (await meta.inodes.getattr(f.ino)).rec.nlink == 2
    await meta.unlink(d.ino, b"f2")
    assert (await meta.lookup(ROOT_INO, b"f3")).rec.nlink == 1
    await meta.unlink(ROOT_INO, b"f3")
    with pytest.raises(DfsError):
        await meta.inodes.getattr(f.ino)


async def test_symlink_and_special_files(meta):
    target = b"../some/where \xff"
    s = await meta.mknod(ROOT_INO, b"link", stat.S_IFLNK | 0o777, uid=UID, gid=GID, target=target)
    assert stat.S_ISLNK(s.rec.mode)
    assert await meta.inodes.readlink(s.ino) == target
    assert (await meta.inodes.getattr(s.ino)).rec.size == len(target)
    fifo = await meta.mknod(ROOT_INO, b"fifo", stat.S_IFIFO | 0o600, uid=UID, gid=GID)
    assert stat.S_ISFIFO((await meta.inodes.getattr(fifo.ino)).rec.mode)
    dev = await meta.mknod(ROOT_INO, b"dev", stat.S_IFCHR | 0o600, uid=0, gid=0, rdev=(1 << 8) | 3)
    assert (await meta.inodes.getattr(dev.ino)).rec.rdev == (1 << 8) | 3


async def test_setattr(meta):
    f = await mkfile(meta, ROOT_INO, b"f")
    await meta.inodes.setattr(f.ino, mode=0o4711, uid=5, gid=6, atime_ns=1_000_000_001,
                       mtime_ns=2_000_000_002)
    got = (await meta.inodes.getattr(f.ino)).rec
    assert stat.S_ISREG(got.mode) and stat.S_IMODE(got.mode) == 0o4711
    assert (got.uid, got.gid, got.atime_ns, got.mtime_ns) == (5, 6, 1_000_000_001, 2_000_000_002)
    assert got.ctime_ns > 2_000_000_002
    # explicit times on a directory win over the time of its last content change
    d = await mkdir(meta, ROOT_INO, b"d")
    await mkfile(meta, d.ino, b"x")
    await meta.inodes.setattr(d.ino, mtime_ns=3_000_000_003)
    assert (await meta.inodes.getattr(d.ino)).rec.mtime_ns == 3_000_000_003
    await mkfile(meta, d.ino, b"y")
    assert (await meta.inodes.getattr(d.ino)).rec.mtime_ns > 3_000_000_003


# ---------------------------------------------------------------- rename

async def test_rename_within_and_across(meta):
    a = await mkdir(meta, ROOT_INO, b"a")
    b = await mkdir(meta, ROOT_INO, b"b")
    f = await mkfile(meta, a.ino, b"f")
    await meta.namespace.rename(a.ino, b"f", a.ino, b"g")
    assert await names(meta, a.ino) == [b"g"]
    await meta.namespace.rename(a.ino, b"g", b.ino, b"h")
    assert await names(meta, a.ino) == [] and await names(meta, b.ino) == [b"h"]
    assert (await meta.lookup(b.ino, b"h")).ino == f.ino
    # a directory moves with its subtree; nlinks of both parents follow
    sub = await mkdir(meta, a.ino, b"sub")
    await meta.namespace.rename(a.ino, b"sub", b.ino, b"sub")
    assert (await meta.inodes.getattr(a.ino)).rec.nlink == 2
    assert (await meta.inodes.getattr(b.ino)).rec.nlink == 3
    assert (await meta.lookup(sub.ino, b"..")).ino == b.ino
    # no-op renames
    await meta.namespace.rename(b.ino, b"h", b.ino, b"h")
    assert await names(meta, b.ino) == [b"h", b"sub"]


async def test_rename_over_existing(meta):
    f1 = await mkfile(meta, ROOT_INO, b"f1")
    f2 = await mkfile(meta, ROOT_INO, b"f2")
    await meta.blockmap.commit_blocks(f2.ino, {0: BlockRef("ab" * 16, 10, "0" * 16, ["n1"])}, mtime_ns=1)
    await meta.namespace.rename(ROOT_INO, b"f1", ROOT_INO, b"f2")
    assert await names(meta, ROOT_INO) == [b"f2"]
    assert (await meta.lookup(ROOT_INO, b"f2")).ino == f1.ino
    with pytest.raises(DfsError):
        await meta.inodes.getattr(f2.ino)  # the replaced inode is gone ...
    gc = await meta.zk.get_children(meta.paths.gc)
    queued = [GcEntry.decode((await meta.zk.get(f"{meta.paths.gc}/{g}"))[0]) for g in gc]
    assert any("ab" * 16 in e.blocks for e in queued)  # ... and its blocks wait in gc/
    # over an empty directory
    d1 = await mkdir(meta, ROOT_INO, b"d1")
    await mkdir(meta, ROOT_INO, b"d2")
    await meta.namespace.rename(ROOT_INO, b"d1", ROOT_INO, b"d2")
    assert (await meta.lookup(ROOT_INO, b"d2")).ino == d1.ino
    assert (await meta.inodes.getattr(ROOT_INO)).rec.nlink == 3
    # not over a non-empty one
    await mkdir(meta, ROOT_INO, b"d3")
    await mkfile(meta, d1.ino, b"x")
    with pytest.raises(DfsError) as e:
        await meta.namespace.rename(ROOT_INO, b"d3", ROOT_INO, b"d2")
    assert errno_of(e) == errno.ENOTEMPTY


async def test_rename_flags(meta):
    a = await mkfile(meta, ROOT_INO, b"a")
    d = await mkdir(meta, ROOT_INO, b"d")
    with pytest.raises(DfsError) as e:
        await meta.namespace.rename(ROOT_INO, b"a", ROOT_INO, b"d", RENAME_NOREPLACE)
    assert errno_of(e) == errno.EEXIST
    await meta.namespace.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_NOREPLACE)
    with pytest.raises(DfsError) as e:
        await meta.namespace.rename(ROOT_INO, b"b", ROOT_INO, b"nothing", RENAME_EXCHANGE)
    assert errno_of(e) == errno.ENOENT
    sub = await mkdir(meta, d.ino, b"sub")
    await meta.namespace.rename(ROOT_INO, b"b", d.ino, b"sub", RENAME_EXCHANGE)
    assert (await meta.lookup(ROOT_INO, b"b")).ino == sub.ino
    assert (await meta.lookup(d.ino, b"sub")).ino == a.ino
    assert (await meta.lookup(sub.ino, b"..")).ino == ROOT_INO
    assert (await meta.inodes.getattr(d.ino)).rec.nlink == 2  # lost a subdirectory
    assert (await meta.inodes.getattr(ROOT_INO)).rec.nlink == 4  # d and b
    with pytest.raises(DfsError) as e:  # exchanging a dir into its own subtree
        await meta.namespace.rename(ROOT_INO, b"d", d.ino, b"sub", RENAME_EXCHANGE)
    assert errno_of(e) == errno.EINVAL


async def test_rename_into_own_subtree_deep(meta):
    a = await mkdir(meta, ROOT_INO, b"a")
    b = await mkdir(meta, a.ino, b"b")
    c = await mkdir(meta, b.ino, b"c")
    with pytest.raises(DfsError) as e:
        await meta.namespace.rename(ROOT_INO, b"a", c.ino, b"a")
    assert errno_of(e) == errno.EINVAL
    await meta.namespace.rename(b.ino, b"c", ROOT_INO, b"c")  # moving out is fine
    assert (await meta.lookup(c.ino, b"..")).ino == ROOT_INO


# ---------------------------------------------------------------- xattrs

async def test_xattrs(meta):
    f = await mkfile(meta, ROOT_INO, b"f")
    with pytest.raises(DfsError) as e:
        await meta.xattrs.get(f.ino, b"user.a")
    assert errno_of(e) == errno.ENODATA
    await meta.xattrs.set(f.ino, b"user.a", b"1")
    await meta.xattrs.set(f.ino, b"user.b/\xff", b"\x00binary")
    assert await meta.xattrs.names(f.ino) == [b"user.a", b"user.b/\xff"]
    assert await meta.xattrs.get(f.ino, b"user.b/\xff") == b"\x00binary"
    with pytest.raises(DfsError) as e:
        await meta.xattrs.set(f.ino, b"user.a", b"2", XATTR_CREATE)
    assert errno_of(e) == errno.EEXIST
    with pytest.raises(DfsError) as e:
        await meta.xattrs.set(f.ino, b"user.zz", b"2", XATTR_REPLACE)
    assert errno_of(e) == errno.ENODATA
    await meta.xattrs.set(f.ino, b"user.a", b"2", XATTR_REPLACE)
    assert await meta.xattrs.get(f.ino, b"user.a") == b"2"
    await meta.xattrs.remove(f.ino, b"user.a")
    assert await meta.xattrs.names(f.ino) == [b"user.b/\xff"]
    await meta.unlink(ROOT_INO, b"f")
    assert await meta.zk.exists(meta.paths.xattr_dir(f.ino)) is None


# ---------------------------------------------------------------- block map

async def test_block_map_commit_and_truncate(meta):
    f = await mkfile(meta, ROOT_INO, b"f")
    bs = meta.config.block_size
    refs = {i: BlockRef(f"{i:032x}", bs, "0" * 16, ["n1", "n2"]) for i in range(10)}
    node = await meta.blockmap.commit_blocks(f.ino, refs, mtime_ns=5)
    assert node.rec.size == 10 * bs
    assert await meta.blockmap.read_block_map(f.ino) == refs
    # overwrite one block: the old one goes to gc
    new = BlockRef("f" * 32, 7, "1" * 16, ["n3"])
    await meta.blockmap.commit_blocks(f.ino, {9: new}, size=9 * bs + 7, mtime_ns=6)
    bm = await meta.blockmap.read_block_map(f.ino)
    assert bm[9] == new and (await meta.inodes.getattr(f.ino)).rec.size == 9 * bs + 7
    # truncate to 2.5 blocks: blocks 3.. dropped (groups of 4 removed when empty)
    await meta.blockmap.commit_blocks(f.ino, {}, size=2 * bs + bs // 2, truncate_from=3)
    assert sorted(await meta.blockmap.read_block_map(f.ino)) == [0, 1, 2]
    assert sorted(await meta.zk.get_children(meta.paths.block_map(f.ino))) == ["0"]
    gc_blocks = set()
    for g in await meta.zk.get_children(meta.paths.gc):
        gc_blocks |= set(GcEntry.decode((await meta.zk.get(f"{meta.paths.gc}/{g}"))[0]).blocks)
    assert gc_blocks == {f"{i:032x}" for i in range(3, 10)} | {new.id}
    # a sparse file: a block far away, hole in between
    await meta.blockmap.commit_blocks(f.ino, {1000: new})
    assert (await meta.inodes.getattr(f.ino)).rec.size == 1000 * bs + 7
    await meta.unlink(ROOT_INO, b"f")
    assert await meta.zk.exists(meta.paths.block_map(f.ino)) is None


async def test_unlink_while_open_keeps_inode(meta):
    f = await mkfile(meta, ROOT_INO, b"f")
    meta.namespace.is_open = lambda ino: ino == f.ino
    await meta.unlink(ROOT_INO, b"f")
    assert await names(meta, ROOT_INO) == []
    assert (await meta.inodes.getattr(f.ino)).rec.nlink == 0
    await meta.blockmap.commit_blocks(f.ino, {0: BlockRef("c" * 32, 3, "0" * 16, ["n"])})  # still writable
    meta.namespace.is_open = lambda ino: False
    await meta.namespace.release_orphan(f.ino)
    with pytest.raises(DfsError):
        await meta.inodes.getattr(f.ino)


# ---------------------------------------------------------------- two clients

async def test_race_create_same_name(meta, meta2):
    results = []

    async def one(m):
        try:
            results.append((await mkfile(m, ROOT_INO, b"race")).ino)
        except DfsError as e:
            results.append(e.errno)

    for _ in range(5):
        results.clear()
        async with trio.open_nursery() as n:
            n.start_soon(one, meta)
            n.start_soon(one, meta2)
        assert sorted(r == errno.EEXIST for r in results) == [False, True], results
        await meta.unlink(ROOT_INO, b"race")


async def test_race_renames_never_lose_entries(meta, meta2):
    dirs = [(await mkdir(meta, ROOT_INO, f"d{i}".encode())).ino for i in range(3)]
    files = [f"f{i}".encode() for i in range(20)]
    for f in files:
        await mkfile(meta, dirs[0], f)

    async def shuffle(m: Meta, seed: int):
        import random
        rng = random.Random(seed)
        for _ in range(60):
            src, dst = rng.sample(dirs, 2)
            name = rng.choice(files)
            try:
                await m.namespace.rename(src, name, dst, name)
            except DfsError as e:
                assert e.errno == errno.ENOENT  # it was elsewhere: fine

    async with trio.open_nursery() as n:
        n.start_soon(shuffle, meta, 1)
        n.start_soon(shuffle, meta2, 2)
    seen = []
    for d in dirs:
        seen += await names(meta, d)
    assert sorted(seen) == sorted(files)


async def test_race_links_keep_nlink_right(meta, meta2):
    f = await mkfile(meta, ROOT_INO, b"f")

    async def linker(m: Meta, prefix: bytes):
        for i in range(15):
            await m.namespace.link(f.ino, ROOT_INO, prefix + str(i).encode())

    async with trio.open_nursery() as n:
        n.start_soon(linker, meta, b"a")
        n.start_soon(linker, meta2, b"b")
    assert (await meta.inodes.getattr(f.ino)).rec.nlink == 31

    async def unlinker(m: Meta, prefix: bytes):
        for i in range(15):
            await m.unlink(ROOT_INO, prefix + str(i).encode())

    async with trio.open_nursery() as n:
        n.start_soon(unlinker, meta, b"a")
        n.start_soon(unlinker, meta2, b"b")
    assert (await meta.inodes.getattr(f.ino)).rec.nlink == 1


async def test_race_dir_swap_no_cycle(meta, meta2):
    """Two clients move a into b and b into a at once: one must fail, no cycle."""
    for _ in range(5):
        a = await mkdir(meta, ROOT_INO, b"a")
        b = await mkdir(meta, ROOT_INO, b"b")
        errs = []

        async def mv(m, src, dst_ino):
            try:
                await m.namespace.rename(ROOT_INO, src, dst_ino, src)
            except DfsError as e:
                errs.append(e.errno)

        async with trio.open_nursery() as n:
            n.start_soon(mv, meta, b"a", b.ino)
            n.start_soon(mv, meta2, b"b", a.ino)
        assert len(errs) == 1 and errs[0] in (errno.EINVAL, errno.ENOENT)
        top = await names(meta, ROOT_INO)
        assert len(top) == 1  # one of them is at the top, the other inside it
        outer = await meta.lookup(ROOT_INO, top[0])
        inner_name = (await names(meta, outer.ino))[0]
        await meta.rmdir(outer.ino, inner_name)
        await meta.rmdir(ROOT_INO, top[0])
