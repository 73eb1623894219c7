"""The nodes' ZooKeeper behaviours on WireZk sessions, in-process (no node processes):
registration re-creates the live znode after a session expiry, the election hands over
when the leader's session ends and a candidate whose session expired joins again, a leader
that is no longer fit to lead steps down and stands again behind the new one, and a join
whose create was applied twice does not block its own node."""

import time
from contextlib import asynccontextmanager

import trio

from dfs.config import FsConfig
from dfs.mkfs import mkfs
from dfs.paths import election_leader
from dfs.zk import connect
from nodes.leader.election import Election
from nodes.registration import Registration
from tests.nodeutil import close_session


async def expire(zk_hosts: str, client, timeout: float = 30.0) -> None:
    """End `client`'s session from outside; returns once it runs on a new session."""
    old = client.session_id
    with trio.fail_after(timeout):
        while client.session_id == old:
            await trio.to_thread.run_sync(close_session, zk_hosts, client.client_id)
            await trio.sleep(0.5)
        await client.wait_connected(time.monotonic() + 10)


async def until(check, timeout: float = 15.0):
    with trio.fail_after(timeout):
        while not (got := await check()):
            await trio.sleep(0.05)
    return got


async def test_registration_recreates_the_live_znode_after_a_session_expiry(zk, zk_hosts, fs_paths):
    await mkfs(zk, fs_paths, FsConfig())
    session = await connect(zk_hosts)
    try:
        # the timer never fires: only the reconnect (LOST, then CONNECTED) can bring it back
        reg = Registration(session, fs_paths, "n1", "127.0.0.1:1", "z", lambda: (100, 10, 90, 1, 0.0),
                           interval=3600)
        await reg.register()
        path = fs_paths.live_node("n1")
        old = session.session_id
        assert (await zk.exists(path)).ephemeralOwner == old
        async with trio.open_nursery() as nursery:
            await nursery.start(reg.run)
            await expire(zk_hosts, session)

            async def recreated():
                stat = await zk.exists(path)
                return stat is not None and stat.ephemeralOwner != old and stat

            stat = await until(recreated)
            assert stat.ephemeralOwner == session.session_id
            nursery.cancel_scope.cancel()
        await reg.unregister()
        assert await zk.exists(path) is None
    finally:
        await session.close()


@asynccontextmanager
async def a_leads_b_waits(zk_hosts, fs_paths, a_fit=lambda: True):
    """Elections "a" (standing while `a_fit()`) and "b" on sessions of their own; yields
    (a's session, a's election, b's election, the names in the order they led) once a
    leads and b waits behind it."""
    a, b = await connect(zk_hosts), await connect(zk_hosts)
    leading: list[str] = []

    def lead(name: str):
        async def run() -> None:
            leading.append(name)
            await trio.sleep_forever()
        return run

    try:
        ea, eb = Election(a, fs_paths, "a", poll=0.1), Election(b, fs_paths, "b", poll=0.1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ea.run, lead("a"), a_fit)

            async def a_leads():
                return ea.leading

            await until(a_leads)
            nursery.start_soon(eb.run, lead("b"))

            async def b_waits():
                return eb.znode is not None

            await until(b_waits)
            assert not eb.leading
            yield a, ea, eb, leading
            nursery.cancel_scope.cancel()
    finally:
        await a.close()
        await b.close()


async def test_election_hands_over_when_the_leaders_session_ends(zk, zk_hosts, fs_paths):
    async with a_leads_b_waits(zk_hosts, fs_paths) as (a, ea, eb, leading):
        old_znode = ea.znode
        await expire(zk_hosts, a)

        async def b_leads():
            return eb.leading and not ea.leading

        await until(b_leads)

        async def a_rejoined():  # with its new session, behind b
            return ea.znode not in (None, old_znode) and f".{a.session_id:x}-" in ea.znode

        await until(a_rejoined)
        assert not ea.leading
        assert election_leader(await zk.get_children(fs_paths.repair_election)) == "b"
        assert leading == ["a", "b"]


async def test_an_unfit_leader_steps_down_and_stands_again_behind_the_new_one(zk, zk_hosts, fs_paths):
    a_fit = True
    async with a_leads_b_waits(zk_hosts, fs_paths, lambda: a_fit) as (_a, ea, eb, leading):
        a_fit = False  # a reaches too few nodes (nodes/leader/reach.py)

        async def b_leads():
            return eb.leading and not ea.leading and ea.znode is None

        await until(b_leads)
        await trio.sleep(1)  # while unfit, a stays out of the election
        assert ea.znode is None
        assert election_leader(await zk.get_children(fs_paths.repair_election)) == "b"
        a_fit = True

        async def a_behind():
            return ea.znode is not None

        await until(a_behind)
        assert not ea.leading and eb.leading
        assert election_leader(await zk.get_children(fs_paths.repair_election)) == "b"
        assert leading == ["a", "b"]


async def test_election_join_applied_twice_does_not_block_its_node(zk, zk_hosts, fs_paths):
    session = await connect(zk_hosts)
    try:
        # A create retried after a connection loss may apply twice: the first copy
        # (lower sequence, same session) would stand in front of its own node.
        await session.ensure_path(fs_paths.repair_election)
        await session.create(fs_paths.election_prefix("n1", session.session_id), b"n1",
                             ephemeral=True, sequence=True)
        election = Election(session, fs_paths, "n1", poll=0.1)
        led = trio.Event()

        async def lead() -> None:
            led.set()
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(election.run, lead)
            with trio.fail_after(10):
                await led.wait()
            assert await zk.get_children(fs_paths.repair_election) == [election.znode]
            nursery.cancel_scope.cancel()
    finally:
        await session.close()
