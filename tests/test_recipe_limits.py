"""Hostile recipes through the real CLI: each fails with exit 2 and one ``file:line`` stderr line, fast and small.

Every case runs ``python -m sparse_core.cli recipe check`` as a child process; its wall time and peak RSS (from
``getrusage(RUSAGE_CHILDREN)`` in a small launcher) are printed (``pytest -s`` shows the table). Memory is asserted loosely (200 MB, the budget the
issue sets; the interpreter alone is ~40 MB); time is only reported, never asserted (the machine is shared).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

MODIFIERS = """\
training_modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: {end}
"""


def billion_laughs() -> str:
    """~400 bytes; each level is 10 aliases of the one before (10**9 values if expanded)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    return "\n".join(lines) + "\n" + MODIFIERS.format(end=1)


def chain(n: int, step: str) -> str:
    """``v0: 1``, ``v1: eval(v0 <step>)``, ... in reverse file order (the worst order for a recursive resolver)."""
    lines = [f"v{i}: eval(v{i - 1} {step})" for i in range(n - 1, 0, -1)] + ["v0: 1"]
    return "\n".join(lines) + "\n" + MODIFIERS.format(end=f"eval(v{n - 1} / {n})")


# (case id, recipe text, regex the one stderr line must match)
BOMBS = [
    ("alias-bomb", billion_laughs(), r"r\.yaml:\d+: malformed YAML: aliases expand to .* values"),
    ("recursive-alias", "a: &a [1, *a]\n" + MODIFIERS.format(end=1), r"r\.yaml:1: .*refers to the collection"),
    ("int-bomb", "n: eval((9**999)**999)\n" + MODIFIERS.format(end="eval(n)"), r"r\.yaml:1: n: 9 \*\* 999 is larger"),
    ("int-bomb-in-modifier", MODIFIERS.format(end="eval(2 ** 62 * 2 ** 62 * 2 ** 62)"), r"r\.yaml:4: end_epoch: .*2\*\*63"),
    ("huge-int-literal", "n: " + "9" * 4000 + "\n" + MODIFIERS.format(end="eval(n)"), r"r\.yaml:1: n: value is an integer"),
    ("digits-past-python-limit", "n: " + "9" * 5000 + "\n" + MODIFIERS.format(end=1), r"r\.yaml:1: malformed YAML value"),
    ("deep-flow-nesting", "x: " + "[" * 5000 + "]" * 5000 + "\n" + MODIFIERS.format(end=1),
     r"r\.yaml:1: malformed YAML: brackets nest deeper"),
    ("deep-block-nesting", "x:\n" + "- " * 5000 + "1\n" + MODIFIERS.format(end=1), r"r\.yaml:2: .*nesting deeper"),
    ("deep-minus-in-eval", MODIFIERS.format(end="eval(" + "-" * 900 + "1)"), r"r\.yaml:4: end_epoch: (cannot parse|.*nests more than)"),
    ("deep-parens-in-eval", MODIFIERS.format(end="eval(" + "(" * 300 + "1" + ")" * 300 + ")"),
     r"r\.yaml:4: end_epoch: (cannot parse|.*nests more than)"),
    ("long-plus-chain-in-eval", MODIFIERS.format(end="eval(" + "+".join(["1"] * 3000) + ")"),
     r"r\.yaml:4: end_epoch: eval\(\.\.\.\) is \d+ characters long"),
    ("1000-chained-growing", chain(1000, "* 9"), r"r\.yaml:\d+: v\d+: result is an integer of \d+ bits"),
    ("1000-chained-cycle", chain(1000, "+ 1").replace("v0: 1", "v0: eval(v999 + 1)"),
     r"r\.yaml:\d+: v\d+: variables refer to each other in a cycle \(v\d+ -> v\d+ -> "),
]


# Runs the command and reports its own wall time and peak RSS. A child inherits the peak RSS of the process it was
# forked from (Linux keeps it across exec), so the CLI is started from this small interpreter, not from pytest
# (which may hold torch and hundreds of MB by now).
MEASURE = """\
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:]).returncode
wall = time.perf_counter() - start
print("measured", code, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def run_check(path: str) -> tuple[int, str, float, float]:
    """(exit code, stderr, wall seconds, peak RSS MB) of ``recipe check path`` in a child process."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sparse_core.cli", "recipe", "check", path]
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env, timeout=300)
    _, code, wall, rss_mb = proc.stdout.strip().splitlines()[-1].split()
    return int(code), proc.stderr, float(wall), float(rss_mb)


@pytest.mark.parametrize("name,text,pattern", BOMBS, ids=[b[0] for b in BOMBS])
def test_hostile_recipe_fails_fast_with_one_line(tmp_path, name, text, pattern):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    code, stderr, wall, rss_mb = run_check(str(path))
    print(f"\n{name:28} {len(text):>6} bytes  exit {code}  {wall:5.2f} s  peak RSS {rss_mb:5.1f} MB")
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert rss_mb < 200, f"{name}: peak RSS {rss_mb:.0f} MB"


def test_1000_chained_variables_resolve_without_recursion(tmp_path):
    """A long but valid chain is not an error: variables resolve in dependency order with a loop."""
    path = tmp_path / "chain.yaml"
    path.write_text(chain(1000, "+ 1"))
    code, stderr, wall, rss_mb = run_check(str(path))
    print(f"\n{'1000-chained-valid':28} exit {code}  {wall:5.2f} s  peak RSS {rss_mb:5.1f} MB")
    assert code == 0, stderr[-2000:]
    from sparse_core.recipe import load_recipe

    recipe = load_recipe(path)
    assert recipe.variables["v999"] == 1000 and recipe.num_epochs() == 1.0


@pytest.mark.parametrize("args,pattern", [
    ('{"v0": Infinity}', r"chain\.yaml:--recipe-args: v0: inf is not a finite number"),
    ('{"v0": NaN}', r"--recipe-args: v0: nan is not a finite number"),
    ('{"v0": 1' + "0" * 40 + "}", r"--recipe-args: v0: value is an integer of \d+ bits"),
    ('{"v0": 1' + "0" * 5000 + "}", r"^--recipe-args: not usable JSON"),
    ('{"v0": ' + "[" * 5000 + "]" * 5000 + "}", r"^--recipe-args: (not usable JSON|nested more than)"),
    ('{"v0": ' + "[" * 60 + "]" * 60 + "}", r"^--recipe-args: nested more than 48 levels"),
    ('{"v0": "eval(9 ** 99)"}', r"--recipe-args: v0: 9 \*\* 99 is larger than 2\*\*63"),
])
def test_hostile_recipe_args_are_one_clean_error(tmp_path, args, pattern):
    from sparse_core.errors import UserError
    from sparse_core.recipe import load_recipe, parse_recipe_args

    path = tmp_path / "chain.yaml"
    path.write_text(chain(3, "+ 1"))
    with pytest.raises(UserError, match=pattern):
        load_recipe(path, parse_recipe_args(args))


@pytest.mark.parametrize("value", ["!!timestamp 2020-99-99x", "!!bool maybe", "!!map [1]", "!!seq {a: 1}", "2020-13-45",
                                   "!!int 12a", "!!set [1]"])
def test_bad_explicit_yaml_tags_are_one_clean_error(tmp_path, value):
    from sparse_core.errors import UserError
    from sparse_core.recipe import load_recipe

    path = tmp_path / "tags.yaml"
    path.write_text("n: 1\nwhen: " + value + "\n" + MODIFIERS.format(end=1))
    with pytest.raises(UserError, match=r"tags\.yaml:2: malformed YAML"):
        load_recipe(path)
