"""The `dfs` console script: exit codes and error output (DESIGN.md section 7)."""

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dfs(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nobody listens once the socket is closed


def assert_one_line_error(result: subprocess.CompletedProcess) -> None:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and lines[0].startswith("dfs"), result.stderr


def test_unreachable_zookeeper_exits_2_quickly():
    t = time.monotonic()
    r = dfs("mkfs", "--zk", f"127.0.0.1:{closed_port()}", "--zk-timeout", "2", "--fs", "x", timeout=30)
    elapsed = time.monotonic() - t
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert_one_line_error(r)
    assert "ZooKeeper" in r.stderr
    assert elapsed < 25  # bounded by --zk-timeout, not by the default op timeout


def test_mkfs_twice_refuses_and_keeps_the_first(zk_hosts):
    fs = f"cli-{uuid.uuid4().hex[:8]}"
    first = dfs("mkfs", "--zk", zk_hosts, "--fs", fs, "--block-size", "1M", "--replicas", "2",
                "--min-replicas", "1")
    assert first.returncode == 0, first.stderr
    second = dfs("mkfs", "--zk", zk_hosts, "--fs", fs, "--block-size", "8M")
    assert second.returncode == 1, second.stderr
    assert_one_line_error(second)
    assert "exists" in second.stderr

    from kazoo.client import KazooClient

    from dfs.config import FsConfig
    from dfs.keys import load_key
    from dfs.paths import FsPaths, default_root
    from dfs.zk.session import digest_credential
    from tests.nodeutil import key_file_of

    client = KazooClient(hosts=zk_hosts,
                         auth_data=[("digest", digest_credential(load_key(key_file_of(fs))))])
    client.start(timeout=10)
    try:
        cfg = FsConfig.decode(client.get(FsPaths(default_root(fs)).config)[0])
    finally:
        client.stop()
        client.close()
    assert (cfg.block_size, cfg.replicas, cfg.min_replicas) == (1 << 20, 2, 1)


def test_bad_flag_exits_2():
    r = dfs("mkfs", "--no-such-flag")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "unrecognized arguments" in r.stderr


def test_bad_replication_is_a_usage_error(zk_hosts):
    fs = f"cli-{uuid.uuid4().hex[:8]}"
    r = dfs("mkfs", "--zk", zk_hosts, "--fs", fs, "--replicas", "1", "--min-replicas", "2")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert_one_line_error(r)
    assert "replicas" in r.stderr
    # and nothing was created: a correct mkfs of that name still works
    assert dfs("mkfs", "--zk", zk_hosts, "--fs", fs).returncode == 0


def test_every_zookeeper_client_fails_in_one_line(tmp_path):
    """Daemons and admin commands alike: exit 2, one line, when ZooKeeper is unreachable."""
    zk = f"127.0.0.1:{closed_port()}"
    (tmp_path / "mnt").mkdir()
    for argv in (["node", "--data", str(tmp_path / "data")], ["mount", str(tmp_path / "mnt")],
                 ["status"], ["fsck"], ["drain", "somenode"]):
        r = dfs(*argv, "--zk", zk, "--zk-timeout", "1", timeout=60)
        assert r.returncode == 2, (argv, r.returncode, r.stderr)
        assert_one_line_error(r)
