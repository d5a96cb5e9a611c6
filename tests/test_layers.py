"""The library's layers: imports run one way only, from the CLI down to the pure tensor math.

Each package of ``rftlib`` has a rank; a module may import modules of lower rank and of its own
package, never of a higher rank or of another package of the same rank (``core`` is pure tensor math
and may not touch ``files``, although both sit just above the shared ``errors`` and ``progress``).
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: rank of each top-level unit of rftlib, lowest first.
RANKS = {
    "errors": 0, "progress": 0,
    "core": 1, "files": 1,
    "models": 2,
    "worlds": 3,
    "steps": 4,
    "book": 5,
    "cli": 6, "__main__": 6,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "rftlib":
                found += [(node.lineno, f"rftlib.{a.name}") for a in node.names]
            elif target.startswith("rftlib."):
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("rftlib.")]
    return found


def layer_violations(package_dir: Path) -> list[str]:
    """Every import in ``package_dir`` (an ``rftlib`` tree) that runs against the layers."""
    bad = []
    for path in sorted(package_dir.rglob("*.py")):
        rel = path.relative_to(package_dir.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        module = ".".join(parts)
        own = _unit(module)
        if own == "__init__":
            continue  # the package's own __init__ may name anything
        if own not in RANKS:
            bad.append(f"{module}: not in a known layer (add it to RANKS)")
            continue
        for line, target in _imports(path, module):
            other = _unit(target)
            if other == own:
                continue
            if other not in RANKS:
                bad.append(f"{module}:{line} imports {target}, which is in no known layer")
            elif RANKS[other] >= RANKS[own]:
                bad.append(f"{module}:{line} ({own}, rank {RANKS[own]}) imports {target} ({other}, rank {RANKS[other]})")
    return bad


def test_imports_run_one_way():
    assert layer_violations(ROOT / "rftlib") == []


def test_every_module_is_in_a_layer():
    units = {p.name if p.is_dir() else p.stem for p in (ROOT / "rftlib").iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert units - {"__init__"} <= set(RANKS), units - set(RANKS)


@pytest.mark.parametrize("importer, target", [
    ("core/math.py", "from rftlib.steps import common"),
    ("core/math.py", "from rftlib.files.io import atomic_write_csv"),
    ("models/m.py", "from ..book import runner"),
    ("worlds/w.py", "import rftlib.cli"),
])
def test_an_upward_import_is_caught(tmp_path, importer, target):
    pkg = tmp_path / "rftlib"
    path = pkg / importer
    path.parent.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (path.parent / "__init__.py").write_text("")
    path.write_text(textwrap.dedent(f"""
        import torch
        from rftlib.errors import ParameterError
        def f():
            {target}
    """))
    found = layer_violations(pkg)
    assert len(found) == 1 and found[0].startswith(importer[:-3].replace("/", ".").join(["rftlib.", ""])), found


#: No function of rftlib is longer than this many lines, docstring included (issue: a library a
#: newcomer reads in an afternoon).
MAX_FUNCTION_LINES = 60


def long_functions(package_dir: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``module:line name (n lines)`` of every function or method longer than ``limit`` lines."""
    out = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > limit:
                    out.append(f"{path.relative_to(package_dir.parent)}:{node.lineno} {node.name} ({n} lines)")
    return out


def test_no_function_is_longer_than_the_limit():
    assert long_functions(ROOT / "rftlib") == []


def test_a_long_function_is_caught(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    assert long_functions(tmp_path) == [f"{tmp_path.name}/m.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]
