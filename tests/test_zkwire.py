"""dfs.zk.session.WireZk against a real ZooKeeper: the same answers and errors as kazoo
(tests/kazoo_bridge.py),
pipelining, watches, sessions across a server restart and an expiry, failing fast."""

import itertools
import os
import secrets
import socket
import struct
import time
from typing import Any

import pytest
import trio
from kazoo.protocol.serialization import Connect
from kazoo.protocol.states import WatchedEvent, ZnodeStat

from dfs.blocks.nodedir import NodeDirectory
from dfs.config import FsConfig
from dfs.errors import ZkUnavailable
from dfs.meta import Meta
from dfs.mkfs import mkfs
from dfs.paths import ROOT_INO, FsPaths
from dfs.tls import client_context
from dfs.zk import Txn, connect
from dfs.zk.session import WireZk
from tests.kazoo_bridge import Zk
from tools.local.zkserver import ZkEnsemble, free_port


@pytest.fixture
async def wire(zk_hosts):
    client = await WireZk.connect(zk_hosts)
    try:
        yield client
    finally:
        await client.close()


def normal(x: Any, root: str) -> Any:
    """A result with what differs between runs (zxids, times, root names) taken out."""
    if isinstance(x, ZnodeStat):
        return ("stat", x.version, x.cversion, x.dataLength, x.numChildren, x.ephemeralOwner != 0)
    if isinstance(x, BaseException):
        return type(x).__name__
    if isinstance(x, str):
        return x.replace(root, "ROOT") if root else x
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [normal(i, root) for i in x])
    return x


async def script(zk: Any, r: str) -> list[Any]:
    """Every call of the Zk surface, successes and errors; returns what each one gave."""
    trace: list[Any] = []

    async def step(call):
        try:
            trace.append(normal(await call, r))
        except Exception as e:
            trace.append(normal(e, r))

    await step(zk.create(r, b"", makepath=True))
    await step(zk.create(f"{r}/a", b"1"))
    await step(zk.create(f"{r}/a", b"again"))                        # NodeExists
    await step(zk.create(f"{r}/no/parent", b""))                     # NoNode
    await step(zk.get(f"{r}/a"))
    await step(zk.get(f"{r}/missing"))                               # NoNode
    await step(zk.exists(f"{r}/a"))
    await step(zk.exists(f"{r}/missing"))                            # None
    await step(zk.set(f"{r}/a", b"2"))
    await step(zk.set(f"{r}/a", b"3", version=0))                    # BadVersion
    await step(zk.set(f"{r}/a", b"3", version=1))
    await step(zk.set(f"{r}/missing", b""))                          # NoNode
    await step(zk.create(f"{r}/seq/", b"s", sequence=True, makepath=True))
    await step(zk.create(f"{r}/seq/n-", b"s", sequence=True))
    await step(zk.create(f"{r}/p/q/s", b"deep", makepath=True))
    await step(zk.create(f"{r}/e", b"eph", ephemeral=True))
    await step(zk.exists(f"{r}/e"))
    await step(zk.create(f"{r}/empty"))
    await step(zk.get(f"{r}/empty"))
    await step(zk.get_children(f"{r}/seq"))
    await step(zk.get_children(f"{r}/missing"))                      # NoNode
    await step(zk.delete(f"{r}/p"))                                  # NotEmpty
    await step(zk.delete(f"{r}/a", version=7))                       # BadVersion
    await step(zk.delete(f"{r}/a", version=2))
    await step(zk.delete(f"{r}/a"))                                  # NoNode
    await step(zk.ensure_path(f"{r}/x/y/z"))
    await step(zk.ensure_path(f"{r}/x/y/z"))
    await step(zk.exists(f"{r}/x/y/z"))
    await step(zk.read_many([("get", f"{r}/empty"), ("children", f"{r}/p"), ("get", f"{r}/gone"),
                             ("children", f"{r}/gone"), ("get", f"{r}/p/q/s")]))
    await step(zk.get_many([f"{r}/p/q/s", f"{r}/gone", f"{r}/e"], batch=2))
    await step(zk.children_many([f"{r}/p", f"{r}/gone", f"{r}/p/q"]))
    await step(zk.commit(Txn()))
    await step(zk.commit(Txn().create(f"{r}/t1", b"1").set(f"{r}/t1", b"2", 0).check(f"{r}/t1", 1)
                         .create(f"{r}/t2").delete(f"{r}/t2").create(f"{r}/te", b"", ephemeral=True)))
    # failing transactions apply nothing
    await step(zk.commit(Txn().create(f"{r}/t3", b"").check(f"{r}/t1", 0)))    # BadVersion
    await step(zk.commit(Txn().create(f"{r}/t4", b"").create(f"{r}/t1", b"")))  # NodeExists
    await step(zk.commit(Txn().set(f"{r}/t1", b"x").delete(f"{r}/p")))         # NotEmpty
    await step(zk.commit(Txn().delete(f"{r}/nothing")))                         # NoNode
    await step(zk.get_many([f"{r}/t1", f"{r}/t3", f"{r}/t4"]))
    await step(zk.delete_recursive(f"{r}/p"))
    await step(zk.delete_recursive(f"{r}/p"))
    await step(zk.exists(f"{r}/p"))
    trace.append(sorted(await zk.get_children(r)))
    return trace


@pytest.mark.parametrize("chroot", [False, True])
async def test_same_results_and_errors_as_zk(zk_hosts, fs_root, chroot):
    """The whole call surface, Zk and WireZk side by side, each in a root of its own."""
    traces = []
    for cls in (Zk, WireZk):
        root = f"{fs_root}/{cls.__name__}"
        if chroot:  # the chroot is the root; paths inside it start at /
            setup = await connect(zk_hosts)
            await setup.ensure_path(root)
            await setup.close()
            client, r = await cls.connect(zk_hosts + root), "/in"
        else:
            client, r = await cls.connect(zk_hosts), root
        try:
            traces.append(await script(client, r))
        finally:
            await client.close()
    zk_trace, wire_trace = traces
    assert wire_trace == zk_trace
    assert "NodeExistsError" in zk_trace and "BadVersionError" in zk_trace
    assert "NotEmptyError" in zk_trace and "NoNodeError" in zk_trace


async def test_chroot_paths(zk_hosts, fs_root, zk):
    await zk.ensure_path(fs_root)
    inner = await WireZk.connect(zk_hosts + fs_root)
    try:
        assert inner.chroot == fs_root
        assert await inner.create("/s-", b"", sequence=True) == "/s-0000000000"
        assert await inner.commit(Txn().create("/t", b"v")) == ["/t"]
        assert (await zk.get(f"{fs_root}/t"))[0] == b"v"
        assert await inner.get_many(["/t"]) == [await zk.get(f"{fs_root}/t")]
        assert await inner.exists("/") == await zk.exists(fs_root)
    finally:
        await inner.close()


async def test_commit_rolls_back(wire, fs_root):
    await wire.create(f"{fs_root}/n", b"0", makepath=True)
    txn = Txn().set(f"{fs_root}/n", b"1").create(f"{fs_root}/new").check(f"{fs_root}/n", 5)
    with pytest.raises(Exception) as e:
        await wire.commit(txn)
    assert type(e.value).__name__ == "BadVersionError"
    data, stat = await wire.get(f"{fs_root}/n")
    assert (data, stat.version) == (b"0", 0)
    assert await wire.exists(f"{fs_root}/new") is None


async def test_read_many_in_batches(wire, fs_root):
    await wire.create(fs_root, b"", makepath=True)
    for i in range(0, 10, 2):
        await wire.create(f"{fs_root}/{i}", str(i).encode())
    got = await wire.read_many([("get", f"{fs_root}/{i}") for i in range(10)] + [("children", fs_root)],
                               batch=3)
    assert [g and g[0] for g in got[:10]] == [b"0", None, b"2", None, b"4", None, b"6", None, b"8", None]
    assert sorted(got[10]) == ["0", "2", "4", "6", "8"]
    assert await wire.children_many([f"{fs_root}/1", fs_root]) == [None, got[10]]


async def test_pipelined_calls(wire, fs_root):
    """200 concurrent calls on one connection each get their own answer; writes
    apply in the order they were called (ZooKeeper's per-session FIFO)."""
    await wire.create(fs_root, b"", makepath=True)
    await wire.create(f"{fs_root}/order", b"")
    answers: dict[int, Any] = {}
    called = itertools.count()

    async def one(i: int) -> None:
        await wire.create(f"{fs_root}/{i}", f"v{i}".encode())
        k = next(called)
        stat = await wire.set(f"{fs_root}/order", str(k).encode())
        assert stat.version == k + 1, "writes reached the server out of call order"
        answers[i] = (await wire.get(f"{fs_root}/{i}"))[0]

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(200):
                nursery.start_soon(one, i)
    assert answers == {i: f"v{i}".encode() for i in range(200)}
    assert (await wire.get(f"{fs_root}/order"))[0] == b"199"
    assert len(await wire.get_children(fs_root)) == 201


async def test_a_cancelled_call_does_not_confuse_the_next(wire, fs_root):
    await wire.create(f"{fs_root}/c", b"c", makepath=True)
    with trio.move_on_after(0):
        await wire.get(f"{fs_root}/c")  # sent, then abandoned: its reply is dropped
    with trio.CancelScope() as scope:
        scope.cancel()
        await wire.set(f"{fs_root}/c", b"d")
    assert (await wire.get(f"{fs_root}/c"))[0] in (b"c", b"d")
    assert await wire.exists(f"{fs_root}/nothing") is None
    assert (await wire.get(f"{fs_root}/c"))[1].version in (0, 1)


async def test_watches_fire(wire, fs_root):
    await wire.create(f"{fs_root}/w", b"", makepath=True)
    token = trio.lowlevel.current_trio_token()
    events: list[WatchedEvent] = []
    fired = trio.Event()

    def on_event(event: WatchedEvent) -> None:  # like dfs.blocks.nodedir: hand off to trio
        events.append(event)
        token.run_sync_soon(fired.set)

    async def next_event() -> WatchedEvent:
        nonlocal fired
        with trio.fail_after(5):
            await fired.wait()
        fired = trio.Event()
        return events.pop(0)

    await wire.get(f"{fs_root}/w", on_event)
    await wire.set(f"{fs_root}/w", b"1")
    assert await next_event() == WatchedEvent("CHANGED", "CONNECTED", f"{fs_root}/w")
    await wire.set(f"{fs_root}/w", b"2")  # watches are one-shot

    assert await wire.get_children(fs_root, on_event) == ["w"]
    await wire.create(f"{fs_root}/w2", b"")
    assert await next_event() == WatchedEvent("CHILD", "CONNECTED", fs_root)

    await wire.get(f"{fs_root}/w2", on_event)
    await wire.delete(f"{fs_root}/w2")
    assert await next_event() == WatchedEvent("DELETED", "CONNECTED", f"{fs_root}/w2")
    await trio.sleep(0.2)
    assert events == []


async def test_nodedir_watch_and_meta_run_on_wirezk(wire, fs_root):
    """The callers as they are: dfs.blocks.nodedir's child watch and dfs.meta's calls."""
    paths = FsPaths(fs_root)
    await mkfs(wire, paths, FsConfig(block_size=1 << 20))
    nodedir = NodeDirectory(wire, paths)
    await nodedir.refresh(watch=True)
    await wire.create(paths.live_node("n1"), b"not a record")
    with trio.fail_after(5):
        await nodedir._changed.wait()

    meta = Meta(wire, paths, FsConfig(block_size=1 << 20))
    made = await meta.mkdir(ROOT_INO, b"d", 0o755, uid=1, gid=1)
    await meta.create(made.ino, b"f", 0o644, uid=1, gid=1)
    assert (await meta.lookup(ROOT_INO, b"d")).ino == made.ino
    assert [n for n, _, _ in await meta.readdir(made.ino)][-1] == b"f"


async def test_ephemeral_gone_after_close(zk_hosts, fs_root, zk):
    client = await WireZk.connect(zk_hosts)
    await client.create(f"{fs_root}/eph", b"", ephemeral=True, makepath=True)
    stat = await zk.exists(f"{fs_root}/eph")
    assert stat.ephemeralOwner == client.session_id
    await client.close()
    assert await zk.exists(f"{fs_root}/eph") is None
    assert not client.connected
    t = time.monotonic()
    with pytest.raises(ZkUnavailable):
        await client.get(f"{fs_root}")
    assert time.monotonic() - t < 1


async def test_unreachable_host_fails_within_timeout():
    t = time.monotonic()
    with pytest.raises(ZkUnavailable, match="cannot reach ZooKeeper"):
        await WireZk.connect(f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}", timeout=1.0)
    assert 0.9 < time.monotonic() - t < 2.5


async def test_session_survives_a_server_restart(tmp_path):
    with ZkEnsemble(tmp_path / "zk", servers=1) as ens:
        # 30 s: the restored session must outlive a restart on a loaded machine (CI has seen
        # 10 s expire); the outage itself is ~1 s plus the JVM's start
        client = await WireZk.connect(ens.hosts, session_timeout=30.0, op_timeout=60.0)
        try:
            states: list[str] = []
            client.add_listener(states.append)
            timeline: list[tuple[float, str]] = []
            t0 = time.monotonic()
            client.add_listener(lambda st: timeline.append((time.monotonic() - t0, st)))
            session = client.session_id
            await client.create("/eph", b"", ephemeral=True)
            await client.create("/loop", b"")
            watched: list[WatchedEvent] = []
            await client.get_children("/", watched.append)
            done = 0

            async def writes() -> None:
                nonlocal done
                for i in range(200):
                    await client.set("/loop", str(i).encode())
                    done += 1
                    await trio.sleep(0.01)

            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(writes)
                    await trio.sleep(0.3)
                    await trio.to_thread.run_sync(ens.stop_server, 0)
                    timeline.append((time.monotonic() - t0, "server stopped"))
                    await trio.sleep(1.0)
                    assert not client.connected
                    await trio.to_thread.run_sync(ens.start_server, 0)
                    timeline.append((time.monotonic() - t0, "server serving"))
            assert done == 200
            assert client.session_id == session, (
                f"session {session:x} became {client.session_id:x}; timeline {timeline}\n"
                + ens.log_tail(lines=60))
            assert states[:2] == ["SUSPENDED", "CONNECTED"] and "LOST" not in states
            assert (await client.get("/loop"))[0] == b"199"
            assert (await client.exists("/eph")).ephemeralOwner == session
            # the server forgets a connection's watches: kazoo fires them with NONE
            assert watched == [WatchedEvent("NONE", "CONNECTING", None)]
        finally:
            await client.close()


async def test_idle_session_is_kept_alive_by_pings(zk_hosts, fs_root, zk):
    """Idle for 2.5 session timeouts; also connects through a name (localhost)."""
    client = await WireZk.connect(zk_hosts.replace("127.0.0.1", "localhost"), session_timeout=1.5)
    try:
        states: list[str] = []
        client.add_listener(states.append)
        session = client.session_id
        await client.create(f"{fs_root}/eph", b"", ephemeral=True, makepath=True)
        await trio.sleep(4.0)
        assert states == [] and client.session_id == session
        assert (await zk.exists(f"{fs_root}/eph")).ephemeralOwner == session
    finally:
        await client.close()


async def test_expired_session_is_replaced(zk_hosts, fs_root, zk):
    client = await WireZk.connect(zk_hosts, session_timeout=4.0)
    try:
        states: list[str] = []
        client.add_listener(states.append)
        old = client.session_id
        await client.create(f"{fs_root}/eph", b"", ephemeral=True, makepath=True)

        def close_session() -> None:
            """Another connection takes the session over and closes it (one write: a
            Connect with our id and password, then Close); retried until we see LOST."""
            host, port = zk_hosts.split(",")[0].split(":")
            connect = Connect(0, 0, 4000, *client.client_id, False).serialize()
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(struct.pack("!i", len(connect)) + connect + struct.pack("!iii", 8, 1, -11))
                    while s.recv(4096):
                        pass
            except OSError:
                pass

        with trio.fail_after(30):
            while "LOST" not in states:
                await trio.to_thread.run_sync(close_session)
                await trio.sleep(0.5)
            await client.wait_connected(time.monotonic() + 10)
        assert states[states.index("LOST") + 1] == "CONNECTED"
        assert client.session_id not in (None, old)
        assert await zk.exists(f"{fs_root}/eph") is None
        await client.create(f"{fs_root}/eph", b"", ephemeral=True)
        assert (await zk.exists(f"{fs_root}/eph")).ephemeralOwner == client.session_id
    finally:
        await client.close()


async def test_over_tls_only_a_client_of_the_cluster_ca_gets_through(tmp_path):
    """A ZooKeeper with the cluster key's TLS (secureClientPort only, a certificate of
    the CA that dfs.tls derives from the key): WireZk works over it as over plain TCP,
    big values and pipelined calls included, and survives a server restart; without
    TLS, or with another key's CA, nothing gets through."""
    key = secrets.token_bytes(32)
    with ZkEnsemble(tmp_path / "zk", servers=1, tls_key=key) as ens:
        assert ens.hosts.startswith("tls:")
        with pytest.raises(ZkUnavailable):  # a "tls:" hosts string without a context
            await WireZk.connect(ens.hosts, timeout=2)
        with pytest.raises(ZkUnavailable):  # plain TCP to the secure port
            await WireZk.connect(ens.hosts[len("tls:"):], timeout=3)
        with pytest.raises(ZkUnavailable):  # a certificate of another CA is refused
            await WireZk.connect(ens.hosts, timeout=3, tls=client_context(secrets.token_bytes(32)))
        client = await WireZk.connect(ens.hosts, session_timeout=30.0, tls=client_context(key))
        try:
            big = os.urandom(900_000)  # several TLS records, partial sends and reads
            await client.create("/big", big)
            assert (await client.get("/big"))[0] == big
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(client.create, f"/n{i}", str(i).encode())
            got = await client.get_many([f"/n{i}" for i in range(200)])
            assert [g[0] for g in got] == [str(i).encode() for i in range(200)]
            session = client.session_id
            await trio.to_thread.run_sync(ens.stop_server, 0)
            await trio.to_thread.run_sync(ens.start_server, 0)
            with trio.fail_after(60):
                await client.set("/n0", b"after")
            assert client.session_id == session
            assert (await client.get("/n0"))[0] == b"after"
        finally:
            await client.close()
