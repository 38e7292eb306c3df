"""House rules that keep the code livable: no function over 80 lines, no file over 500, in the library, the
components and the pipelines (tests and benchmarks are exempt); no import cycle in the library, and no KFP in it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FUNCTION, MAX_FILE = 80, 500


def test_no_long_functions_or_files():
    too_long = []
    for folder in ("sparse_core", "components", "pipelines"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            rel = path.relative_to(ROOT)
            if len(text.splitlines()) > MAX_FILE:
                too_long.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > MAX_FUNCTION:
                        too_long.append(f"{rel}:{node.lineno} {node.name}(): {length} lines")
    assert not too_long, "\n".join(too_long)


def test_sparse_core_never_imports_kfp_or_pipelines():
    """Not by an import statement, nor by a module name in a string (importlib): commands from ``pipelines/`` join
    the CLI through the ``sparsepipe.commands`` entry points in pyproject.toml."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "sparse_core").rglob("*.py")
                 for line in p.read_text().splitlines()
                 if line.strip().startswith(("import kfp", "from kfp", "import pipelines", "from pipelines"))]
    offenders += [f"{p.relative_to(ROOT)}:{node.lineno} {node.value!r}" for p in (ROOT / "sparse_core").rglob("*.py")
                  for node in ast.walk(ast.parse(p.read_text()))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.fullmatch(r"(kfp|pipelines)(\.\w+)*", node.value)]
    assert not offenders, offenders


def _sparse_core_import_graph() -> dict[str, set[str]]:
    """Module -> the sparse_core modules it imports, at module level or inside functions (an import inside a
    function still ties the two modules together); `from pkg import mod` counts as an import of pkg.mod."""
    files = {}
    for path in (ROOT / "sparse_core").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {module: set() for module in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parents = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parents + ([node.module] if node.module else []))
                targets = {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
            elif isinstance(node, ast.Import):
                targets = {a.name for a in node.names}
            else:
                continue
            graph[module] |= {t for t in targets if t in files and t != module}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_no_import_cycles_in_sparse_core():
    """Modules that import each other, directly or through others, are one concept split in two or a shared
    piece living in the wrong place. A package importing its own submodule (and back) is fine."""
    graph = _sparse_core_import_graph()
    reach = {module: _reachable(graph, module) for module in graph}
    cycles = set()
    for module in graph:
        group = tuple(sorted({module} | {other for other in reach[module] if module in reach[other]}))
        is_package_and_child = len(group) == 2 and group[1].startswith(group[0] + ".")
        if len(group) > 1 and not is_package_and_child:
            cycles.add(" <-> ".join(group))
    assert not cycles, "import cycles in sparse_core:\n" + "\n".join(sorted(cycles))
