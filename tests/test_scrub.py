"""nodes/scrub.py on a real block store, without servers: what it verified survives a
restart (scrub.json), and damage is reported when the replica falls due."""

import os
import time
import uuid

import trio

from dfs.checksum import hash64
from nodes.scrub import Scrubber
from nodes.store import BlockStore, header_size


async def scrub_for(store: BlockStore, seconds: float) -> tuple[Scrubber, list[str]]:
    """Run a scrubber (fast, a period of an hour) until its first figures, then `seconds` more."""
    reports: list[str] = []

    async def report(ref, node_id, reason):
        reports.append(ref.id)

    s = Scrubber(store, "n1", report, rate=1 << 30, period=3600, busy=lambda: False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.run)
        while not s.figures():
            await trio.sleep(0.01)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return s, reports


async def test_scrub_resumes_from_its_record_and_reports_damage(tmp_path):
    store = BlockStore(tmp_path / "data")
    store.open()
    ids = [uuid.uuid4().hex for _ in range(3)]
    for bid in ids:
        data = os.urandom(200_000)
        store.put(bid, data, hash64(data))
        past = time.time() - 7200  # written two hours ago: due (the period is an hour)
        os.utime(store.path(bid), (past, past))

    s, reports = await scrub_for(store, 0.5)
    assert s.figures()["coverage"] == 1.0 and reports == []
    assert (tmp_path / "data" / "scrub.json").exists()

    # bit rot in one replica (its mtime kept): verified a moment ago, so not due yet
    path = store.path(ids[1])
    st = path.stat()
    raw = bytearray(path.read_bytes())
    raw[header_size(200_000) + 777] ^= 0x01
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    s, reports = await scrub_for(store, 0.5)  # a restart: the record says all is fresh
    assert s.figures()["coverage"] == 1.0 and reports == []

    (tmp_path / "data" / "scrub.json").unlink()  # record lost: everything is due again
    s, reports = await scrub_for(store, 0.5)
    assert reports == [ids[1]]
    assert 0.6 < s.figures()["coverage"] < 0.7  # the damaged third stays unverified
