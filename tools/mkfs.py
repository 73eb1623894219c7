"""`dfs mkfs`: create a filesystem and its key; `dfs keygen`: give an older one a key, or rotate it.

mkfs refuses to overwrite a filesystem (exit 1). It writes a new key file
(mode 0600, where tools.common.resolve_key_file looks) or, if one is there
already, keeps using that key; the filesystem's config records its key_check.

keygen brings a filesystem made before keys existed under a key (nothing else
changes: no data moves), and with --rotate replaces the key (stop every node and
mount first: the old key stops working for connections made afterwards). Either
way it gives every znode of the filesystem the key's ZooKeeper ACL (dfs.zk.session),
also on a filesystem whose key came before ACLs did; a run cut short is finished
by running it again (the root gets the ACL last).
"""

import argparse
import contextlib
import dataclasses
import errno
import os

import trio

from dfs.config import FsConfig
from dfs.errors import DfsError, QuietError, UsageError
from dfs.keys import check_fs_key, create_key_file, key_check, load_key
from dfs.mkfs import mkfs
from dfs.paths import FsPaths, default_root
from dfs.zk import BadVersionError, NoAuthError, NoNodeError, ZkClient
from tools.common import EXIT_OK, EXIT_PROBLEM, connect_zk, resolve_key_file


def config_of(args: argparse.Namespace) -> FsConfig:
    """The settings given by tools.cli.add_mkfs_options (`dfs mkfs`, `dfs up`)."""
    return FsConfig(block_size=args.block_size, replicas=args.replicas,
                    min_replicas=args.min_replicas, dead_after=args.dead_after,
                    inline_max=args.inline_max, tls=args.tls, trash_days=args.trash_days)


async def _main(args: argparse.Namespace) -> int:
    config = dataclasses.replace(config_of(args), zk_heap=args.zk_heap)
    zk = await connect_zk(args)
    key_file = resolve_key_file(args)
    made_key = not key_file.exists()
    paths = FsPaths(default_root(args.fs))
    try:
        key = create_key_file(key_file) if made_key else load_key(key_file)
        config.key_check = key_check(key)
        zk.authenticate(key, paths.root)
        await mkfs(zk, paths, config)
    except DfsError as e:
        if made_key:
            key_file.unlink()  # a key for a filesystem we did not make
        if e.errno == errno.EEXIST:
            raise QuietError(f"{e.message}; refusing to overwrite it", EXIT_PROBLEM) from None
        if e.errno == errno.EINVAL:
            raise UsageError(e.message) from None  # bad option values: exit 2
        raise
    finally:
        await zk.close()
    print(f"created filesystem '{args.fs}': block size {config.block_size}, "
          f"replicas {config.replicas} (min {config.min_replicas}); key in {key_file}"
          + ("" if made_key else " (kept)"))
    return EXIT_OK


def main(args: argparse.Namespace) -> int:
    return trio.run(_main, args)


async def restrict_tree(zk: ZkClient, root: str) -> int:
    """Give every znode at or below `root` the ACL a create would give it now, the root
    last (so a root with it means all have it); returns how many. Pipelined: the
    SetACLs of a level's batch are on the wire together."""
    levels = [[root]]
    while levels[-1]:
        children = await zk.children_many(levels[-1])
        levels.append([f"{p}/{c}" for p, cs in zip(levels[-1], children) for c in cs or ()])
    below = [p for level in reversed(levels[1:]) for p in level]

    async def one(path: str) -> None:
        with contextlib.suppress(NoNodeError):  # an ephemeral gone meanwhile
            await zk.restrict(path)

    for i in range(0, len(below), 512):
        async with trio.open_nursery() as nursery:
            for path in below[i:i + 512]:
                nursery.start_soon(one, path)
    await zk.restrict(root)
    return len(below) + 1


async def _keygen(args: argparse.Namespace) -> int:
    paths = FsPaths(default_root(args.fs))
    key_file = resolve_key_file(args)
    zk = await connect_zk(args)
    try:
        if key_file.exists():  # the current key (or, not rotating, the one to use)
            zk.authenticate(load_key(key_file), paths.root)
        try:
            data, stat = await zk.get(paths.config)
        except NoNodeError:
            raise UsageError(f"no filesystem at {paths.root}") from None
        except NoAuthError:
            raise UsageError(f"filesystem '{args.fs}' is under a key that {key_file} does not "
                             "hold") from None
        config = FsConfig.decode(data)
        if args.rotate or config.key_check:
            check_fs_key(config, load_key(key_file), key_file, args.fs)
        if config.key_check and not args.rotate:
            if await zk.get_acl(paths.root) == zk.acl_for(paths.root):
                raise QuietError(f"filesystem '{args.fs}' has a key already (--rotate replaces it)",
                                 EXIT_PROBLEM)
            n = await restrict_tree(zk, paths.root)  # keyed before ACLs existed
            print(f"filesystem '{args.fs}': {n} znodes now readable with its key only")
            return EXIT_OK
        # rotating: a .new key left by a run cut short is the one its ACLs went to
        new_file = key_file.with_name(key_file.name + ".new") if args.rotate else key_file
        made = not new_file.exists()
        key = create_key_file(new_file) if made else load_key(new_file)
        if made or args.rotate:
            zk.authenticate(key, paths.root)  # (rotating: the session holds both keys)
        if args.rotate:  # the ACLs first: until the config changes, the old key rules
            await restrict_tree(zk, paths.root)
        config.key_check = key_check(key)
        try:
            # with the version read: of two keygens at once, one fails and changes nothing
            await zk.set(paths.config, config.encode(), version=stat.version)
        except BaseException as e:
            if made and not args.rotate:
                new_file.unlink()
            if isinstance(e, BadVersionError):
                raise QuietError("the filesystem's config changed meanwhile: run again",
                                 EXIT_PROBLEM) from None
            raise
        if args.rotate:
            os.replace(new_file, key_file)
        else:  # after the config, which is what makes a rerun find this key
            await restrict_tree(zk, paths.root)
    finally:
        await zk.close()
    print(f"filesystem '{args.fs}' is under the key in {key_file}; copy it (mode 0600) to every "
          "machine that runs a node or mount, then (re)start them")
    return EXIT_OK


def keygen(args: argparse.Namespace) -> int:
    return trio.run(_keygen, args)
