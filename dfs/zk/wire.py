"""ZooKeeper's multi-read (opcode 22, ZooKeeper >= 3.6) on top of kazoo's serialization.

kazoo pipelines requests but spends ~100 us of Python per call; reading a large
directory one znode at a time is bound by that. A multi-read fetches hundreds of
znodes in one request; each operation succeeds or fails on its own (NoNode for a
znode that vanished does not fail the others).
"""

from collections import namedtuple

from kazoo.exceptions import EXCEPTIONS
from kazoo.protocol.serialization import (
    GetChildren,
    GetData,
    MultiHeader,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
)
from kazoo.protocol.states import ZnodeStat  # re-exported: the stat of every read


class ZkState:
    """Session states a listener receives (kazoo's names and values)."""

    CONNECTED = "CONNECTED"
    SUSPENDED = "SUSPENDED"  # connection lost; the session may still be alive
    LOST = "LOST"            # the session expired (ephemerals gone) or the client closed


class MultiRead(namedtuple("MultiRead", "operations")):
    """operations: GetData(path, None) or GetChildren(path, None) requests."""

    type = 22

    def serialize(self) -> bytearray:
        b = bytearray()
        for op in self.operations:
            b.extend(MultiHeader(op.type, False, -1).serialize() + op.serialize())
        return b + multiheader_struct.pack(-1, True, -1)

    @classmethod
    def deserialize(cls, buf: bytes, offset: int) -> list:
        results: list = []
        header, offset = MultiHeader.deserialize(buf, offset)
        while not header.done:
            if header.type == GetData.type:
                data, offset = read_buffer(buf, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(buf, offset))
                offset += stat_struct.size
                results.append((data, stat))
            elif header.type == GetChildren.type:
                count = int_struct.unpack_from(buf, offset)[0]
                offset += int_struct.size
                children = []
                for _ in range(max(count, 0)):
                    child, offset = read_string(buf, offset)
                    children.append(child)
                results.append(children)
            elif header.type == -1:
                err = int_struct.unpack_from(buf, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[err]())
            else:
                raise ValueError(f"unexpected multi-read result type {header.type}")
            header, offset = MultiHeader.deserialize(buf, offset)
        return results
