"""Admission control: creates fail with ENOSPC before ZooKeeper's heap can run out.

ZooKeeper keeps every znode in its heap and dies (OutOfMemoryError) when it is
full; after that it cannot even load its snapshot again in the same heap. So
the namespace must stop growing well before. Three parts:

- The measure: ZooKeeper's `mntr` four-letter command reports `zk_znode_count`
  and `zk_approximate_data_size` (cheap counters the server keeps). The heap
  they cost was measured with the Debian ZooKeeper 3.8 (live heap after a full
  GC, README "Capacity"): about PER_ZNODE bytes per znode besides its data,
  plus DATA_FACTOR per data byte. mntr does not report the JVM's heap, so the
  heap comes from the filesystem's settings (`FsConfig.zk_heap`, set by
  `dfs up` from the heap it gives ZooKeeper, or by `dfs mkfs --zk-heap`).
- The decision, by the repair leader (one per filesystem; `run_checks`):
  creates stop when the estimate reaches FILL of the heap above BASE (the
  rest is for the server's own work: requests, sessions, big listings, the
  last 500 committed transactions it keeps in memory, G1's free regions, and
  loading the snapshot at a restart) and resume below
  RESUME of that. It publishes the result in the `capacity` znode (at once
  when it changes much, else at most every 10 s), checking more often the
  closer it gets (every 10 s when far, every 0.5 s near).
- The enforcement, by every mount (`Gate`): a data watch keeps the published
  state in memory, so a create costs no extra round trip. When full, create,
  mknod, mkdir, symlink, link and setxattr fail with ENOSPC (logged once per
  change), and small files are written to blocks instead of inline.
  Removals, reads, writes and renames keep working: removing files is how
  the space comes back.
"""

import errno
import logging
import ssl
import time
from dataclasses import dataclass

import trio

from dfs.errors import DfsError, ZkUnavailable
from dfs.mkfs import load_config
from dfs.paths import FsPaths
from dfs.records import Record
from dfs.zk import NoNodeError, ZkClient

log = logging.getLogger(__name__)

PER_ZNODE = 300  # heap bytes of a znode besides its data (DataNode, stat, path, maps)
DATA_FACTOR = 1.05  # heap bytes per byte of znode data
BASE = 16 << 20  # the server's own heap after start (measured ~10 MiB), not for data
FILL = 0.6  # of the heap above BASE the namespace may fill
RESUME = 0.95  # of the limit: creates resume below it
FAR, NEAR = 10.0, 0.5  # seconds between checks far from / near the limit
POLL = 10.0  # seconds between a mount's re-reads even without a watch event


@dataclass
class CapacityState(Record):
    """The `capacity` znode: what the repair leader last measured and decided."""

    full: bool = False  # creates are refused
    used: int = 0  # estimated heap bytes the znodes take
    limit: int = 0  # where creates stop
    znodes: int = 0
    data_bytes: int = 0
    zk_heap: int = 0  # the heap it was computed for
    checked: float = 0.0  # time.time() of the measure


def estimate(znodes: int, data_bytes: int) -> int:
    """Heap bytes that `znodes` znodes holding `data_bytes` of data take in ZooKeeper."""
    return znodes * PER_ZNODE + int(data_bytes * DATA_FACTOR)


def limit_for(zk_heap: int) -> int:
    """Estimated znode heap at which creates stop, for a server with `zk_heap` bytes of heap."""
    return int(max(zk_heap - BASE, 0) * FILL)


async def mntr(host: str, port: int, timeout: float = 3.0,
               tls: ssl.SSLContext | None = None) -> dict[str, str]:
    """ZooKeeper's `mntr` answer as a dict ({} when the server does not answer);
    over TLS to a secure client port (`tls`)."""
    chunks = []
    with trio.move_on_after(timeout):
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
            if tls is not None:
                stream = trio.SSLStream(stream, tls)
            async with stream:
                await stream.send_all(b"mntr")
                while data := await stream.receive_some(65536):
                    chunks.append(data)
        except (OSError, trio.BrokenResourceError):
            return {}
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


async def measure(hosts: list[tuple[str, int]], tls: ssl.SSLContext | None = None
                  ) -> tuple[int, int] | None:
    """(znodes, data bytes) of the fullest server that answers mntr; None if none does."""
    best = None
    for host, port in hosts:
        m = await mntr(host, port, tls=tls)
        try:
            got = (int(m["zk_znode_count"]), int(m["zk_approximate_data_size"]))
        except (KeyError, ValueError):
            continue
        best = got if best is None or got > best else best
    return best


def decide(was_full: bool, znodes: int, data_bytes: int, zk_heap: int) -> CapacityState:
    used, limit = estimate(znodes, data_bytes), limit_for(zk_heap)
    full = used >= limit or (was_full and used >= limit * RESUME)
    return CapacityState(full=full, used=used, limit=limit, znodes=znodes, data_bytes=data_bytes,
                         zk_heap=zk_heap, checked=time.time())


def next_check(state: CapacityState) -> float:
    """Seconds to the next check: the less headroom, the sooner (see the module)."""
    if not state.limit:
        return NEAR
    headroom = 1 - state.used / state.limit
    return min(FAR, max(NEAR, headroom * 2 * FAR))


async def read_state(zk: ZkClient, paths: FsPaths, watch=None) -> CapacityState:
    """The published state (not full if nothing was published yet)."""
    try:
        data, _ = await zk.get(paths.capacity, watch)
    except NoNodeError:
        return CapacityState()
    return CapacityState.decode(data) if data else CapacityState()


async def publish(zk: ZkClient, paths: FsPaths, state: CapacityState) -> None:
    try:
        await zk.set(paths.capacity, state.encode())
    except NoNodeError:  # a filesystem made before admission control
        await zk.create(paths.capacity, state.encode())


async def run_checks(zk: ZkClient, paths: FsPaths) -> None:
    """The repair leader's loop (cancel to stop): measure, decide, publish on change."""
    last: CapacityState | None = None
    silent = False
    while True:
        try:
            if last is None:
                last = await read_state(zk, paths)
            config = await load_config(zk, paths)  # zk_heap may change (`dfs up --zk-heap`)
            got = await measure(zk.hosts, zk.tls)
            if got is None:
                if not silent:
                    log.warning("capacity: no ZooKeeper server answers 'mntr' (add it to "
                                "4lw.commands.whitelist): creates are not admission-controlled")
                    silent = True
                await trio.sleep(FAR)
                continue
            silent = False
            state = decide(last.full, *got, config.zk_heap)
            if (state.full != last.full or state.limit != last.limit
                    or abs(state.used - last.used) >= state.limit / 100
                    or (state.used != last.used and state.checked - last.checked >= FAR)):
                if state.full != last.full:
                    log.warning("capacity: metadata %s: ZooKeeper holds ~%d MiB of znodes (%d "
                                "znodes), limit %d MiB for a %d MiB heap",
                                "FULL, creates refused" if state.full
                                else "below the limit again, creates resume", state.used >> 20,
                                state.znodes, state.limit >> 20, config.zk_heap >> 20)
                await publish(zk, paths, state)
                last = state
        except DfsError as e:  # ZooKeeper out of reach: try again (the mounts keep the last verdict)
            log.warning("capacity: %s", e)
            await trio.sleep(FAR)
            continue
        await trio.sleep(next_check(state))


class Gate:
    """A mount's view of the published state; `admit()` before anything that adds znodes.

    Args: zk, paths: the filesystem. `run()` keeps it current (a data watch, and
    a re-read every POLL seconds in case a watch was lost with a connection).
    """

    def __init__(self, zk: ZkClient, paths: FsPaths):
        self.zk = zk
        self.paths = paths
        self.state = CapacityState()
        self._changed = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def full(self) -> bool:
        return self.state.full

    def admit(self) -> None:
        """Raises DfsError(ENOSPC) while the metadata service is full."""
        if self.state.full:
            raise DfsError(errno.ENOSPC, "metadata full (ZooKeeper's heap): remove files, "
                                         "or give ZooKeeper more heap (README: Capacity)")

    def _fire(self, _event: object) -> None:  # the watch (one bound method: registered once)
        try:
            self._token.run_sync_soon(self._changed.set)  # type: ignore[union-attr]
        except trio.RunFinishedError:
            pass

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        while True:
            self._changed = trio.Event()
            try:
                state = await read_state(self.zk, self.paths, self._fire)
            except (ZkUnavailable, ValueError, TypeError) as e:
                log.info("capacity: cannot read the published state (%s); keeping the last", e)
            else:
                if state.full != self.state.full:
                    if state.full:
                        log.warning("metadata full: ZooKeeper holds ~%d MiB of znodes of %d MiB "
                                    "allowed; creates fail with ENOSPC", state.used >> 20,
                                    state.limit >> 20)
                    else:
                        log.warning("metadata below its limit again: creates resume")
                self.state = state
            with trio.move_on_after(POLL):
                await self._changed.wait()
