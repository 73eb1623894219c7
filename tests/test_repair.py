"""dfs/maint/repair.py against real node processes: re-replication, dropping replicas, gc, audit."""

import os
import stat

import trio

from dfs.config import FsConfig
from dfs.maint import repair
from dfs.maint.audit import read_audit
from dfs.maint.gc import collect_gc_entry
from dfs.maint.scan import block_groups
from dfs.meta import Meta
from dfs.paths import ROOT_INO
from dfs.records import GcEntry
from tests.nodeutil import cluster

MiB = 1 << 20
CONFIG = FsConfig(block_size=MiB, replicas=3, min_replicas=2, dead_after=3)
# These tests call the repair primitives themselves; the leader that runs inside
# the nodes would otherwise race them (e.g. re-replicate a replica a test just dropped).
NO_LEADER = {"DFS_REPAIR_LEADER": "0"}


async def make_file(c, meta: Meta, name: bytes, blocks: list[bytes], **kw):
    node = await meta.mknod(ROOT_INO, name, stat.S_IFREG | 0o644, uid=0, gid=0)
    refs = {}
    for i, data in enumerate(blocks):
        refs[i] = await c.client.write_block(data, replicas=kw.get("replicas", 3), min_replicas=1,
                                             exclude=kw.get("exclude", ()))
    await meta.blockmap.commit_blocks(node.ino, refs)
    return node.ino, refs


def context(c) -> repair.RepairContext:
    return repair.RepairContext(c.zk, c.paths, CONFIG, c.nodedir, c.client, actor="test")


async def holders(c, block_id: str) -> set[str]:
    out = set()
    for n in c.nodedir.live():
        try:
            await c.client.stat_block(n, block_id)
            out.add(n)
        except Exception:
            pass
    return out


async def wait_gone(c, node_id: str) -> None:
    with trio.fail_after(20):
        while True:
            await c.nodedir.refresh()
            if c.nodedir.get(node_id) is None:
                return
            await trio.sleep(0.1)


async def test_rereplicate_after_a_node_is_gone(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=4, config=CONFIG, env=NO_LEADER) as c:
        meta = Meta(zk, fs_paths, CONFIG)
        data = os.urandom(MiB)
        ino, refs = await make_file(c, meta, b"f", [data])
        ref = refs[0]
        victim = ref.replicas[0]
        c.node(victim).stop()
        await wait_gone(c, victim)
        ctx = context(c)
        new = await repair.rereplicate(ctx, ino, 0, ref)
        assert new is not None and len(new.replicas) == 3 and victim not in new.replicas
        assert set(new.replicas) == await holders(c, ref.id)
        stored = (await meta.blockmap.read_block_map(ino))[0]
        assert stored.replicas == new.replicas and stored.gen == ref.gen + 1
        assert await c.client.read_block(new) == data
        log = await read_audit(zk, fs_paths)
        assert [r["action"] for r in log] == ["copy", "drop"]
        assert log[0]["block"] == ref.id and log[0]["ino"] == ino and log[0]["copies"] == 2
        # nothing left to do: no change, no new audit records
        again = await repair.rereplicate(ctx, ino, 0, new)
        assert again.replicas == new.replicas and again.gen == new.gen
        assert len(await read_audit(zk, fs_paths)) == 2


async def test_rereplicate_replaces_a_bad_replica_in_place(zk, zk_hosts, fs_paths, tmp_path):
    # 3 nodes, replicas 3: the only possible target is the node with the bad copy
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=3, config=CONFIG, env=NO_LEADER) as c:
        meta = Meta(zk, fs_paths, CONFIG)
        data = os.urandom(MiB // 2)
        ino, refs = await make_file(c, meta, b"f", [data])
        ref = refs[0]
        bad = ref.replicas[1]
        path = c.block_file(bad, ref.id)
        raw = bytearray(path.read_bytes())
        raw[-100] ^= 0xFF
        path.write_bytes(raw)
        assert not await c.client.verify_block(bad, ref.id)
        new = await repair.rereplicate(context(c), ino, 0, ref, bad={bad}, reason="corrupt")
        assert new is not None and sorted(new.replicas) == sorted(ref.replicas)
        assert await c.client.verify_block(bad, ref.id)


async def test_rereplicate_of_a_replaced_block_discards_its_copies(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=4, config=CONFIG, env=NO_LEADER) as c:
        meta = Meta(zk, fs_paths, CONFIG)
        ino, refs = await make_file(c, meta, b"f", [os.urandom(1000)], replicas=2)
        old = refs[0]
        newer = await c.client.write_block(os.urandom(1000), replicas=3, min_replicas=3)
        await meta.blockmap.commit_blocks(ino, {0: newer})  # the file was rewritten meanwhile
        assert await repair.rereplicate(context(c), ino, 0, old) is None
        assert await holders(c, old.id) == set(old.replicas)  # the copy went away again
        assert (await meta.blockmap.read_block_map(ino))[0].id == newer.id


async def test_drop_replicas_never_drops_the_last(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=3, config=CONFIG, env=NO_LEADER) as c:
        meta = Meta(zk, fs_paths, CONFIG)
        ino, refs = await make_file(c, meta, b"f", [os.urandom(1000)])
        ref = refs[0]
        ctx = context(c)
        new = await repair.drop_replicas(ctx, ino, 0, ref, [ref.replicas[0]], "surplus")
        assert new.replicas == ref.replicas[1:]
        assert await holders(c, ref.id) == set(ref.replicas[1:])
        same = await repair.drop_replicas(ctx, ino, 0, new, new.replicas, "all")
        assert same.replicas == new.replicas
        assert await holders(c, ref.id) == set(new.replicas)


async def test_collect_gc_entries(zk, zk_hosts, fs_paths, tmp_path):
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=3, config=CONFIG, env=NO_LEADER) as c:
        meta = Meta(zk, fs_paths, CONFIG)
        ino, refs = await make_file(c, meta, b"f", [os.urandom(1000) for _ in range(3)])
        ino2, refs2 = await make_file(c, meta, b"g", [os.urandom(1000) for _ in range(2)])
        await meta.unlink(ROOT_INO, b"f")  # queues a blocks= entry
        # an inode= entry, as meta writes for a huge file
        await zk.delete(fs_paths.inode(ino2))
        await zk.create(fs_paths.gc_entry(f"inode-{ino2}"), GcEntry(inode=ino2).encode())
        names = await zk.get_children(fs_paths.gc)
        assert len(names) == 2
        ctx = context(c)
        all_refs = list(refs.values()) + list(refs2.values())
        for name in names:
            assert await collect_gc_entry(ctx, name) > 0
            assert await collect_gc_entry(ctx, name) == 0  # idempotent
        assert await zk.get_children(fs_paths.gc) == []
        assert await zk.exists(fs_paths.block_map(ino2)) is None
        for r in all_refs:
            assert await holders(c, r.id) == set()
        assert ctx.stats["gc_blocks"] == 15


async def test_iter_block_groups_and_audit_trim(zk, zk_hosts, fs_paths, tmp_path):
    config = FsConfig(block_size=MiB, replicas=1, min_replicas=1, group_blocks=2)
    async with cluster(zk, zk_hosts, fs_paths, tmp_path, n=1, config=config) as c:
        meta = Meta(zk, fs_paths, config)
        ino, refs = await make_file(c, meta, b"f", [b"x" * 10 for _ in range(5)], replicas=1)
        seen = {}
        ctx = repair.RepairContext(zk, fs_paths, config, c.nodedir, c.client)
        async for i, g, grp, st in block_groups(zk, fs_paths):
            assert i == ino and st.version == 0
            for index, ref in grp.blocks.items():
                assert index // 2 == g
                seen[index] = ref.id
        assert seen == {i: r.id for i, r in refs.items()}
        for k in range(30):
            await ctx.audit.append("test", reason=str(k))
        await ctx.audit.trim(keep=10)
        log = await read_audit(zk, fs_paths)
        assert [r["reason"] for r in log] == [str(k) for k in range(20, 30)]
