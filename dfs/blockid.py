"""Block ids, and the writer a block id names (pure).

A block id is 32 lowercase hex digits (dfs.checksum.valid_block_id). A mount
makes its blocks' ids from its writer record (dfs.meta.writers):

    rrrrrrrrrrrr 0 ssssssssss ccccccccc
    12 random    | 10: writer  9: the writer's
    (fan-out of  | sequence    counter
    block dirs)  marker

Position 12 is "0" in a writer's id and "4" in a random (uuid4) id, so the
two never collide. The repair leader's gc reads the writer out of an id: a
block whose writer is gone, or whose counter is below the writer's
watermark, can no longer be committed by anyone (dfs.meta.writers), so if
no map references it, it is garbage at once, without waiting `orphan_age`.
"""

import secrets
import uuid

SEQ_DIGITS = 10
COUNTER_DIGITS = 9
MAX_COUNTER = 16 ** COUNTER_DIGITS
MAX_SEQ = 16 ** SEQ_DIGITS
MARKER = "0"


def random_block_id() -> str:
    """An id of no writer (tools and tests that write blocks directly)."""
    return uuid.uuid4().hex


def writer_block_id(seq: int, counter: int) -> str:
    """The id of block number `counter` of writer `seq`."""
    if not 0 <= seq < MAX_SEQ or not 0 <= counter < MAX_COUNTER:
        raise ValueError(f"writer {seq} counter {counter} out of range")
    return f"{secrets.token_hex(6)}{MARKER}{seq:0{SEQ_DIGITS}x}{counter:0{COUNTER_DIGITS}x}"


def block_writer(block_id: str) -> tuple[int, int] | None:
    """(writer sequence, counter) of a writer's block id; None for any other id."""
    if len(block_id) != 32 or block_id[12] != MARKER:
        return None
    try:
        return int(block_id[13:23], 16), int(block_id[23:], 16)
    except ValueError:
        return None
