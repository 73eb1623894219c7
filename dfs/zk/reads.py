"""Named multi-reads: one request, many znodes, results looked up by handle."""

from typing import Any, NamedTuple


class Read(NamedTuple):
    """A handle of one read in a `Reads` batch: `got[handle]` is its result."""

    index: int
    kind: str  # "get" or "children"
    path: str


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

    async def run(self, zk: Any) -> Got:
        """Send the batch through `zk.read_many` (a ZkClient) and return its results by handle."""
        return Got(await zk.read_many(self._ops) if self._ops else [])
