"""A directory with 100,000 entries through `Meta` (DESIGN.md section 2: no listing
assumes a directory is small). Times are printed (pytest -s), not asserted."""

import time

import pytest
import trio

from dfs.config import FsConfig
from dfs.meta import Meta
from dfs.mkfs import mkfs
from dfs.paths import ROOT_INO

ENTRIES = 100_000
IN_FLIGHT = 64
BATCH = 256  # creates, and removals (as the mount's removal queue), per transaction


async def run_bounded(fn, items, limit: int = IN_FLIGHT) -> None:
    sem = trio.Semaphore(limit)

    async def one(item):
        try:
            await fn(item)
        finally:
            sem.release()

    async with trio.open_nursery() as nursery:
        for item in items:
            await sem.acquire()
            nursery.start_soon(one, item)


@pytest.mark.slow
async def test_directory_with_100k_entries(zk, fs_paths):
    config = FsConfig()
    await mkfs(zk, fs_paths, config)
    meta = Meta(zk, fs_paths, config)
    d = await meta.mkdir(ROOT_INO, b"big", 0o755, uid=0, gid=0)
    names = [f"entry-{i:06d}".encode() for i in range(ENTRIES)]

    # created as an untar fills a directory: many creates to a transaction
    t = time.perf_counter()
    batches = [names[i:i + BATCH] for i in range(0, ENTRIES, BATCH)]
    await run_bounded(lambda b: meta.namespace.create_many(d.ino, b, 0o644, uid=0, gid=0),
                      batches, limit=4)
    created = time.perf_counter() - t
    assert (await zk.exists(fs_paths.dir(d.ino))).numChildren == ENTRIES

    t = time.perf_counter()
    listed = await meta.readdir(d.ino)
    listing = time.perf_counter() - t
    got = [n for n, _, _ in listed]
    assert len(got) == ENTRIES and len(set(got)) == ENTRIES
    assert set(got) == set(names)

    # removed as `rm -rf` on a mount removes them: the removal queue's batches (dfs.client.removals)
    t = time.perf_counter()
    inos = {n: entry.ino for n, entry, _ in listed}
    left: list = []

    async def remove(batch):
        done = await meta.namespace.remove_many([("unlink", d.ino, n) for n in batch], [inos[n] for n in batch])
        left.extend(done.left)
    await run_bounded(remove, batches, limit=4)
    assert left == [], f"{len(left)} removals left out of their batch"
    removed = time.perf_counter() - t
    assert await meta.readdir(d.ino) == []
    await meta.rmdir(ROOT_INO, b"big")

    print(f"\n{ENTRIES:,} entries: "
          f"create in batches of {BATCH} {created / ENTRIES * 1e6:.0f} us/op ({ENTRIES / created:,.0f}/s, {created:.1f} s), "
          f"readdir {listing:.2f} s ({listing / ENTRIES * 1e6:.1f} us/entry), "
          f"unlink in batches of {BATCH} {removed / ENTRIES * 1e6:.0f} us/op ({ENTRIES / removed:,.0f}/s, {removed:.1f} s), "
          f"retries {meta.stats['retries']}")
