"""The client side of the block protocol: write, read, delete and inspect blocks on nodes.

`BlockStore` is the contract the file layer (dfs/client/files.py) holds: three
calls, nothing about nodes or sockets. `BlockClient` implements it, plus the
maintenance calls of fsck, gc and repair.

This is the "router" of the design (DESIGN.md section 1): `place_replicas` picks
the nodes, this module talks to them directly. Every byte returned by
`read_block` has been verified (the whole block against the writer's checksum,
a range by the node's chunk checksums plus a checksum of the reply payload); a
bad replica is reported and the next one tried, so a read either returns the
right bytes or raises DfsError(EIO).

Connections: a small pool per node (dfs/blocks/connection.py), requests
pipelined on each, every one authenticated with the cluster key (dfs/keys.py).

Slow nodes (a frozen, swapping or half-partitioned node still accepts TCP):
a write completes once `min_replicas` acked and the others had a short grace
(a few times the acked ones' latency, at most GRACE_MAX); a read asks the next
replica when one has not answered within a few times its recent latency. A
node that misses SLOW_STRIKES such deadlines in a row is slow: placement skips
it (unless too few others are left) and reads try it last, until it answers a
request again or SLOW_RETRY passed. A block written short leaves a
CorruptReport with reason SHORT_WRITE, so the repair leader brings it to
`replicas` copies at once instead of at its next full scan.
"""

import errno
import hmac
import json
import logging
import random
import ssl
import time
from typing import AsyncIterator, Awaitable, Callable, Collection, Protocol

import trio

from dfs.blocks.connection import (
    CONNECT_TIMEOUT,
    POOL_SIZE,
    NodeConnection,
    NodePool,
    NodeSlow,
    NodeUnavailable,
    reply_error,
)
from dfs.blocks.nodedir import NodeDirectory
from dfs.blockid import random_block_id
from dfs.blocks.protocol import LIST_ENTRY, MORE, Frame, Op, encode_block_id, write_proof
from dfs.checksum import from_hex, hash64, to_hex
from dfs.errors import DfsError
from dfs.placement import place_replicas
from dfs.records import BlockRef, CorruptReport
from dfs.zk import NodeExistsError

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
GRACE_FACTOR = 4  # the replicas after min_replicas get this many times the acked ones' latency
GRACE_MIN = 0.5  # s: ... but at least this (on a busy machine the third copy lags)
GRACE_MAX = 0.75  # s: ... and at most this (a close, its commit included, stays well under 2 s)
HEDGE_FACTOR = 3  # a read asks the next replica after this many times the node's usual latency
HEDGE_MIN = 0.1  # s
HEDGE_MAX = 1.0  # s
HEDGE_FIRST = 0.5  # s: the delay for a node without history (a fresh mount)
SLOW_STRIKES = 2  # missed deadlines in a row that make a node slow
SLOW_RETRY = 10.0  # s after its last miss a slow node gets new blocks again (one try)
SHORT_WRITE = "short write"  # the reason of the report a block written short leaves

OnCorrupt = Callable[[BlockRef, str, str], Awaitable[None]]
LOAD_TIE = 8  # in-flight requests that count as equally loaded (see _read_order)


class BlockStore(Protocol):
    """Blocks as the file layer sees them: write one, read (a range of) one, drop a replica.

    Errors carry an errno: EIO when too few replicas took a block or none could
    deliver verified bytes, ENOSPC when the nodes are full, ENOENT when a
    replica to delete is not there.
    """

    async def write_block(self, data: bytes | bytearray | memoryview, *, replicas: int,
                          min_replicas: int, exclude: Collection[str] = ()) -> BlockRef:
        """A new block on up to `replicas` nodes; at least `min_replicas` have it durably."""
        ...

    async def read_block(self, ref: BlockRef, offset: int = 0, length: int | None = None) -> bytes:
        """Verified bytes `offset .. offset+length` of the block (clamped to its end)."""
        ...

    async def delete_block(self, node_id: str, block_id: str) -> None:
        """Delete the replica on `node_id`."""
        ...


class BlockClient:
    """Blocks on storage nodes, for one filesystem.

    Args:
      nodedir: where the nodes are (its zk and paths are used for corrupt reports).
      key: the cluster key (dfs/keys.py), to authenticate to the nodes.
      on_corrupt: `async def(ref, node_id, reason)` called when a replica fails
        verification; default: a CorruptReport znode under `repair/corrupt`.
      request_timeout: seconds one request may take before the node is given up.
      connect_timeout: seconds to dial a node.
      tls: the client TLS context of a filesystem made with --tls (dfs.tls).
    """

    def __init__(self, nodedir: NodeDirectory, *, key: bytes, on_corrupt: OnCorrupt | None = None,
                 request_timeout: float = REQUEST_TIMEOUT,
                 connect_timeout: float = CONNECT_TIMEOUT, pool_size: int = POOL_SIZE,
                 reporter: str = "client", tls: ssl.SSLContext | None = None):
        self.nodedir = nodedir
        self.key = key
        self.tls = tls
        self.on_corrupt = on_corrupt or self.report_corrupt
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.reporter = reporter
        self._pools: dict[str, NodePool] = {}
        self._rng = random.Random()
        self._latency: dict[str, float] = {}  # node id -> moving average of data requests (s)
        self._misses: dict[str, tuple[int, float]] = {}  # node id -> (deadlines missed in a row, last)

    # -- plumbing

    def _pool(self, node_id: str) -> NodePool:
        live = self.nodedir.get(node_id)
        if live is None:
            raise NodeUnavailable(f"node {node_id} is not live")
        pool = self._pools.get(node_id)
        if pool is None or pool.address != live.address:
            if pool is not None:
                pool.close()  # the node moved (restarted on another port)
            pool = self._pools[node_id] = NodePool(node_id, live.address, self.key,
                                                   self.pool_size, self.connect_timeout, self.tls)
        return pool

    async def _call(self, node_id: str, frame: Frame, *, timeout: float | None = None,
                    what: str = "") -> Frame:
        """One request; raises NodeUnavailable for transport trouble, DfsError for an error reply."""
        pool = self._pool(node_id)
        try:
            with trio.fail_after(timeout or self.request_timeout):
                for attempt in range(2):
                    conn = await pool.get()
                    reused = conn.answered > 0
                    try:
                        reply = await conn.request(frame)
                        break
                    except NodeSlow:
                        raise
                    except NodeUnavailable:
                        if attempt or not reused:
                            raise
                        # The node closed this connection while it sat in the pool (its
                        # idle timeout, or it restarted): once more on a new one (every
                        # request is idempotent: a PUT of the same id and bytes, a GET...)
                        pool.retire()
        except trio.TooSlowError:
            raise NodeUnavailable(f"node {node_id} did not answer {Op(frame.op).name} in time") from None
        if reply.status:
            raise reply_error(reply, what or f"{Op(frame.op).name} on node {node_id}")
        return reply

    async def _timed(self, node_id: str, frame: Frame, what: str) -> Frame:
        """_call for data requests: an answer feeds the node's latency and clears its misses."""
        start = trio.current_time()
        reply = await self._call(node_id, frame, what=what)
        took = trio.current_time() - start
        self._latency[node_id] = 0.8 * self._latency.get(node_id, took) + 0.2 * took
        self._misses.pop(node_id, None)
        return reply

    def _missed(self, node_id: str) -> None:
        count, _ = self._misses.get(node_id, (0, 0.0))
        if count + 1 == SLOW_STRIKES:
            log.warning("node %s keeps missing deadlines: treated as slow", node_id)
        self._misses[node_id] = (count + 1, trio.current_time())

    def slow_nodes(self) -> set[str]:
        """Nodes that missed SLOW_STRIKES deadlines in a row, the last within SLOW_RETRY s."""
        now = trio.current_time()
        return {n for n, (count, last) in self._misses.items()
                if count >= SLOW_STRIKES and now - last < SLOW_RETRY}

    def _hedge_delay(self, node_id: str) -> float:
        usual = self._latency.get(node_id)
        return HEDGE_FIRST if usual is None else min(max(HEDGE_FACTOR * usual, HEDGE_MIN), HEDGE_MAX)

    def proven(self, ref: BlockRef) -> bool | None:
        """Whether the ref's write proof is what a node holding the key answered for
        its (id, length, checksum); None: a block written before proofs existed."""
        if not ref.proof:
            return None
        try:
            got = bytes.fromhex(ref.proof)
            want = write_proof(self.key, ref.id, ref.length, from_hex(ref.checksum))
        except ValueError:
            return False
        return hmac.compare_digest(got, want)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()

    async def report_corrupt(self, ref: BlockRef, node_id: str, reason: str) -> None:
        """Default on_corrupt: leave a CorruptReport for the repair leader."""
        zk, paths = self.nodedir.zk, self.nodedir.paths
        report = CorruptReport(block_id=ref.id, node_id=node_id, reporter=self.reporter,
                               reason=reason, reported=time.time()).encode()
        path = paths.repair_report(ref.id, node_id)
        try:
            try:
                await zk.create(path, report)
            except NodeExistsError:
                await zk.set(path, report)
        except Exception as e:  # a report is best effort: the read itself already failed over
            log.warning("could not report corrupt replica %s on %s: %s", ref.id, node_id, e)

    # -- writing

    async def write_block(self, data: bytes | bytearray | memoryview, *, replicas: int,
                          min_replicas: int, exclude: Collection[str] = (),
                          block_id: str | None = None) -> BlockRef:
        """Store `data` as a new block on up to `replicas` nodes (in parallel).

        `block_id`: the new block's id (a mount's, dfs.meta.writers); default a random one.

        Succeeds when at least `min_replicas` nodes acknowledged a durable copy;
        the BlockRef lists exactly those nodes.

        Raises:
          DfsError(ENOSPC): the nodes are full.
          DfsError(EIO): too few nodes took the block (partial copies are deleted).
        """
        block_id = block_id or random_block_id()
        checksum = hash64(data)
        size = len(data)
        proof = write_proof(self.key, block_id, size, checksum)  # what each node must answer
        live = list(self.nodedir.live().values())
        if len(live) < replicas:
            await self.nodedir.refresh()
            live = list(self.nodedir.live().values())
        tried = set(exclude)
        acked: list[str] = []
        errors: list[DfsError] = []
        want = replicas
        took: list[float] = []  # seconds each ack took
        for _round in range(2):  # the first choice, then other nodes for what failed
            slow = self.slow_nodes()
            targets = place_replicas(live, want, exclude=tried | slow, block_size=size, rng=self._rng)
            short = min_replicas - len(acked) - len(targets)
            if short > 0:  # too few others: slow nodes it is
                targets += place_replicas(live, short, exclude=tried | set(targets),
                                          block_size=size, rng=self._rng)
            if not targets:
                break
            tried.update(targets)
            failed: set[str] = set()
            answered = trio.Event()  # every target acked or failed
            grace_started = expired = False

            def start_grace(nursery: trio.Nursery) -> None:
                nonlocal grace_started
                if len(acked) >= min_replicas and not grace_started:
                    grace_started = True
                    nursery.start_soon(grace, nursery)

            async def grace(nursery: trio.Nursery) -> None:
                nonlocal expired
                with trio.move_on_after(min(max(GRACE_FACTOR * max(took, default=0), GRACE_MIN),
                                            GRACE_MAX)):
                    await answered.wait()
                if not answered.is_set():
                    expired = True
                    nursery.cancel_scope.cancel()

            async def put(node_id: str, nursery: trio.Nursery) -> None:
                try:
                    reply = await self._timed(node_id, Frame(Op.PUT, block_id=encode_block_id(block_id),
                                                             length=size, checksum=checksum, payload=data),
                                              what=f"storing block {block_id} on node {node_id}")
                    if not hmac.compare_digest(bytes(reply.payload), proof):
                        # (a node that did not confirm these bytes: not a replica to list)
                        raise DfsError(errno.EIO, f"node {node_id} stored block {block_id} without "
                                                  "a valid write proof")
                except DfsError as e:
                    log.info("PUT %s to node %s failed: %s", block_id, node_id, e)
                    errors.append(e)
                    failed.add(node_id)
                else:
                    acked.append(node_id)
                    took.append(trio.current_time() - start)
                    start_grace(nursery)
                if failed.union(acked).issuperset(targets):
                    answered.set()

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                start_grace(nursery)
                for node_id in targets:
                    nursery.start_soon(put, node_id, nursery)
            if expired:
                for node_id in set(targets) - set(acked) - failed:
                    self._missed(node_id)
                log.info("block %s stored on %d of %d nodes; the repair leader adds the rest",
                         block_id, len(acked), replicas)
                break
            want = replicas - len(acked)
            if want <= 0:
                break
        if len(acked) >= min_replicas:
            ref = BlockRef(id=block_id, length=size, checksum=to_hex(checksum), replicas=acked,
                           proof=proof.hex())
            if len(acked) < replicas and tried - set(exclude) - set(acked):
                # a node missed it: a hint (not damage) about a replica the map will list
                await self.report_corrupt(ref, acked[0], SHORT_WRITE)
            return ref
        await self._discard(block_id, acked)
        full = [n for n in live if n.state == "active" and n.free < size]
        if (errors and all(e.errno == errno.ENOSPC for e in errors)) or (not errors and full):
            raise DfsError(errno.ENOSPC, f"storage nodes are full: block stored on {len(acked)} of "
                                         f"{min_replicas} nodes needed")
        detail = f" ({errors[0]})" if errors else ""
        raise DfsError(errno.EIO, f"block stored on {len(acked)} nodes, {min_replicas} needed; "
                                  f"{len(live)} nodes live{detail}")

    async def _discard(self, block_id: str, node_ids: list[str]) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.connect_timeout):
            for node_id in node_ids:
                try:
                    await self.delete_block(node_id, block_id)
                except DfsError:
                    pass  # an orphan: fsck/gc collects it

    # -- reading

    def _read_order(self, ref: BlockRef) -> list[str]:
        """Replicas to try: live ones first, slow ones last, least loaded first (ties at random).

        `load` is a node's in-flight requests sampled at its last heartbeat; a
        few requests apart counts as a tie, or one stale sample would steer
        every read away from a node until its next heartbeat.
        """
        live = self.nodedir.live()
        up = [n for n in ref.replicas if n in live]
        self._rng.shuffle(up)
        slow = self.slow_nodes()
        up.sort(key=lambda n: (n in slow, int(live[n].load) // LOAD_TIE))
        return up + [n for n in ref.replicas if n not in live]

    async def read_block(self, ref: BlockRef, offset: int = 0, length: int | None = None, *,
                         gone_ok: bool = False) -> bytes:
        """Verified bytes `offset .. offset+length` of a block (clamped to its end).

        Tries each replica in turn; a replica that returns damaged data or
        reports a checksum failure is passed to `on_corrupt`, and so is one the
        node does not have, unless `gone_ok` (a block that may have been
        collected: its absence is no damage to report).

        Raises:
          DfsError(EIO): no replica could deliver verified bytes.
        """
        if offset < 0 or (length is not None and length < 0):
            raise DfsError(errno.EINVAL, "negative offset or length")
        end = ref.length if length is None else min(ref.length, offset + length)
        if offset >= end:
            return b""
        want = end - offset
        whole = offset == 0 and want == ref.length
        expected = from_hex(ref.checksum)
        last_error = "no replica is live"
        found: list[bytes] = []

        async def attempt(node_id: str, finished: trio.Event, nursery: trio.Nursery) -> None:
            """Verified bytes from one replica into `found` (cancelling the others)."""
            nonlocal last_error
            try:
                reply = await self._timed(node_id, Frame(Op.GET, block_id=encode_block_id(ref.id),
                                                         offset=offset, length=want),
                                          what=f"reading block {ref.id} from node {node_id}")
            except NodeUnavailable as e:
                last_error = str(e)
                finished.set()
                return
            except DfsError as e:
                last_error = str(e)
                finished.set()
                if e.errno == errno.EIO or e.errno == errno.ENOENT and not gone_ok:
                    with trio.CancelScope(shield=True):  # a hedge's win must not lose the report
                        await self.on_corrupt(ref, node_id, "missing" if e.errno == errno.ENOENT
                                              else f"node reported: {e.message}")
                return
            finished.set()
            data = reply.payload
            got = hash64(data)
            if len(data) != want or got != reply.checksum:
                # damaged in transit or a buggy node: not proof the replica is bad
                last_error = f"node {node_id} sent {len(data)} bytes that fail their checksum"
                log.warning("%s (block %s)", last_error, ref.id)
            elif whole and got != expected:
                last_error = f"replica on node {node_id} does not match the block checksum"
                with trio.CancelScope(shield=True):
                    await self.on_corrupt(ref, node_id, "whole-block checksum mismatch")
            else:
                found.append(data if isinstance(data, bytes) else bytes(data))
                nursery.cancel_scope.cancel()

        # Replicas one after the other; one that neither answered nor failed within its
        # hedge delay keeps going while the next is asked (the first verified answer wins).
        hedged: list[tuple[str, trio.Event]] = []
        async with trio.open_nursery() as nursery:
            for node_id in self._read_order(ref):
                finished = trio.Event()
                nursery.start_soon(attempt, node_id, finished, nursery)
                with trio.move_on_after(self._hedge_delay(node_id)):
                    await finished.wait()
                if not finished.is_set():
                    hedged.append((node_id, finished))
        for node_id, finished in hedged:
            if not finished.is_set():  # still silent when another replica answered
                self._missed(node_id)
        if found:
            return found[0]
        raise DfsError(errno.EIO, f"cannot read block {ref.id}: {last_error}")

    # -- maintenance operations (fsck, gc, repair)

    async def delete_block(self, node_id: str, block_id: str) -> None:
        """Delete one replica. Raises DfsError(ENOENT) if the node does not have it."""
        await self._call(node_id, Frame(Op.DELETE, block_id=encode_block_id(block_id)))

    async def stat_block(self, node_id: str, block_id: str) -> dict:
        """{'length', 'checksum' (hex), 'mtime' (s)} of a replica; DfsError(ENOENT) if absent."""
        r = await self._call(node_id, Frame(Op.STAT, block_id=encode_block_id(block_id)))
        return {"length": r.length, "checksum": to_hex(r.checksum), "mtime": r.offset / 1e9}

    async def verify_block(self, node_id: str, block_id: str) -> bool:
        """The node re-reads and re-hashes the replica: True if intact, False if damaged.

        Raises:
          DfsError(ENOENT): the node does not have the block.
          NodeUnavailable: the node cannot be reached.
        """
        try:
            await self._call(node_id, Frame(Op.VERIFY, block_id=encode_block_id(block_id)),
                             timeout=max(self.request_timeout, 120.0))
        except DfsError as e:
            if e.errno == errno.EIO and not isinstance(e, NodeUnavailable):
                return False
            raise
        return True

    async def copy_block(self, src_node_id: str, block_id: str, dst_node_id: str) -> None:
        """Ask `src_node_id` to push its (verified) replica to `dst_node_id`."""
        dst = self.nodedir.get(dst_node_id)
        if dst is None:
            raise NodeUnavailable(f"node {dst_node_id} is not live")
        payload = json.dumps({"node_id": dst_node_id, "address": dst.address}).encode()
        await self._call(src_node_id, Frame(Op.COPY, block_id=encode_block_id(block_id),
                                            payload=payload),
                         timeout=self.request_timeout * 2,
                         what=f"copying block {block_id} from {src_node_id} to {dst_node_id}")

    async def ping(self, node_id: str, *, timeout: float | None = None) -> dict:
        """The node's PING answer: {'node_id', 'blocks', 'inflight', ...}."""
        r = await self._call(node_id, Frame(Op.PING), timeout=timeout)
        return json.loads(bytes(r.payload)) if r.payload else {}

    async def list_blocks(self, node_id: str, *, timeout: float | None = None
                          ) -> AsyncIterator[tuple[str, int, str, float]]:
        """Every block on a node as (block_id, length, checksum hex, mtime), streamed.

        Uses a connection of its own so that TCP flow control paces the node.
        timeout: seconds the node may take for each batch (default request_timeout).

        Raises:
          NodeSlow: the node did not answer or sent nothing for `timeout` seconds.
        """
        timeout = timeout or self.request_timeout
        live = self.nodedir.get(node_id)
        if live is None:
            raise NodeUnavailable(f"node {node_id} is not live")
        conn = await NodeConnection.open(node_id, live.address, key=self.key,
                                         connect_timeout=max(self.connect_timeout, timeout),
                                         tls=self.tls)
        try:
            req = Frame(Op.LIST, request_id=1)
            await conn.fs.send_frame(req)
            while True:
                with trio.move_on_after(timeout) as waited:
                    f = await conn.fs.recv_frame()
                if waited.cancelled_caught:
                    raise NodeSlow(f"node {node_id} sent nothing for {timeout:g} s while listing its blocks")
                if f is None:
                    raise NodeUnavailable(f"node {node_id} closed the connection during LIST")
                if f.status:
                    raise reply_error(f, f"listing blocks of node {node_id}")
                payload = memoryview(f.payload)
                for i in range(0, len(payload) - LIST_ENTRY.size + 1, LIST_ENTRY.size):
                    bid, length, csum, mtime = LIST_ENTRY.unpack_from(payload, i)
                    yield bid.decode("ascii"), length, to_hex(csum), mtime
                if not f.flags & MORE:
                    return
        except (OSError, trio.TooSlowError) as e:
            raise NodeUnavailable(f"listing blocks of node {node_id} failed: {e!r}") from None
        finally:
            conn.close()
