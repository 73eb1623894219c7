"""`dfs bench --tree [DIR]`: what a user does first with a filesystem, timed.

A generated tree (`--tree-files` files from 0 B to 1 MiB, log-uniform sizes, in
nested directories, with varied modes and times, from a fixed seed) is made once
on the local disk (`--scratch`), with a tar archive of it and a git repository of
`--commits` commits. Then, on DIR: `tar -x` of the archive, `cp -a` and
`rsync -a` of the tree, `ls -lR` of the extracted copy (caches dropped when root),
`rm -rf` of it, and `git clone` of the repository over file:// (pack transfer and
checkout, as from a server). Each phase is the wall time of the real command; the
extracted copy is checked byte for byte and the clone with `git status` before
anything is removed, untimed, so a faster but wrong filesystem fails instead of
winning. tools/treecompare.sh runs it on dfs, MooseFS and the local disk in one sitting.
"""

import hashlib
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from dfs.errors import DfsError
from tools.common import drop_caches

SEED = 11
MAX_SIZE = 1 << 20
FANOUT = 8  # files per directory before a new one, directories up to DEPTH deep
DEPTH = 4


def make_tree(root: Path, files: int) -> int:
    """The tree of `files` files under root; its total bytes."""
    rng = random.Random(SEED)
    blob = rng.randbytes(MAX_SIZE)
    total = 0
    for i in range(files):
        parts = [f"d{(i // FANOUT ** (k + 1)) % FANOUT}" for k in range(rng.randrange(DEPTH + 1))]
        d = root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        size = 0 if rng.random() < 0.05 else int(2 ** rng.uniform(0, 20))
        p = d / f"file-{i:05d}{rng.choice(['.c', '.h', '.py', '.txt', ''])}"
        start = rng.randrange(MAX_SIZE - size + 1)
        p.write_bytes(blob[start:start + size])
        os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o640]))
        t = 1_500_000_000 + rng.randrange(200_000_000)
        os.utime(p, (t, t))
        total += size
    return total


def make_repo(repo: Path, commits: int) -> None:
    """A git repository of `commits` commits over 200 files, by git fast-import (seconds)."""
    rng = random.Random(SEED)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    lines = []
    for c in range(commits):
        path = f"src/m{rng.randrange(20)}/f{rng.randrange(200)}.txt"
        data = f"commit {c}\n".encode() + rng.randbytes(rng.randrange(64, 4096)).hex().encode()
        msg = f"change {c}".encode()
        lines += [b"commit refs/heads/main", f"mark :{c + 1}".encode(),
                  f"committer bench <b@example.com> {1_600_000_000 + c} +0000".encode(),
                  f"data {len(msg)}".encode(), msg]
        if c:
            lines.append(f"from :{c}".encode())
        lines += [f"M 100644 inline {path}".encode(), f"data {len(data)}".encode(), data, b""]
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=b"\n".join(lines) + b"\n", check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)


def digest(root: Path) -> dict[str, tuple[int, str]]:
    """relative path -> (mode, sha256) of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = Path(d) / n
            out[str(p.relative_to(root))] = (os.stat(p).st_mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def sh(*cmd: str, cwd: Path | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run(directory: Path, scratch: Path, files: int, commits: int) -> list[tuple[str, float, int, int]]:
    """(phase, seconds, files, bytes) per phase."""
    src, repo, archive = scratch / "tree", scratch / "repo", scratch / "tree.tar"
    stamp = scratch / f"made-{files}-{commits}"
    if not stamp.exists():
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        make_tree(src, files)
        subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "."], check=True)
        make_repo(repo, commits)
        stamp.touch()
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    work = directory / f".dfs-tree-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    rows = []
    try:
        (work / "x").mkdir()
        rows.append(("tar -x", sh("tar", "-xf", str(archive), "-C", str(work / "x")), files, size))
        if digest(work / "x") != digest(src):
            raise DfsError(f"the tree extracted into {work / 'x'} differs from {src}")
        rows.append(("cp -a", sh("cp", "-a", str(src), str(work / "cp")), files, size))
        rows.append(("rsync -a", sh("rsync", "-a", f"{src}/", str(work / "rsync")), files, size))
        drop_caches()
        rows.append(("ls -lR", sh("ls", "-lR", str(work / "x")), files, 0))
        rows.append(("rm -rf", sh("rm", "-rf", str(work / "x")), files, 0))
        rows.append(("git clone", sh("git", "clone", "-q", f"file://{repo}", str(work / "git")), commits, 0))
        if subprocess.run(["git", "-C", str(work / "git"), "status", "--porcelain"],
                          capture_output=True, text=True, check=True).stdout:
            raise DfsError(f"the clone in {work / 'git'} does not match its commit")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def main(args) -> int:
    directory = Path(args.dir)
    rows = run(directory, Path(args.scratch), args.tree_files, args.commits)
    if args.json:
        print(json.dumps({name: {"seconds": round(s, 3), "files": n, "bytes": b} for name, s, n, b in rows}))
        return 0
    print(f"dfs bench --tree on {directory}: {args.tree_files} files up to 1 MiB, "
          f"git clone of {args.commits} commits")
    print(f"{'PHASE':<10} {'SECONDS':>8} {'PER SECOND':>14} {'MiB/s':>8}")
    for name, s, n, b in rows:
        unit = "commits/s" if name == "git clone" else "files/s"
        rate = f"{b / s / 2**20:8.1f}" if b else f"{'':>8}"
        print(f"{name:<10} {s:>8.2f} {n / s:>8.0f} {unit:<5} {rate}")
    return 0
