"""A ZooKeeper transaction (multi) as a plain list of operations: built by dfs.meta,
dfs.maint and dfs.mkfs, committed by a ZkClient."""

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Txn:
    """A list of operations committed atomically (a ZooKeeper multi)."""

    ops: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def create(self, path: str, value: bytes = b"", ephemeral: bool = False) -> "Txn":
        self.ops.append(("create", (path, value, None, ephemeral, False)))
        return self

    def set(self, path: str, value: bytes, version: int = -1) -> "Txn":
        self.ops.append(("set_data", (path, value, version)))
        return self

    def delete(self, path: str, version: int = -1) -> "Txn":
        self.ops.append(("delete", (path, version)))
        return self

    def check(self, path: str, version: int) -> "Txn":
        self.ops.append(("check", (path, version)))
        return self

    def __len__(self) -> int:
        return len(self.ops)
