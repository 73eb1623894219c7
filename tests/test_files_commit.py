"""Client data path details that need no mount: large commits are split, sizes stay right."""

import trio

from dfs import files as files_mod
from dfs.blockclient import BlockClient
from dfs.files import FileData
from dfs.meta import Meta
from dfs.mkfs import load_config
from dfs.nodedir import NodeDirectory
from dfs.paths import ROOT_INO
from dfs.zk import Zk


def test_many_blocks_commit_in_batches(cluster_factory, monkeypatch):
    from dfs.records import FsConfig

    c = cluster_factory(FsConfig(block_size=4096, replicas=2, min_replicas=1, group_blocks=16))
    monkeypatch.setattr(files_mod, "COMMIT_BATCH", 7)  # force several transactions
    payload = bytes(range(256)) * 16 * 50  # 50 blocks of 4 KiB

    async def go() -> tuple[bytes, int]:
        zk = await Zk.connect(c.hosts)
        try:
            config = await load_config(zk, c.paths)
            meta = Meta(zk, c.paths, config)
            nodedir = NodeDirectory(zk, c.paths)
            await nodedir.refresh()
            blocks = BlockClient(nodedir)
            async with trio.open_nursery() as nursery:
                fd = FileData(meta, blocks, nursery)
                node = await meta.create(ROOT_INO, b"many", 0o644, uid=0, gid=0)
                await fd.open(node.ino, node, created=True)
                await fd.write(node.ino, 0, payload + b"tail")
                await fd.release(node.ino)
                size = (await meta.getattr(node.ino)).rec.size
                fd2 = FileData(meta, blocks, nursery, cache_bytes=0)
                await fd2.open(node.ino)
                back = await fd2.read(node.ino, 0, len(payload) + 100)
                await fd2.release(node.ino)
                nursery.cancel_scope.cancel()
            await blocks.aclose()
            return back, size
        finally:
            await zk.close()

    back, size = trio.run(go)
    assert size == len(payload) + 4
    assert back == payload + b"tail"
