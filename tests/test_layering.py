"""The layering rule, checked on the source: `dfs/` is the core and imports none of
pyfuse3, `mount`, `nodes` or `tools`; `mount` and `nodes` never import each other."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "dfs": {"pyfuse3", "mount", "nodes", "tools"},
    "mount": {"nodes"},
    "nodes": {"mount", "pyfuse3"},
}


def imported_modules(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in a file, including function-local ones."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside its own package
                out.append((node.lineno, package))
            elif node.module:
                out.append((node.lineno, node.module.split(".")[0]))
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", ""))
              in ("import_module", "__import__") and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.lineno, node.args[0].value.split(".")[0]))
    return out


def violations(root: Path = REPO) -> list[str]:
    found = []
    for package, banned in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, module in imported_modules(path, package):
                if module in banned:
                    found.append(f"{path.relative_to(root)}:{line} imports {module}")
    return found


def test_layering_rule_holds():
    assert (REPO / "dfs").is_dir()
    assert violations() == []


@pytest.mark.parametrize("package,source", [
    ("dfs", "import pyfuse3\n"),
    ("dfs", "from tools.cli import main\n"),
    ("dfs", "def f():\n    from mount import operations\n"),
    ("mount", "from nodes.server import Server\n"),
    ("nodes", "import importlib\nimportlib.import_module('mount.main')\n"),
])
def test_layering_check_catches_violations(tmp_path, package, source):
    (tmp_path / package).mkdir()
    (tmp_path / package / "bad.py").write_text(source)
    assert len(violations(tmp_path)) == 1
