"""Small files keep their bytes inline in ZooKeeper: no block, same bytes, clean transitions."""

import os
import stat
import subprocess
import time

from dfs.client.files import FileData
from dfs.config import FsConfig
from dfs.paths import ROOT_INO
from tests.harness import client_session


async def _stored(zk, c, ino):
    """(inline bytes in blocks/<ino>, number of block groups)."""
    data, _ = await zk.get(c.paths.block_map(ino))
    return data, len(await zk.get_children(c.paths.block_map(ino)))


def test_small_file_lives_inline_and_moves_to_blocks_when_it_grows(cluster_factory):
    c = cluster_factory(FsConfig(block_size=16384, replicas=2, min_replicas=1))
    small = os.urandom(3000)
    more = os.urandom(5000)

    async def body(zk, view, blocks, nursery):
        seen = {}
        fd = FileData(view, blocks, nursery)
        node = await view.mknod(ROOT_INO, b"f", stat.S_IFREG | 0o644, uid=0, gid=0)
        ino = node.ino
        await fd.open(ino, node, created=True)
        await fd.write(ino, 0, small)
        await fd.release(ino)
        seen["small"] = await _stored(zk, c, ino)
        seen["size_small"] = (await view.getattr(ino)).rec.size

        # another client (no shared cache) reads it back, then patches 10 bytes in the middle
        fd2 = FileData(view, blocks, nursery, cache_bytes=0)
        await fd2.open(ino)
        seen["read_small"] = await fd2.read(ino, 0, 100_000)
        await fd2.write(ino, 1000, b"X" * 10)
        await fd2.release(ino)
        seen["patched"] = await _stored(zk, c, ino)

        # grows past inline_max: the bytes move into a real block, inline data cleared
        await fd2.open(ino)
        await fd2.write(ino, 3000, more)
        await fd2.release(ino)
        seen["grown"] = await _stored(zk, c, ino)
        fd3 = FileData(view, blocks, nursery, cache_bytes=0)
        await fd3.open(ino)
        seen["read_grown"] = await fd3.read(ino, 0, 100_000)
        await fd3.release(ino)

        # truncated back down: stays a block file with the right bytes
        await fd3.truncate(ino, 100)
        await fd3.open(ino)
        seen["read_trunc"] = await fd3.read(ino, 0, 100_000)
        await fd3.release(ino)
        return seen

    seen = client_session(c, body)
    patched = small[:1000] + b"X" * 10 + small[1010:]
    assert seen["small"] == (small, 0)
    assert seen["size_small"] == 3000
    assert seen["read_small"] == small
    assert seen["patched"] == (patched, 0)
    assert seen["grown"][0] == b"" and seen["grown"][1] == 1
    assert seen["read_grown"] == patched + more
    assert seen["read_trunc"] == patched[:100]


def test_truncate_and_extend_inline_file(cluster_factory):
    c = cluster_factory(FsConfig(block_size=16384, replicas=2, min_replicas=1))
    data = os.urandom(4000)

    async def body(zk, view, blocks, nursery):
        fd = FileData(view, blocks, nursery)
        node = await view.mknod(ROOT_INO, b"t", stat.S_IFREG | 0o644, uid=0, gid=0)
        await fd.open(node.ino, node, created=True)
        await fd.write(node.ino, 0, data)
        await fd.release(node.ino)
        await fd.truncate(node.ino, 1500)  # not open: reads the map itself
        shrunk = await _stored(zk, c, node.ino)
        await fd.truncate(node.ino, 20000)  # a hole after the inline bytes, still no block
        grown = await _stored(zk, c, node.ino)
        fd2 = FileData(view, blocks, nursery, cache_bytes=0)
        await fd2.open(node.ino)
        back = await fd2.read(node.ino, 0, 30000)
        await fd2.release(node.ino)
        return shrunk, grown, back

    shrunk, grown, back = client_session(c, body)
    assert shrunk == (data[:1500], 0)
    assert grown == (data[:1500], 0)
    assert back == data[:1500] + bytes(20000 - 1500)


def test_inline_off_writes_blocks(cluster_factory):
    c = cluster_factory(FsConfig(block_size=16384, replicas=2, min_replicas=1, inline_max=0))

    async def body(zk, view, blocks, nursery):
        fd = FileData(view, blocks, nursery)
        node = await view.mknod(ROOT_INO, b"b", stat.S_IFREG | 0o644, uid=0, gid=0)
        await fd.open(node.ino, node, created=True)
        await fd.write(node.ino, 0, b"hello")
        await fd.release(node.ino)
        return await _stored(zk, c, node.ino)

    assert client_session(c, body) == (b"", 1)


def test_small_files_through_two_mounts(cluster):
    a = cluster.mount("a")
    b = cluster.mount("b")
    sizes = [0, 1, 100, 4095, 4096, 4097]
    payloads = {n: os.urandom(n) for n in sizes}
    for n, data in payloads.items():
        (a / f"f{n}").write_bytes(data)
    for n, data in payloads.items():
        assert (b / f"f{n}").read_bytes() == data, n
    # append across the inline limit on b, read on a
    with open(b / "f4095", "ab") as f:
        f.write(b"0123456789")
    assert (a / "f4095").read_bytes() == payloads[4095] + b"0123456789"
    # shell tools: cp, cat >>, truncate, cmp
    subprocess.run(["cp", str(a / "f100"), str(a / "copy")], check=True)
    subprocess.run(["sh", "-c", f"printf abc >> {a / 'copy'}"], check=True)
    assert (b / "copy").read_bytes() == payloads[100] + b"abc"
    subprocess.run(["truncate", "-s", "10", str(b / "copy")], check=True)
    assert (a / "copy").read_bytes() == payloads[100][:10]
    assert os.stat(a / "f4096").st_size == 4096
    os.unlink(a / "f4096")
    deadline = time.monotonic() + 3  # b's kernel may keep its dentry for entry_timeout (1 s)
    while (b / "f4096").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (b / "f4096").exists()
