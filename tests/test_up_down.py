"""`dfs up` / `dfs down`: the README's main command, as a user runs it."""

import json
import os
import re
import subprocess
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.harness import stop_what_up_left
from tools.local.mountproc import is_mounted
from tools.local.procs import pid_alive


def dfs(*args, cwd):
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


def test_up_reuse_down_up_keeps_data(tmp_path):
    state = tmp_path / "state"
    mnt = tmp_path / "mnt"
    up = ["up", "--state", str(state), "--mountpoint", str(mnt), "--nodes", "3"]
    try:
        r = dfs(*up, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert is_mounted(mnt)
        info = json.loads((state / "cluster.json").read_text())
        pids = [n["pid"] for n in info["nodes"]] + info["zk_pids"] + [info["mount"]["pid"]]
        assert all(pid_alive(p) for p in pids) and len(pids) == 5
        urls = re.findall(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", r.stderr)
        assert len(urls) == 4, r.stderr  # every node and the mount
        for url in urls:
            with urllib.request.urlopen(url, timeout=10) as page:
                assert any(f.name == "dfs_zk_round_trips"
                           for f in text_string_to_metric_families(page.read().decode()))
        (mnt / "kept").write_bytes(b"data that survives" * 1000)
        os.mkdir(mnt / "dir")

        r = dfs(*up, cwd=tmp_path)  # a second up reuses everything
        assert r.returncode == 0, r.stderr
        again = json.loads((state / "cluster.json").read_text())
        assert [n["pid"] for n in again["nodes"]] + again["zk_pids"] + [again["mount"]["pid"]] == pids

        r = dfs("down", "--state", str(state), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert not is_mounted(mnt)
        assert not any(pid_alive(p) for p in pids)

        r = dfs(*up, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert (mnt / "kept").read_bytes() == b"data that survives" * 1000
        assert (mnt / "dir").is_dir()
    finally:
        dfs("down", "--state", str(state), cwd=tmp_path)
        stop_what_up_left(state, mnt)
