"""The import and layering rules of dfs (REDESIGN.md), checked on the source.

Each rule is a function `rule(root) -> [violation, ...]`; every rule is also
run on a small bad tree made in a temporary directory, to prove it can fail.

1. `dfs` imports none of pyfuse3, `mount`, `nodes`, `tools`; `tools` never
   imports `mount` or `nodes`; `mount` and `nodes` never import each other.
2. Pure modules import only the standard library, each other and xxhash
   (`dfs/zk/wire.py` also kazoo's serialization, `dfs/blocks/protocol.py` the
   `cryptography` package's AEAD for its frame MACs).
3. Only `dfs/zk/` imports kazoo.
4. `dfs/meta/` and `dfs/maint/` never import `dfs/client/`; `dfs/client/` is
   imported only by `mount/` (and tests).
5. ZooKeeper transactions (`Txn(...)`) are built only in `dfs/meta/`,
   `dfs/maint/` and `dfs/mkfs.py`.
6. No znode path strings outside `dfs/paths.py` (no "/dfs..." literal, no
   f-string that appends "/..." to a path from FsPaths).
7. `os.environ` is read only in the mains (`nodes/main.py`, `mount/main.py`)
   and `tools/cli.py`.
8. No function-local imports of project modules (the CLI's dispatch aside).
9. Every constructor parameter is annotated, so the import graph tells the
   truth about what a class is built from.
"""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("dfs", "mount", "nodes", "tools")
PROJECT = set(PRODUCT)
STDLIB = set(sys.stdlib_module_names)

PURE = ["dfs/errors.py", "dfs/blockid.py", "dfs/config.py", "dfs/records.py", "dfs/paths.py", "dfs/names.py",
        "dfs/checksum.py", "dfs/placement.py", "dfs/zk/wire.py", "dfs/zk/txn.py",
        "dfs/zk/reads.py", "dfs/blocks/protocol.py"]
PURE_MODULES = {p[:-3].replace("/", ".") for p in PURE}
FORBIDDEN = {
    "dfs": {"pyfuse3", "mount", "nodes", "tools"},
    "tools": {"mount", "nodes", "pyfuse3"},
    "mount": {"nodes"},
    "nodes": {"mount", "pyfuse3"},
}
ENVIRON_READERS = {"nodes/main.py", "mount/main.py", "tools/cli.py"}
ENVIRON_HANDED_ON = ("tools/local/",)  # launchers copy the environment into the daemons they start
LOCAL_IMPORTS_ALLOWED = {"tools/cli.py"}  # the dispatch imports a subcommand's module when it runs
TXN_BUILDERS = ("dfs/meta/", "dfs/maint/", "dfs/mkfs.py", "dfs/zk/",
                "tools/benches/zkwirebench.py")  # measures the client's raw commit


def sources(root: Path):
    for package in PRODUCT:
        for path in sorted((root / package).rglob("*.py")):
            yield path, path.relative_to(root).as_posix(), ast.parse(path.read_text(), filename=str(path))


def module_of(rel: str) -> str:
    mod = rel[:-3].replace("/", ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


def imports(tree: ast.AST, rel: str) -> list[tuple[int, str, ast.AST]]:
    """(line, absolute dotted module, node) of every import, function-local ones and
    importlib.import_module("...") included."""
    here = module_of(rel)
    package = here if rel.endswith("__init__.py") else here.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [f"{mod}.{a.name}" for a in node.names]
            # `from dfs.zk import txn` imports the module dfs.zk.txn: count the deeper one
            out += [(node.lineno, n, node) for n in names] if mod in ("dfs", "dfs.zk", "dfs.blocks",
                                                                      "dfs.meta", "dfs.maint",
                                                                      "dfs.client") else [(node.lineno, mod, node)]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value, node))
    return out


def top(mod: str) -> str:
    return mod.split(".")[0]


def is_under(mod: str, package: str) -> bool:
    return mod == package or mod.startswith(package + ".")


def rule_packages(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        banned = FORBIDDEN.get(rel.split("/")[0], set())
        for line, mod, _ in imports(tree, rel):
            if top(mod) in banned:
                found.append(f"{rel}:{line} imports {mod}")
    return found


def rule_pure(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        if rel not in PURE:
            continue
        for line, mod, _ in imports(tree, rel):
            if top(mod) in STDLIB or top(mod) == "xxhash":
                continue
            if top(mod) == "dfs" and any(is_under(mod, p) or is_under(p, mod) for p in PURE_MODULES):
                continue
            if rel == "dfs/zk/wire.py" and (is_under(mod, "kazoo.protocol") or mod == "kazoo.exceptions"):
                continue
            if rel == "dfs/blocks/protocol.py" and is_under(mod, "cryptography.hazmat.primitives"):
                continue
            found.append(f"{rel}:{line} (a pure module) imports {mod}")
    return found


def rule_kazoo(root: Path) -> list[str]:
    return [f"{rel}:{line} imports {mod}" for _, rel, tree in sources(root)
            if not rel.startswith("dfs/zk/")
            for line, mod, _ in imports(tree, rel) if top(mod) == "kazoo"]


def rule_client(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        if rel.startswith(("dfs/client/", "mount/")):
            continue
        for line, mod, _ in imports(tree, rel):
            if is_under(mod, "dfs.client"):
                found.append(f"{rel}:{line} imports {mod} (only mount/ may)")
    return found


def rule_transactions(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        if rel.startswith(TXN_BUILDERS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "Txn":
                found.append(f"{rel}:{node.lineno} builds a ZooKeeper transaction")
    return found


def _mentions_paths(expr: ast.AST) -> bool:
    return any((isinstance(n, ast.Name) and n.id == "paths") or (isinstance(n, ast.Attribute) and n.attr == "paths")
               for n in ast.walk(expr))


def rule_znode_paths(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        if rel == "dfs/paths.py":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("/dfs"):
                found.append(f"{rel}:{node.lineno} spells a znode path {node.value!r}")
            elif isinstance(node, ast.JoinedStr):
                parts = node.values
                for i, part in enumerate(parts[:-1]):
                    nxt = parts[i + 1]
                    if (isinstance(part, ast.FormattedValue) and _mentions_paths(part.value)
                            and isinstance(nxt, ast.Constant) and str(nxt.value).startswith("/")):
                        found.append(f"{rel}:{node.lineno} joins a znode path outside dfs/paths.py")
                        break
    return found


def rule_environ(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        if rel in ENVIRON_READERS or rel.startswith(ENVIRON_HANDED_ON):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                found.append(f"{rel}:{node.lineno} reads os.{node.attr}")
    return found


def rule_local_imports(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        if rel in LOCAL_IMPORTS_ALLOWED:
            continue
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for line, mod, _ in imports(fn, rel):
                if top(mod) in PROJECT:
                    found.append(f"{rel}:{line} imports {mod} inside {fn.name}()")
    return sorted(set(found))


def rule_constructor_annotations(root: Path) -> list[str]:
    found = []
    for _, rel, tree in sources(root):
        for cls in ast.walk(tree):
            if not isinstance(cls, ast.ClassDef):
                continue
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
                    a = fn.args
                    for arg in a.posonlyargs + a.args[1:] + a.kwonlyargs:
                        if arg.annotation is None:
                            found.append(f"{rel}:{fn.lineno} {cls.name}({arg.arg}) is not annotated")
    return found


RULES = [rule_packages, rule_pure, rule_kazoo, rule_client, rule_transactions, rule_znode_paths,
         rule_environ, rule_local_imports, rule_constructor_annotations]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_rule_holds(rule):
    assert (REPO / "dfs" / "zk").is_dir()
    assert rule(REPO) == []


BAD = [
    (rule_packages, "dfs/bad.py", "import pyfuse3\n"),
    (rule_packages, "dfs/bad.py", "def f():\n    from mount import operations\n"),
    (rule_packages, "mount/bad.py", "from nodes.server import NodeServer\n"),
    (rule_packages, "nodes/bad.py", "import importlib\nimportlib.import_module('mount.main')\n"),
    (rule_packages, "tools/bad.py", "from nodes.store import BlockStore\n"),
    (rule_pure, "dfs/records.py", "import trio\n"),
    (rule_pure, "dfs/zk/txn.py", "from dfs.zk.session import WireZk\n"),
    (rule_pure, "dfs/paths.py", "from kazoo.protocol.serialization import Create\n"),
    (rule_kazoo, "nodes/bad.py", "from kazoo.exceptions import NoNodeError\n"),
    (rule_kazoo, "dfs/meta/bad.py", "import kazoo.client\n"),
    (rule_client, "dfs/meta/bad.py", "from dfs.client.view import ClientView\n"),
    (rule_client, "dfs/maint/bad.py", "from dfs.client import files\n"),
    (rule_client, "tools/bad.py", "import dfs.client.feed\n"),
    (rule_transactions, "tools/bad.py", "from dfs.zk import Txn\nt = Txn().delete('x')\n"),
    (rule_znode_paths, "tools/bad.py", "p = '/dfs/default/inodes'\n"),
    (rule_znode_paths, "nodes/bad.py", "def f(paths, n):\n    return f'{paths.gc}/{n}'\n"),
    (rule_environ, "dfs/bad.py", "import os\nx = os.environ.get('DFS_X')\n"),
    (rule_environ, "nodes/store2.py", "import os\nx = os.getenv('DFS_X')\n"),
    (rule_local_imports, "dfs/bad.py", "def f():\n    from dfs.records import InodeRecord\n"),
    (rule_local_imports, "mount/bad.py", "async def f():\n    import dfs.zk\n"),
    (rule_constructor_annotations, "dfs/bad.py", "class A:\n    def __init__(self, zk):\n        pass\n"),
]


@pytest.mark.parametrize("rule,rel,source", BAD, ids=lambda x: getattr(x, "__name__", None))
def test_rule_catches_violation(tmp_path, rule, rel, source):
    for package in PRODUCT:
        (tmp_path / package).mkdir()
    (tmp_path / "dfs" / "zk").mkdir()
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert len(rule(tmp_path)) == 1, rule(tmp_path)


@pytest.mark.parametrize("rule,rel,source", [
    (rule_pure, "dfs/zk/wire.py", "from kazoo.protocol.serialization import Create\nimport struct\n"),
    (rule_pure, "dfs/placement.py", "from dfs.records import NodeLive\nimport xxhash\n"),
    (rule_client, "mount/ok.py", "from dfs.client.files import FileData\n"),
    (rule_transactions, "dfs/meta/ok.py", "from dfs.zk import Txn\nt = Txn()\n"),
    (rule_environ, "mount/main.py", "import os\nx = os.environ.get('DFS_X')\n"),
    (rule_local_imports, "tools/cli.py", "def f():\n    from tools import status\n"),
    (rule_constructor_annotations, "dfs/ok.py", "class A:\n    def __init__(self, zk: 'ZkClient'):\n        pass\n"),
], ids=lambda x: getattr(x, "__name__", None))
def test_rule_allows_what_it_should(tmp_path, rule, rel, source):
    for package in PRODUCT:
        (tmp_path / package).mkdir()
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert rule(tmp_path) == []
