"""Several mounts of one filesystem writing the same files (issue 13): nothing a close returned
for is lost, whichever mount commits first."""

import os
import random
import subprocess
import sys
import time

BS = 1 << 20  # the test clusters' block size
SLOT = 4096  # the file is cut into slots; mount a writes the even ones, mount b the odd ones


def test_disjoint_writes_of_two_mounts_into_one_file_both_survive(cluster):
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("b")
    rng = random.Random(7)
    for name, size in (("big", 3 * BS + 1000), ("small", 3000)):  # block file and inline file
        expected = bytearray(os.urandom(size))
        (a / name).write_bytes(expected)
        for rnd in range(5):
            # both open before either writes: each builds on the same version
            fa, fb = open(a / name, "r+b", buffering=0), open(b / name, "r+b", buffering=0)
            for fh, parity in ((fa, 0), (fb, 1)):
                slots = [s for s in range(0, (size + SLOT - 1) // SLOT) if s % 2 == parity]
                for s in rng.sample(slots, min(len(slots), 6)):
                    off = s * SLOT + rng.randrange(SLOT // 2)
                    data = os.urandom(min(rng.randrange(1, SLOT // 2), size - off))
                    fh.seek(off)
                    fh.write(data)
                    expected[off:off + len(data)] = data
            if rnd == 3:  # b also grows the file while a does not know
                fb.seek(size)
                grow = os.urandom(5000)
                fb.write(grow)
                expected += grow
                size += len(grow)
            first, second = (fa, fb) if rnd % 2 else (fb, fa)
            first.close()
            second.close()
            for m in (a, b):
                got = (m / name).read_bytes()
                assert got == bytes(expected), (name, rnd, m.name, first_difference(got, expected))
    c = cluster.mount("c")  # a mount that never saw any of it
    assert (c / "big").stat().st_size == 3 * BS + 1000 + 5000


def first_difference(got: bytes, want: bytes) -> str:
    for i, (x, y) in enumerate(zip(got, want)):
        if x != y:
            return f"first difference at byte {i} (block {i // BS}), sizes {len(got)} vs {len(want)}"
    return f"sizes {len(got)} vs {len(want)}"


APPENDER = r"""
import os, sys
path, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd = os.open(path, os.O_WRONLY | os.O_APPEND)
for i in range(n):
    os.write(fd, f"{who} {i:05d} ".encode().ljust(63, b".") + b"\n")
    if i % 97 == 96:
        os.fsync(fd)  # commits along the way, interleaved with the other mount's
os.close(fd)
"""


def test_appends_from_four_processes_on_two_mounts_all_land_whole(cluster):
    a = cluster.mounts[0].mountpoint
    b = cluster.mount("b")
    c = cluster.mount("c")  # reads every version the others commit while they write
    (a / "log").write_bytes(b"")
    n = 1000
    procs = [subprocess.Popen([sys.executable, "-c", APPENDER, str(m / "log"), f"w{k}", str(n)])
             for k, m in enumerate((a, a, b, b))]
    holes, deadline = [], time.monotonic() + 300
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            seen = (c / "log").read_bytes()
            if b"\0" in seen:  # a commit published a size beyond the bytes it wrote
                holes.append((len(seen), seen.index(b"\0")))
            time.sleep(0.05)
        assert [p.wait(timeout=10) for p in procs] == [0, 0, 0, 0]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert not holes, f"versions with zeros in them (size, first zero): {holes[:5]}"
    data = (c / "log").read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(data) == 4 * n * 64, len(data)
    records = lines[:-1]
    assert all(len(r) == 63 and r.startswith(b"w") for r in records), "interleaved or torn records"
    for k in range(4):
        mine = [int(r.split()[1]) for r in records if r.startswith(f"w{k} ".encode())]
        assert mine == list(range(n)), f"writer {k}: {len(mine)} records, in order: {mine == sorted(mine)}"
