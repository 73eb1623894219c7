"""Shared fixtures: one real ZooKeeper per test session, a fresh filesystem root per test.

Daemons started by tests are stopped by PID in `finally`; mounts are unmounted
(lazily if needed). A failing test prints the logs of what it started. A
SIGTERM to pytest unwinds through the same teardown (`_terminated`).
"""

import os
import signal
import threading
import uuid
from pathlib import Path

import pytest

from tools.local.zkserver import ZkEnsemble


def _terminated(signum, frame):
    """SIGTERM (`timeout`, a CI job cancelled) unwinds like Ctrl-C: pytest then tears
    the fixtures down, which stop by PID the ZooKeeper, nodes and mounts they
    started. Once: a second SIGTERM must not cut that cleanup short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dfs-session")


@pytest.fixture(scope="session", autouse=True)
def key_files(session_dir):
    """Key files (dfs/keys.py) of the tests' filesystems go to the session's own
    $XDG_CONFIG_HOME, where every daemon and command started by a test finds them."""
    os.environ["XDG_CONFIG_HOME"] = str(session_dir / "config")


@pytest.fixture(scope="session")
def zk_server(session_dir):
    """A standalone ZooKeeper shared by the whole session."""
    ens = ZkEnsemble(session_dir / "zk", servers=1)
    ens.start()
    try:
        yield ens
    finally:
        ens.stop()


@pytest.fixture
def zk_hosts(zk_server) -> str:
    return zk_server.hosts


@pytest.fixture
def fs_root() -> str:
    """A filesystem root of its own for each test (cleanup is unnecessary: roots are unique)."""
    return f"/dfs/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fs_paths(fs_root):
    from dfs.paths import FsPaths

    return FsPaths(fs_root)


@pytest.fixture
async def zk(zk_hosts):
    from dfs.zk import connect

    client = await connect(zk_hosts)
    try:
        yield client
    finally:
        await client.close()


def pytest_collection_modifyitems(config, items):
    """The slow tests first: the suite runs on two pytest-xdist workers (tools/dfs.sh), and a long
    test that starts last would run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_report_header(config):
    return [f"dfs tests: pid {os.getpid()}, CI={os.environ.get('CI', '')}"]


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _failed(request) -> bool:
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def cluster_factory(zk_server, tmp_path, request):
    """Make clusters (nodes + mounts on the session ZooKeeper); all stopped at the end."""
    from tests.harness import Cluster

    made = []

    def make(config=None, nodes: int = 3, mkfs: bool = True):
        c = Cluster(zk_server.hosts, tmp_path / f"c{len(made)}", config)
        (tmp_path / f"c{len(made)}").mkdir()
        made.append(c)
        if mkfs:
            c.mkfs()
        for _ in range(nodes):
            c.add_node()
        return c

    try:
        yield make
    finally:
        for c in made:
            if _failed(request):
                print(f"\n==== logs of cluster {c.fsname} ====\n{c.logs()}")
            c.close()


@pytest.fixture
def cluster(cluster_factory):
    """3 storage nodes, 1 MiB blocks, replicas 3 (min 2), mounted at cluster.mounts[0]."""
    c = cluster_factory()
    c.mount()
    return c
