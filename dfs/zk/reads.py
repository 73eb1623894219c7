"""Multi-reads over a client's `_multi_read` (one request, many znodes, in order)."""

from typing import Any

from dfs.zk.wire import GetChildren, GetData, MultiRead, ZnodeStat


class ManyReads:
    """Multi-reads (read_many, get_many, children_many) over a client's `_multi_read` (Zk, WireZk)."""

    _chroot = ""  # prefixed to the paths of a MultiRead (the clients' calls add it themselves)

    async def _multi_read(self, request: MultiRead) -> list[Any]:
        """Send one MultiRead (with retries); its per-read results."""
        raise NotImplementedError

    async def read_many(self, reads: list[tuple[str, str]], batch: int = 512) -> list[Any]:
        """Several reads in few round trips (ZooKeeper multi-read, in order).

        Args:
          reads: ("get", path) or ("children", path) pairs.
        Returns:
          per read, in order: (data, stat) for "get", a list of names for
          "children", or None where the znode does not exist.

        The server runs the reads of one batch one after the other, so a read
        listed later never sees an older state than one listed earlier: read an
        inode before the znodes its version guards (see Meta._delete_inode).
        """
        kinds = {"get": GetData, "children": GetChildren}
        out: list[Any] = []
        for i in range(0, len(reads), batch):
            request = MultiRead([kinds[k](self._chroot + p, None) for k, p in reads[i:i + batch]])
            for r in await self._multi_read(request):
                out.append(None if isinstance(r, Exception) else r)
        return out

    async def get_many(self, paths: list[str], batch: int = 512) -> list[tuple[bytes, ZnodeStat] | None]:
        """Read many znodes with few round trips (multi-read); None for a missing one."""
        return await self.read_many([("get", p) for p in paths], batch)

    async def children_many(self, paths: list[str]) -> list[list[str] | None]:
        """get_children of several znodes in one round trip; None for a missing one."""
        return await self.read_many([("children", p) for p in paths])


class Read:
    """A handle of one read in a `Reads` batch: `got[handle]` is its result."""

    __slots__ = ("index", "kind", "path")

    def __init__(self, index: int, kind: str, path: str):
        self.index = index
        self.kind = kind
        self.path = path

    def __repr__(self) -> str:
        return f"Read({self.kind} {self.path})"


class Got:
    """The results of a `Reads` batch, looked up by handle.

    `got[h]` is (data, stat) for a get, a list of names for children, or None
    where the znode did not exist.
    """

    __slots__ = ("_results",)

    def __init__(self, results: list[Any]):
        self._results = results

    def __getitem__(self, handle: Read) -> Any:
        return self._results[handle.index]


class Reads:
    """A multi-read whose results are named, not counted.

        reads = Reads()
        entry = reads.get(paths.dirent(parent, name))
        parent_inode = reads.get(paths.inode(parent))
        got = await reads.run(zk)
        if got[entry] is None: ...

    The server runs one batch's reads in order, so a read added later never
    sees an older state than one added earlier.
    """

    __slots__ = ("_ops",)

    def __init__(self) -> None:
        self._ops: list[tuple[str, str]] = []

    def _add(self, kind: str, path: str) -> Read:
        self._ops.append((kind, path))
        return Read(len(self._ops) - 1, kind, path)

    def get(self, path: str) -> Read:
        return self._add("get", path)

    def children(self, path: str) -> Read:
        return self._add("children", path)

    def __len__(self) -> int:
        return len(self._ops)

    async def run(self, zk: "ManyReads") -> Got:
        """Send the batch (few round trips) and return its results by handle."""
        return Got(await zk.read_many(self._ops) if self._ops else [])
