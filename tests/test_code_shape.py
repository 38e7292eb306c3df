"""House rules that keep the code livable: no function over 80 lines, no file over 500, in the library, the
components and the pipelines (tests and benchmarks are exempt)."""

from __future__ import annotations

import ast
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
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "sparse_core").rglob("*.py")
                 for line in p.read_text().splitlines()
                 if line.strip().startswith(("import kfp", "from kfp", "import pipelines", "from pipelines"))]
    assert not offenders, offenders
