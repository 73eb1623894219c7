"""POSIX ACLs, in the kernel's xattr format (`system.posix_acl_access` / `_default`).

The kernel checks permissions against them (the mount asks for FUSE_CAP_POSIX_ACL);
what is left to the file system is keeping the mode and the access ACL in step
(chmod sets the owner, group-class and other entries; setting an ACL sets the
mode's bits from it) and inheriting a directory's default ACL on create. The
rules are POSIX 1003.1e draft 17's as Linux implements them (fs/posix_acl.c);
the group class is the mask entry if there is one, else the owning group's.
"""

import errno
import struct

from dfs.errors import DfsError

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
USER_OBJ, GROUP_OBJ, MASK, OTHER = 0x01, 0x04, 0x10, 0x20  # tags (<linux/posix_acl.h>)
_HEADER = struct.Struct("<I")  # version 2
_ENTRY = struct.Struct("<HHI")  # tag, permissions, uid or gid


def _decode(value: bytes) -> list[list[int]]:
    if len(value) < 4 or (len(value) - 4) % 8 or _HEADER.unpack_from(value)[0] != 2:
        raise DfsError(errno.EINVAL, "not a POSIX ACL")
    return [list(e) for e in _ENTRY.iter_unpack(value[4:])]


def _encode(entries: list[list[int]]) -> bytes:
    return _HEADER.pack(2) + b"".join(_ENTRY.pack(*e) for e in entries)


def _shifts(entries: list[list[int]]) -> dict[int, int]:
    """The entries that the mode's owner, group and other bits stand for: tag -> shift."""
    group = MASK if any(e[0] == MASK for e in entries) else GROUP_OBJ
    return {USER_OBJ: 6, group: 3, OTHER: 0}


def is_minimal(access: bytes) -> bool:
    """The ACL says no more than a mode does (owner, owning group, other; no mask):
    as on ext4, setting it is a chmod and nothing is stored (cp -a sets one on
    every file it copies)."""
    entries = _decode(access)
    return len(entries) == 3 and {e[0] for e in entries} == {USER_OBJ, GROUP_OBJ, OTHER}


def mode_of(access: bytes, mode: int) -> int:
    """`mode` with its permission bits as the access ACL grants them (setfacl)."""
    entries = _decode(access)
    shifts = _shifts(entries)
    bits = sum(e[1] << shifts[e[0]] for e in entries if e[0] in shifts)
    return mode & ~0o777 | bits


def chmod(access: bytes, mode: int) -> bytes:
    """The access ACL after chmod to `mode`."""
    entries = _decode(access)
    shifts = _shifts(entries)
    for e in entries:
        if e[0] in shifts:
            e[1] = mode >> shifts[e[0]] & 7
    return _encode(entries)


def inherit(default: bytes, mode: int) -> tuple[int, bytes | None]:
    """A new inode's mode and access ACL from its parent's default ACL: the mode
    asked for (no umask) limits the owner, group-class and other entries, and the
    mode's bits become what they grant. None: the ACL says no more than the mode."""
    entries = _decode(default)
    shifts = _shifts(entries)
    for e in entries:
        if e[0] in shifts:
            e[1] &= mode >> shifts[e[0]] & 7
    access = _encode(entries)
    return mode_of(access, mode), access if len(entries) > 3 else None
