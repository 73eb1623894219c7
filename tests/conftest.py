"""Shared fixtures: one real ZooKeeper per test session, a fresh filesystem root per test.

Daemons started by tests are stopped by PID in `finally`; mounts are unmounted
(lazily if needed). A failing test prints the logs of what it started.
"""

import os
import uuid
from pathlib import Path

import pytest

from tools.zkserver import ZkEnsemble


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dfs-session")


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
    from dfs.zk import Zk

    client = await Zk.connect(zk_hosts)
    try:
        yield client
    finally:
        await client.close()


def pytest_report_header(config):
    return [f"dfs tests: pid {os.getpid()}, CI={os.environ.get('CI', '')}"]
