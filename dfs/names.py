"""Reversible escaping of POSIX names (any byte but '/' and NUL) into znode names.

ZooKeeper refuses '/', NUL, control characters, some Unicode ranges and the
components '.' and '..'. We keep a small safe ASCII set literally and write every
other byte as '%XX' (upper-case hex), '%' included, so the mapping is a bijection
and a name that already looks like an escape ('%41') round-trips unchanged.
"""

import errno

from dfs.errors import DfsError

NAME_MAX = 255

_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+,=@~ ")
_HEX = "0123456789ABCDEF"


def check_name(name: bytes) -> None:
    """Raise DfsError unless `name` is a legal directory entry name."""
    if len(name) > NAME_MAX:
        raise DfsError(errno.ENAMETOOLONG, f"name longer than {NAME_MAX} bytes")
    if not name or b"/" in name or b"\0" in name:
        raise DfsError(errno.EINVAL, f"invalid name {name!r}")
    if name in (b".", b".."):
        raise DfsError(errno.EINVAL, f"{name!r} is not an entry")


def escape(name: bytes) -> str:
    out = []
    for b in name:
        if b in _SAFE:
            out.append(chr(b))
        else:
            out.append("%" + _HEX[b >> 4] + _HEX[b & 15])
    s = "".join(out)
    # '.' and '..' are never stored, but '...' is legal for ZooKeeper; only exact
    # dot components are refused, so nothing more is needed here.
    return s


def unescape(znode_name: str) -> bytes:
    out = bytearray()
    i = 0
    n = len(znode_name)
    while i < n:
        c = znode_name[i]
        if c == "%":
            out.append(int(znode_name[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(ord(c))
            i += 1
    return bytes(out)
