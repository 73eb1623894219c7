"""The cluster key: a random secret in a file only its owner may read (README "Security").

Every storage node, mount and maintenance command of a filesystem holds the same
key; the node protocol authenticates each connection with it (dfs/blocks/protocol.py).
The filesystem's config records `key_check(key)`, a value that identifies the key
without revealing it, so a daemon given the wrong key file stops at once.

Where a command finds the key, first match wins: --key-file, $DFS_KEY_FILE,
<state>/<fs>.key of the local cluster `dfs up` runs in this directory (when no
--zk is given), else the per-user default that `dfs mkfs` writes:
$XDG_CONFIG_HOME/dfs/<fs>.key, i.e. ~/.config/dfs/<fs>.key.
"""

import errno
import hmac
import os
import secrets
import ssl
import stat
from pathlib import Path

from dfs.config import FsConfig
from dfs.errors import DfsError, QuietError
from dfs.mkfs import load_config
from dfs.paths import FsPaths
from dfs.tls import client_context
from dfs.zk import NoAuthError, ZkClient
from dfs.zk.tls import split_tls

KEY_BYTES = 32


def default_key_file(fsname: str, config_home: str | None) -> Path:
    """<config_home>/dfs/<fs>.key; config_home is $XDG_CONFIG_HOME, by default ~/.config."""
    return Path(config_home or Path.home() / ".config") / "dfs" / f"{fsname}.key"


def create_key_file(path: Path) -> bytes:
    """A new random key in a new file of mode 0600 (its directory made 0700 if missing).

    Raises:
      FileExistsError: there is a key file already (it is never overwritten).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, key.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def zk_tls(hosts: str, key_file: Path) -> ssl.SSLContext | None:
    """The TLS context for a ZooKeeper hosts string that says "tls:" (dfs/zk/tls.py):
    the cluster CA, rebuilt from the key in `key_file`; None for plain TCP."""
    if not split_tls(hosts)[0]:
        return None
    return client_context(load_key(key_file))


def load_key(path: Path) -> bytes:
    """The key in `path`.

    Raises:
      QuietError (exit 2): no such file, readable by group or others (as ssh
        refuses a private key), or not a key.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise QuietError(f"cannot read key file {path}: {e.strerror} (see README: Security)") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            raise QuietError(f"key file {path} is accessible by others (mode {mode:04o}); "
                             f"it must be readable by its owner only: chmod 600 {path}")
        text = os.read(fd, 4 * KEY_BYTES).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise QuietError(f"key file {path} does not hold a dfs key ({2 * KEY_BYTES} hex digits)")
    return key


def key_check(key: bytes) -> str:
    """What the filesystem's config records of its key: identifies it, reveals nothing."""
    return hmac.digest(key, b"dfs key check", "sha256").hex()


async def unlock(zk: ZkClient, paths: FsPaths, path: Path, fsname: str) -> tuple[bytes, FsConfig]:
    """The key in `path` and the filesystem's config, checked against each other;
    `zk` is authenticated with the key (only its holders get at the filesystem's
    znodes, dfs.zk.session).

    Raises:
      DfsError(ENOENT): no filesystem there (reported before any trouble with the key).
      QuietError (exit 2): the key file is unusable (load_key) or not the filesystem's.
    """
    if await zk.exists(paths.config) is None:  # exists needs no rights on the znode
        raise DfsError(errno.ENOENT, f"no filesystem at {paths.root} (run 'dfs mkfs')")
    key = load_key(path)
    zk.authenticate(key, paths.root)
    try:
        config = await load_config(zk, paths)
    except NoAuthError:  # its ACLs are another key's
        raise QuietError(f"key file {path} does not hold the key of filesystem '{fsname}'") from None
    check_fs_key(config, key, path, fsname)
    return key, config


def check_fs_key(config: FsConfig, key: bytes, path: Path, fsname: str) -> None:
    """Stop (QuietError, exit 2) unless `key` is the key of the filesystem with `config`."""
    if not config.key_check:
        raise QuietError(f"filesystem '{fsname}' has no key yet (made before keys existed): "
                         f"run 'dfs keygen --fs {fsname}' once (README: Security)")
    if not hmac.compare_digest(config.key_check, key_check(key)):
        raise QuietError(f"key file {path} does not hold the key of filesystem '{fsname}'")
