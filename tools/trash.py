"""`dfs trash ls|restore|purge` and `dfs config show|set` (dfs.meta.trash, README: Trash).

Paths are inside the filesystem (`/dir/file`), as with `dfs why`. An entry's
original path is worked out from the directory it was removed from (its
parent's chain of names, now): a directory removed since shows as
`<dir N>/name`. Exit codes: 0 done; 1 not done (the name exists, nothing
matches); 2 usage or connection error.
"""

import argparse
import dataclasses
import errno
import json
import os
import time

import trio

from dfs.errors import DfsError, QuietError, UsageError
from dfs.meta import Meta
from dfs.mkfs import load_config, set_setting
from dfs.paths import ROOT_INO, FsPaths, default_root
from dfs.records import TrashEntry
from tools.common import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, cluster_key, connect_zk, human
from tools.why import resolve


class Namer:
    """Directory inode -> its path now (None: removed), remembering what it listed."""

    def __init__(self, meta: Meta):
        self.meta = meta
        self.known: dict[int, str | None] = {ROOT_INO: ""}

    async def dir_path(self, ino: int) -> str | None:
        if ino in self.known:
            return self.known[ino]
        path = None
        try:
            node = await self.meta.inodes.getattr(ino)
            parent = node.rec.parent or ROOT_INO
            if node.rec.nlink and node.rec.is_dir:
                above = await self.dir_path(parent)
                listing = await self.meta.namespace.list_dir(parent)
                for listed in listing.entries:
                    if listed.entry.ino == ino and above is not None:
                        path = f"{above}/{os.fsdecode(listed.name)}"
                        break
        except DfsError:
            path = None
        self.known[ino] = path
        return path

    async def path_of(self, entry: TrashEntry) -> str:
        where = await self.dir_path(entry.parent)
        return f"{where if where is not None else f'<dir {entry.parent}>'}/{os.fsdecode(entry.name_bytes)}"


async def listed(meta: Meta) -> list[dict]:
    """Every entry, newest first: id, path, size, deleted."""
    namer = Namer(meta)
    out = []
    for ino, (entry, _) in (await meta.trash.entries()).items():
        out.append({"id": ino, "path": await namer.path_of(entry), "size": entry.size,
                    "deleted": entry.deleted, "parent": entry.parent, "name": entry.name})
    out.sort(key=lambda d: (-d["deleted"], d["id"]))
    return out


def _under(path: str, prefix: str) -> bool:
    prefix = "/" + prefix.strip("/")
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


async def _split_dest(meta: Meta, dest: str, name: bytes) -> tuple[int, bytes]:
    """`--to DEST`: into DEST if it is a directory, else as DEST."""
    try:
        node = await meta.inodes.getattr(await resolve(meta, dest))
        if node.rec.is_dir:
            return node.ino, name
        raise QuietError(f"{dest} exists (a restore never replaces a file)", EXIT_PROBLEM)
    except UsageError:
        head, _, tail = dest.rstrip("/").rpartition("/")
        if not tail:
            raise UsageError(f"bad destination {dest!r}") from None
        return await resolve(meta, head or "/"), os.fsencode(tail)


async def _run(args: argparse.Namespace, meta: Meta) -> int:
    if args.trash_command == "ls":
        rows = [r for r in await listed(meta) if _under(r["path"], args.path)]
        if args.json:
            print(json.dumps({"entries": rows, "bytes": sum(r["size"] for r in rows)}, indent=2))
            return EXIT_OK
        for r in rows:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["deleted"]))
            print(f"{r['id']:>10}  {when}  {human(r['size']):>9}  {r['path']}")
        print(f"{len(rows)} entries, {human(sum(r['size'] for r in rows))}")
        return EXIT_OK
    if args.trash_command == "restore":
        rows = await listed(meta)
        if args.what.isdigit():
            match = [r for r in rows if r["id"] == int(args.what)]
        else:
            match = [r for r in rows if r["path"] == "/" + args.what.strip("/")]
        if not match:
            raise QuietError(f"{args.what}: not in the trash ('dfs trash ls' lists it)", EXIT_PROBLEM)
        r = match[0]  # the newest
        name = r["name"].encode("utf-8", "surrogateescape")
        if args.to:
            parent, name = await _split_dest(meta, args.to, name)
        else:
            parent = r["parent"]
        try:
            await meta.trash.restore(r["id"], parent, name)
        except DfsError as e:
            if e.errno == errno.EEXIST:
                raise QuietError(f"{args.to or r['path']}: exists; nothing restored "
                                 "(a restore never replaces a file; use --to DEST)", EXIT_PROBLEM) from None
            if e.errno == errno.ENOENT and not args.to:
                raise QuietError(f"{r['path']}: its directory is gone; restore it with --to DEST",
                                 EXIT_PROBLEM) from None
            raise QuietError(f"{args.what}: {e.message}", EXIT_PROBLEM) from None
        print(f"restored {r['path']} (id {r['id']}, {human(r['size'])})"
              + (f" as {args.to}" if args.to else ""))
        return EXIT_OK
    count, size = await meta.trash.purge_older(args.older_than)
    print(f"purged {count} entries, {human(size)}")
    return EXIT_OK


async def _with_meta(args: argparse.Namespace, fn) -> int:
    zk = await connect_zk(args)
    try:
        paths = FsPaths(default_root(args.fs))
        await cluster_key(args, zk)
        try:
            config = await load_config(zk, paths)
        except DfsError as e:
            raise QuietError(e.message, EXIT_USAGE) from None
        return await fn(Meta(zk, paths, config, mount_id="trash-tool"))
    finally:
        await zk.close()


def main(args: argparse.Namespace) -> int:
    return trio.run(_with_meta, args, lambda meta: _run(args, meta))


async def _config(args: argparse.Namespace, meta: Meta) -> int:
    if args.config_command == "show":
        print(json.dumps(dataclasses.asdict(meta.config), indent=2))
        return EXIT_OK
    try:
        config = await set_setting(meta.zk, meta.paths, args.name, args.value)
    except DfsError as e:
        if e.errno == errno.EINVAL:
            raise UsageError(e.message) from None
        raise
    print(f"{args.name} = {getattr(config, args.name):g}")
    return EXIT_OK


def config_main(args: argparse.Namespace) -> int:
    return trio.run(_with_meta, args, lambda meta: _config(args, meta))
