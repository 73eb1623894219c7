"""fsx across two mounts: random writes, appends, truncates and reads of one file, each
operation run by one of two mounts of one filesystem (alternating at random), checked
against a model after every read; some steps have both mounts write at once (overlapping
ranges too: the later close wins). FSX_OPS sets the number of operations (default 300;
the issue's bar is 10000: FSX_OPS=10000 ./tools/dfs.sh test tests/test_fsx.py)."""

import mmap
import os
import random

BS = 1 << 20  # the test clusters' block size
MAX_SIZE = 3 * BS + 12345


def test_fsx_across_two_mounts(cluster):
    mounts = [cluster.mounts[0].mountpoint, cluster.mount("b")]
    ops = int(os.environ.get("FSX_OPS", "300"))
    rng = random.Random(int(os.environ.get("FSX_SEED", "1")))
    model = bytearray()
    (mounts[0] / "fsx").write_bytes(b"")
    log: list[str] = []

    def span(limit: int) -> tuple[int, int]:
        # mostly small, sometimes block-sized, near block edges on purpose
        off = rng.choice([rng.randrange(limit + 1), rng.randrange(4) * BS - rng.randrange(2000) % (limit + 1)])
        off = max(0, min(off, limit))
        n = rng.randrange(1, 5000) if rng.random() < 0.85 else rng.randrange(1, BS + 5000)
        return off, max(0, min(n, MAX_SIZE - off))

    def apply_write(off: int, data: bytes) -> None:
        if len(model) < off:
            model.extend(bytes(off - len(model)))
        model[off:off + len(data)] = data

    for step in range(ops):
        m = rng.choice(mounts)
        kind = rng.choices(["write", "append", "truncate", "read", "mmap", "both"],
                           [30, 10, 10, 25, 5, 20])[0]
        path = m / "fsx"
        if kind == "write":
            off, n = span(len(model) + 100)
            data = rng.randbytes(n)
            with open(path, "r+b") as f:
                f.seek(off)
                f.write(data)
            apply_write(off, data)
            log.append(f"{step} {m.name} write {off} {n}")
        elif kind == "append":
            data = rng.randbytes(rng.randrange(1, 3000))
            if len(model) + len(data) > MAX_SIZE:
                continue
            with open(path, "ab") as f:
                f.write(data)
            model += data
            log.append(f"{step} {m.name} append {len(data)}")
        elif kind == "truncate":
            size = rng.choice([0, rng.randrange(len(model) + 1), rng.randrange(MAX_SIZE), len(model) + 1])
            os.truncate(path, size)
            del model[size:]
            model.extend(bytes(size - len(model)))
            log.append(f"{step} {m.name} truncate {size}")
        elif kind in ("read", "mmap"):
            if kind == "mmap" and model:
                with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mm:
                    got = bytes(mm)
            else:
                got = path.read_bytes()
            assert got == bytes(model), report(step, m, got, model, log)
        else:  # both mounts have it open and write; m closes last, so its bytes win
            other = mounts[1] if m is mounts[0] else mounts[0]
            first, second = open(other / "fsx", "r+b"), open(path, "r+b")
            writes = []
            for f in (first, second):
                off, n = span(len(model) + 100)
                data = rng.randbytes(min(n, 20000))
                f.seek(off)
                f.write(data)
                f.flush()
                writes.append((off, data))
            first.close()
            second.close()
            for off, data in writes:
                apply_write(off, data)
            log.append(f"{step} both {other.name}:{writes[0][0]}+{len(writes[0][1])} "
                       f"then {m.name}:{writes[1][0]}+{len(writes[1][1])}")
    for m in mounts:
        assert (m / "fsx").read_bytes() == bytes(model), report(ops, m, (m / "fsx").read_bytes(), model, log)


def report(step: int, m, got: bytes, model: bytearray, log: list[str]) -> str:
    where = next((i for i, (x, y) in enumerate(zip(got, model)) if x != y), min(len(got), len(model)))
    return (f"step {step} on {m.name}: size {len(got)} vs model {len(model)}, first difference at "
            f"{where} (block {where // BS}); last operations:\n" + "\n".join(log[-12:]))
