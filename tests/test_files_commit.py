"""Client data path details that need no mount: large commits are split, sizes stay right."""

import stat

from dfs.client import files as files_mod
from dfs.client.files import FileData
from dfs.paths import ROOT_INO
from tests.harness import client_session


def test_many_blocks_commit_in_batches(cluster_factory, monkeypatch):
    from dfs.config import FsConfig

    c = cluster_factory(FsConfig(block_size=4096, replicas=2, min_replicas=1, group_blocks=16))
    monkeypatch.setattr(files_mod, "COMMIT_BATCH", 7)  # force several transactions
    payload = bytes(range(256)) * 16 * 50  # 50 blocks of 4 KiB

    async def go(zk, view, blocks, nursery) -> tuple[bytes, int]:
        fd = FileData(view, blocks, nursery)
        node = await view.mknod(ROOT_INO, b"many", stat.S_IFREG | 0o644, uid=0, gid=0)
        await fd.open(node.ino, node, created=True)
        await fd.write(node.ino, 0, payload + b"tail")
        await fd.release(node.ino)
        size = (await view.getattr(node.ino)).rec.size
        fd2 = FileData(view, blocks, nursery, cache_bytes=0)
        await fd2.open(node.ino)
        back = await fd2.read(node.ino, 0, len(payload) + 100)
        await fd2.release(node.ino)
        return back, size

    back, size = client_session(c, go)
    assert size == len(payload) + 4
    assert back == payload + b"tail"
