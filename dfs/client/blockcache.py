"""Whole blocks of file data, kept by block id: a block never changes once written,
so the cache can never be stale (LRU, bounded in bytes)."""

import collections


class BlockCache:
    """LRU of whole blocks keyed by block id (content is immutable)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._lru: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def get(self, block_id: str) -> bytes | None:
        data = self._lru.get(block_id)
        if data is not None:
            self._lru.move_to_end(block_id)
        return data

    def put(self, block_id: str, data: bytes) -> None:
        if block_id in self._lru or len(data) > self.capacity:
            return
        self._lru[block_id] = data
        self.used += len(data)
        while self.used > self.capacity:
            _, old = self._lru.popitem(last=False)
            self.used -= len(old)
