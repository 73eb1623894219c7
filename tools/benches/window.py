"""`dfs bench --window [--files N] [-w W]`: what a mount killed by SIGKILL loses of the
changes it had answered at once but not yet committed (README: Consistency).

For each kind of change a mount acknowledges before ZooKeeper has it (unlink,
chmod + utimens), on a mount of its own of the filesystem (a foreground `dfs
mount` on a temporary mountpoint): N files are made and fsynced, W loader
processes keep creating files on the same mount (the load), the change is
applied to all N as fast as one process can, and the mount is SIGKILLed the
moment the last call has returned. A fresh mount then counts the changes that
did not land. Reported per kind: lost of N, and the window that stands for
(lost times the mean time per call). Needs ZooKeeper and the key as `dfs mount`
finds them (the local cluster of `dfs up` by default).
"""

import argparse
import json
import multiprocessing
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
MODE, TIMES = 0o604, (1_000_000_000, 1_100_000_000)  # what the attribute run sets


def mount(zk: str | None, fs: str, mp: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tools.cli", "mount", "--foreground", "--fs", fs, str(mp)]
    if zk:
        cmd[4:4] = ["--zk", zk]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log.open("ab"))
    deadline = time.monotonic() + 60
    while not os.path.ismount(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc, mp)
            raise RuntimeError(f"dfs mount on {mp} did not come up (see {log})")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen, mp: Path, kill: bool = False) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if os.path.ismount(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], stderr=subprocess.DEVNULL)


def load(d: str, stop_at: float) -> None:
    """A loader: small files, created and closed, until stop_at."""
    os.makedirs(d, exist_ok=True)
    i = 0
    while time.time() < stop_at:
        try:
            with open(f"{d}/l{i}", "wb") as f:
                f.write(b"x" * 100)
        except OSError:
            return  # the mount is gone
        i += 1


def one_kind(kind: str, n: int, writers: int, zk: str | None, fs: str, base: Path) -> dict:
    mp = base / "mnt"
    log = base / "mount.log"
    proc = mount(zk, fs, mp, log)
    loaders: list[multiprocessing.Process] = []
    try:
        work = mp / f".dfs-window-{kind}-{os.getpid()}"
        work.mkdir()
        names = [f"f{i:06d}" for i in range(n)]
        for name in names:
            (work / name).write_bytes(b"w")
        fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)  # all made and committed before the measured run
        os.close(fd)
        stop_at = time.time() + 600
        loaders = [multiprocessing.Process(target=load, args=(str(work / f"load{k}"), stop_at))
                   for k in range(writers)]
        for p in loaders:
            p.start()
        time.sleep(0.5)  # the load is running
        t = time.perf_counter()
        for name in names:
            if kind == "unlink":
                os.unlink(work / name)
            else:
                os.chmod(work / name, MODE)
                os.utime(work / name, TIMES)
        took = time.perf_counter() - t
        proc.kill()  # the moment the last call returned
        proc.wait()
    finally:
        for p in loaders:
            p.kill()
            p.join()
        stop(proc, mp, kill=True)
    proc = mount(zk, fs, mp, log)
    try:
        if kind == "unlink":
            lost = sum((work / name).exists() for name in names)
        else:
            lost = 0
            for name in names:
                st = (work / name).stat()
                lost += (stat.S_IMODE(st.st_mode), int(st.st_mtime)) != (MODE, TIMES[1])
        shutil.rmtree(work, ignore_errors=True)
    finally:
        stop(proc, mp)
    return {"kind": kind, "files": n, "writers": writers, "lost": lost,
            "ms_per_call": round(took / n * 1000, 3), "window_ms": round(lost * took / n * 1000, 1)}


def main(args: argparse.Namespace) -> int:
    n = min(args.files, 2000)
    base = Path(tempfile.mkdtemp(prefix="dfs-window."))
    (base / "mnt").mkdir()
    try:
        rows = [one_kind(kind, n, args.writers, args.zk, args.fs, base) for kind in ("unlink", "chmod+utime")]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"dfs bench --window: {n} changes each, {args.writers} loader processes, then SIGKILL of the mount")
    print(f"{'CHANGE':<12} {'LOST':>6} {'OF':>6} {'MS/CALL':>8} {'WINDOW':>10}")
    for r in rows:
        print(f"{r['kind']:<12} {r['lost']:>6} {r['files']:>6} {r['ms_per_call']:>8.3f} {r['window_ms']:>7.1f} ms")
    return 0
