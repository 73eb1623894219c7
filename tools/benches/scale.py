"""`dfs bench --scale N [-w W] [DIR]`: what millions of files cost the metadata service.

W writer processes create N empty files (N/W each, one directory per writer)
under DIR (default: the mount of `dfs up`), then it reports: files/s; ZooKeeper's
live heap (after a full GC, by jcmd) and znodes before and after, as bytes and
znodes per file; the newest snapshot's size; how long ZooKeeper takes to
restart with this namespace (stopped and started again on the same ports,
as after a crash); `ls -f` and `ls -l` of the largest directory afterwards;
and `dfs fsck`'s time and verdict. Heap, snapshot and restart need the local
cluster of `dfs up` (its .dfs/cluster.json); on another mount they read "n/a".
The files stay (to grow the namespace in steps): remove DIR/.dfs-scale-* to clean up.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from dfs.keys import zk_tls
from dfs.zk.tls import split_tls
from tools.common import STATE_DIR, human, local_zk
from tools.local.cluster import restart_zk
from tools.local.zkserver import four_letter, heap_used

EXTRAPOLATE = (10_000_000, 100_000_000)


def write(job: tuple[str, int]) -> tuple[int, str]:
    """Create `n` empty files in directory d; (files made, error or '')."""
    d, n = job
    for i in range(n):
        try:
            os.close(os.open(f"{d}/f{i:08d}", os.O_CREAT | os.O_WRONLY, 0o644))
        except OSError as e:
            return i, f"{e.strerror} after {i} files"
    return n, ""


def zk_figures(cluster: dict, state: Path) -> dict:
    """Heap (bytes, live after GC), znode count and data size of the first server
    (over TLS when `dfs up --tls` put ZooKeeper behind it: the CA from the key)."""
    host, port = split_tls(cluster["zk"])[1].split(",")[0].rsplit(":", 1)
    ctx = zk_tls(cluster["zk"], state / f"{cluster['fs']}.key")
    m = dict(line.split("\t", 1) for line in four_letter(host, int(port), "mntr", 10, tls=ctx).splitlines()
             if "\t" in line)
    pids = cluster.get("zk_pids") or []
    return {"heap": heap_used(pids[0]) if pids else None,
            "znodes": int(m.get("zk_znode_count", 0)), "data": int(m.get("zk_approximate_data_size", 0))}


def newest_snapshot(state: Path) -> int | None:
    snaps = sorted((state / "zk" / "zk1" / "data" / "version-2").glob("snapshot.*"),
                   key=lambda p: p.stat().st_mtime)
    return snaps[-1].stat().st_size if snaps else None


def timed_run(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return time.perf_counter() - t, r


def run(directory: Path, n: int, writers: int, zk: str | None, fs: str) -> dict:
    state = Path(STATE_DIR).absolute()
    try:
        cluster = json.loads((state / "cluster.json").read_text())
    except (OSError, ValueError):
        cluster = {}
    local = bool(cluster) and Path(cluster.get("mount", {}).get("mountpoint", "")) == directory.absolute()
    zk = zk or local_zk()
    out: dict = {"files": n, "writers": writers, "directory": str(directory)}
    before = zk_figures(cluster, state) if local else None

    work = directory / f".dfs-scale-{uuid.uuid4().hex[:8]}"
    dirs = [work / f"w{k}" for k in range(writers)]
    for d in dirs:
        d.mkdir(parents=True)
    jobs = [(str(d), n // writers + (k < n % writers)) for k, d in enumerate(dirs)]
    t = time.perf_counter()
    with multiprocessing.Pool(writers) as pool:
        done = pool.map(write, jobs)
    el = time.perf_counter() - t
    made = sum(m for m, _ in done)
    out.update(created=made, seconds=round(el, 1), files_per_second=round(made / el, 1),
               errors=sorted({e for _, e in done if e}), work=str(work))

    if local and before is not None:
        after = zk_figures(cluster, state)
        out["zk"] = {"before": before, "after": after}
        if before["heap"] and after["heap"] and made:
            per = (after["heap"] - before["heap"]) / made
            out["heap_per_file"] = round(per)
            out["extrapolated_heap"] = {str(k): round(after["heap"] + per * (k - made)) for k in EXTRAPOLATE}
        if made:
            out["znodes_per_file"] = round((after["znodes"] - before["znodes"]) / made, 2)
            out["data_bytes_per_file"] = round((after["data"] - before["data"]) / made)
        out["zk_restart_seconds"] = round(restart_zk(state), 2)
        out["snapshot_bytes"] = newest_snapshot(state)  # (a starting server writes one)
        os.listdir(work)  # the mount is back on the restarted server

    largest = max(dirs, key=lambda d: dict(jobs)[str(d)])
    for flag in ("-f", "-l"):
        el, _ = timed_run(["ls", flag, str(largest)])
        out[f"ls{flag}_seconds"] = round(el, 2)
    if zk:
        key = ["--key-file", str(state / f"{fs}.key")] if local else []  # (--zk alone means another machine's)
        el, r = timed_run([sys.executable, "-m", "tools.cli", "fsck", "--zk", zk, "--fs", fs, "--json", *key])
        try:
            status = json.loads(r.stdout).get("status")
        except ValueError:
            status = r.stderr.strip() or f"exit {r.returncode}"
        out.update(fsck_seconds=round(el, 1), fsck_status=status)
    return out


def render(o: dict) -> str:
    lines = [f"dfs bench --scale {o['files']}: {o['writers']} writers on {o['directory']}",
             f"  created            {o['created']} empty files in {o['seconds']} s: "
             f"{o['files_per_second']} files/s" + (f"  (stopped: {'; '.join(o['errors'])})" if o["errors"] else "")]
    z = o.get("zk")
    if z:
        b, a = z["before"], z["after"]
        heap = f"{human(b['heap'])} -> {human(a['heap'])}" if b["heap"] and a["heap"] else "n/a (jcmd)"
        lines.append(f"  ZooKeeper heap     {heap} live after GC; znodes {b['znodes']} -> {a['znodes']}")
        if "heap_per_file" in o:
            lines.append(f"  per file           {o['heap_per_file']} B of heap, {o['znodes_per_file']} "
                         f"znodes, {o['data_bytes_per_file']} B of znode data")
            lines.append("  extrapolated heap  " + ", ".join(
                f"{int(k) // 1_000_000}M files: {human(v)}" for k, v in o["extrapolated_heap"].items()))
        snap = o.get("snapshot_bytes")
        lines.append(f"  snapshot           {human(snap) if snap else 'none yet'}")
        lines.append(f"  ZooKeeper restart  {o['zk_restart_seconds']} s until it serves")
    else:
        lines.append("  ZooKeeper heap, snapshot, restart: n/a (not the mount of 'dfs up')")
    lines.append(f"  ls -f / ls -l      {o['ls-f_seconds']} s / {o['ls-l_seconds']} s "
                 f"(largest directory, {o['created'] // o['writers']} entries)")
    if "fsck_seconds" in o:
        lines.append(f"  fsck               {o['fsck_seconds']} s: {o['fsck_status']}")
    lines.append(f"  files kept in      {o['work']}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    o = run(Path(args.dir), args.scale, args.writers, args.zk, args.fs)
    print(json.dumps(o) if args.json else render(o))
    return 1 if o["errors"] or o.get("fsck_status") not in (None, "HEALTHY") else 0
