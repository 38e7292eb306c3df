"""Fuzz the recipe parser and the three label readers with mutated real inputs: the only exception allowed is
``UserError``, and each input must finish within a time and memory bound.

Seeds are real: the recipes in tests/recipes/ (plus a SparseML string-variable recipe), and YOLO / COCO / VOC
label files generated from a synthetic data set. Hypothesis drives the mutations (derandomized: the same inputs
every run). Sizes: ``SPARSEPIPE_FUZZ_RECIPES`` (default 2000) recipe inputs and ``SPARSEPIPE_FUZZ_LABELS`` (default
1000) inputs per reader; ``SPARSEPIPE_FUZZ_RANDOM=1`` draws new inputs each run. Each test prints inputs tried,
outcomes, time and the worst input's peak memory (``pytest -s``).
"""

from __future__ import annotations

import copy
import json
import os
import re
import resource
import signal
import time
import warnings
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")  # a dev extra (pyproject); CI installs it
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparse_core.errors import UserError  # noqa: E402

N_RECIPES = int(os.environ.get("SPARSEPIPE_FUZZ_RECIPES", "2000"))
N_LABELS = int(os.environ.get("SPARSEPIPE_FUZZ_LABELS", "1000"))
SECONDS_PER_INPUT = 20  # a hang guard, far above the milliseconds an input takes: not a timing assertion
MB_PER_INPUT = 200
RECIPES = Path(__file__).parent / "recipes"

FUZZ = settings(deadline=None, database=None, derandomize=os.environ.get("SPARSEPIPE_FUZZ_RANDOM") != "1",
                suppress_health_check=list(HealthCheck), print_blob=True)

# values that broke parsers before, or could: bombs, huge numbers, bad types, YAML/JSON/XML syntax pieces
NASTY = [
    "0", "-1", "1e400", "-1e400", "nan", ".nan", ".inf", "-.inf", "9" * 40, "9" * 5000, "1e-320", "0x1F", "1_000",
    "", "null", "~", "true", "[]", "{}", "[" * 60, "]]", "{" * 60, "'", '"', "\\", "\x00", "\t", "é", "\u202e", "\ufeff",
    "&a", "*a", "&a [*a]", "!Foo", "!!python/object/apply:os.system ['true']", "<<: *a", "<<: [1]", "eval(",
    "eval(9**999)", "eval((9**99)**99)", "eval(" + "-" * 300 + "1)", "eval(" + "(" * 120 + "1" + ")" * 120 + ")",
    "eval(1" + "+1" * 400 + ")", "eval(x.__class__)", "eval(__import__('os'))", "eval(num_epochs)", "eval(mask_type)",
    "eval(max())", "eval(round(1, 10**9))", "eval(int(1e300))", "eval(2**62*4)", "eval(-8 ** 0.5)", "eval(1/0)",
    "---", "...", "%YAML 1.1", "? ", ": ", "- ", "#", "\n", "\r", "re:(", "__ALL_PRUNABLE__", "2020-13-45",
    "!!binary xx", "!!float abc", "!!int 12a", "!!timestamp 2020-99-99", "!!timestamp x", "!!bool maybe", "!!map [1]",
    "!!seq {a: 1}", "!!set [1]", "!!omap [1]", "? [a]\n: 1", "<", ">", "&amp;", "&zz;",
    "<!DOCTYPE r [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;'>"
    "<!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY d '&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;'>]>",
    "<!ENTITY x SYSTEM 'file:///etc/hostname'>", "&x;", "<![CDATA[", "]]>", "<object>", "</object>", "Infinity",
    "NaN", "-0", "1e9", "65536", "4294967297", "-2", "0.5", "1.0000001", "1e308", "-1e308", "true", "false",
    '"../../x.png"', '"/etc/hostname"', '{"size": [100000, 100000], "counts": [10000000000]}',
    '{"size": [64, 64], "counts": "' + "0" * 50 + '"}', '{"size": [-1, 5], "counts": [-5]}', "[[1, 2, 3], 4]",
    "[[1e999, 2], [3]]", "[" * 3000 + "]" * 3000, '{"counts": "\u00ff\u00ff"}', "[1, [2, [3]]]", "9" * 400, "x" * 5000,
]
# whole JSON values for COCO structure mutations
JSON_NASTY = [
    10**400, -1, 0, 0.5, 1e308, float("inf"), float("nan"), "", "x", "../../x.png", None, True, [], {}, [[]], [1, [2]],
    [[1, 2, 3, 4, 5, 6], 4], {"size": [64, 64], "counts": "0" * 50}, {"size": [10**5, 10**5], "counts": [10**10]},
    {"size": [64, 64], "counts": [4095, 1]}, {"size": [64, 64], "counts": "o" * 5000}, {"size": [-1, 0], "counts": []},
    list(range(3000)), "9" * 5000, "x" * 5000, 2**31, [10**400, 1, 2, 3],
]
SCALAR = re.compile(r'-?\d[\w.+-]*|"[^"\n]*"|(?<=>)[^<\n]+(?=<)|\b(?:true|false|null)\b')
BLOB = st.text(alphabet=st.sampled_from(list("0123456789 .-e,:[]{}\"'<>/&;!*\n\t#xyzé")), max_size=40)


class InputTimeout(BaseException):
    """Raised by the alarm: a BaseException so no ``except Exception`` in the code under test can swallow it."""


def _on_alarm(signum, frame):
    raise InputTimeout(f"input took over {SECONDS_PER_INPUT} s")


@st.composite
def mutated(draw, seeds: list[str]) -> str:
    """One seed text with 1-4 mutations: token/line/value replacements, insertions, deletions, truncation."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        lines = text.split("\n")
        kind = draw(st.integers(0, 9))
        nasty = draw(st.one_of(st.sampled_from(NASTY), BLOB))
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        row = draw(st.integers(0, max(len(lines) - 1, 0)))
        if kind == 0:  # replace the value of a `key: value` line (or the whole line)
            head, sep, _ = lines[row].partition(": ")
            lines[row] = head + sep + nasty if sep else nasty
        elif kind == 1:  # insert at a random place
            text = text[:pos] + nasty + text[pos:]
            continue
        elif kind == 2:  # delete a span
            text = text[:pos] + text[pos + draw(st.integers(1, 80)):]
            continue
        elif kind == 3:  # duplicate a line (a modifier field, a label row, an XML element)
            lines.insert(row, lines[row])
        elif kind == 4:
            del lines[row]
        elif kind == 5:  # re-indent
            lines[row] = " " * draw(st.integers(0, 8)) + lines[row].lstrip()
        elif kind == 6:
            text = text[:pos]
            continue
        elif kind == 7:  # replace one whitespace-separated token
            words = lines[row].split(" ")
            words[draw(st.integers(0, len(words) - 1))] = nasty
            lines[row] = " ".join(words)
        elif kind == 8:  # replace one scalar: a number, a JSON string, XML element text
            found = list(SCALAR.finditer(text))
            if found:
                hit = found[draw(st.integers(0, len(found) - 1))]
                text = text[:hit.start()] + nasty + text[hit.end():]
            continue
        else:  # swap two lines
            other = draw(st.integers(0, len(lines) - 1))
            lines[row], lines[other] = lines[other], lines[row]
        text = "\n".join(lines)
    return text


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@st.composite
def json_mutated(draw, doc):
    """``doc`` with 1-3 structural changes: a value somewhere replaced, a key deleted or added, a list item doubled."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        node = doc
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = keys[draw(st.integers(0, len(keys) - 1))]
            child = node[key]
            if isinstance(child, (dict, list)) and child and draw(st.integers(0, 3)):
                node = child
                continue
            action = draw(st.integers(0, 3))
            if action == 0 and isinstance(node, dict):
                del node[key]
            elif action == 1 and isinstance(node, list):
                node.append(copy.deepcopy(child))
            elif action == 2 and isinstance(node, dict):
                node[draw(st.sampled_from(["id", "bbox", "segmentation", "iscrowd", "size", "counts", "width"]))] = \
                    copy.deepcopy(draw(st.sampled_from(JSON_NASTY)))
            else:
                node[key] = copy.deepcopy(draw(st.sampled_from(JSON_NASTY)))
            break
    return json.dumps(doc)


class Bounded:
    """Runs inputs under a time guard and memory bounds; counts outcomes for the printed summary.

    Memory: no input may raise the process's peak RSS by MB_PER_INPUT (cheap to check, unlike tracing every
    allocation), and an address-space cap turns a multi-gigabyte allocation into a MemoryError (a failure here)
    instead of a visit from the OOM killer. A warning is a failure too: the CLI would print it as a second line.
    """

    def __init__(self, name: str):
        self.name, self.counts, self.slowest, self.worst_mb = name, {"ok": 0, "UserError": 0}, 0.0, 0.0
        self.start = time.perf_counter()

    def __enter__(self):
        self.old = signal.signal(signal.SIGALRM, _on_alarm)
        self.old_as = resource.getrlimit(resource.RLIMIT_AS)
        vm_kb = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmSize:"))
        cap = vm_kb * 1024 + 2 * 2**30
        if self.old_as[1] == resource.RLIM_INFINITY or cap < self.old_as[1]:
            resource.setrlimit(resource.RLIMIT_AS, (cap, self.old_as[1]))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_AS, self.old_as)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)
        total = sum(self.counts.values())
        print(f"\nfuzz {self.name}: {total} inputs, {self.counts['ok']} accepted, {self.counts['UserError']} UserError, "
              f"0 other exceptions; {time.perf_counter() - self.start:.1f} s; slowest input {self.slowest:.2f} s; "
              f"largest peak-RSS rise by one input {self.worst_mb:.1f} MB")

    def run(self, func, *args) -> None:
        before, t0 = _peak_mb(), time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, SECONDS_PER_INPUT)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                func(*args)
            self.counts["ok"] += 1
        except UserError as err:
            assert str(err).strip(), "empty UserError message"
            self.counts["UserError"] += 1
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        assert not caught, f"{self.name}: warning {caught[0].category.__name__}: {caught[0].message}"
        self.slowest = max(self.slowest, time.perf_counter() - t0)
        rise = _peak_mb() - before
        self.worst_mb = max(self.worst_mb, rise)
        assert rise < MB_PER_INPUT, f"{self.name}: one input raised peak RSS by {rise:.0f} MB"


# ------------------------------------------------------------------------------------------------------ recipes


def _exercise_recipe(path: Path) -> None:
    """What ``recipe check`` / ``resolve`` / training stages do with a recipe, in process."""
    from sparse_core.recipe import load_recipe

    try:
        recipe = load_recipe(path)
    except UserError as err:
        assert str(err).startswith(str(path)), f"error without the file name: {err}"
        raise
    recipe.to_yaml()
    json.dumps(recipe.summary(), default=str)
    json.dumps([m.fields() for m in recipe.modifiers], default=str)
    recipe.split("sparse")  # each stage is serialised (to_yaml) as it is built
    if recipe.qat_start_epoch() is not None:
        recipe.split("qat")


def test_fuzz_recipe_parser(tmp_path):
    seeds = [p.read_text() for p in sorted(RECIPES.iterdir()) if p.suffix in (".yaml", ".md")]
    from test_recipe_sparseml_strings import QUANT, STRING_VARS

    seeds.append(STRING_VARS.format(epochs=4.0, prune_end=2.0) + QUANT)
    with Bounded("recipes") as box:

        @settings(FUZZ, max_examples=N_RECIPES)
        @given(text=mutated(seeds), markdown=st.booleans())
        def one(text, markdown):
            path = tmp_path / ("r.md" if markdown and text.lstrip().startswith("<!--") else "r.yaml")
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
            box.run(_exercise_recipe, path)

        one()
    assert sum(box.counts.values()) >= min(N_RECIPES, 100)


# ------------------------------------------------------------------------------------------------ label readers


@pytest.fixture(scope="module")
def label_sources(tmp_path_factory) -> dict[str, Path]:
    """A generated segment data set as YOLO, COCO (polygons plus one RLE mask) and VOC."""
    from sparse_core.data.synth import synth_dataset
    from sparse_core.data.writers import write_coco, write_voc

    root = tmp_path_factory.mktemp("labels")
    src = synth_dataset(root / "yolo", task="segment", n_train=3, n_val=2, imgsz=64, n_classes=3, seed=5)
    coco = write_coco(src, root / "coco")
    ann = coco / "annotations" / "instances_train.json"
    doc = json.loads(ann.read_text())
    img = doc["images"][0]
    doc["annotations"].append({"id": 999, "image_id": img["id"], "category_id": doc["categories"][0]["id"],
                               "iscrowd": 0, "bbox": [10, 10, 20, 20],
                               "segmentation": {"size": [img["height"], img["width"]],
                                                "counts": [img["width"] * 10 + 10, 20, 44, 20,
                                                           img["height"] * img["width"] - img["width"] * 10 - 94]}})
    ann.write_text(json.dumps(doc, indent=1))
    return {"yolo": src, "coco": coco, "voc": write_voc(src, root / "voc")}


def _target(fmt: str, root: Path) -> Path:
    """The file the fuzzer rewrites for each input: one label file, the train annotations, one VOC XML."""
    if fmt == "yolo":
        return sorted((root.parent / "labels" / "train").glob("*.txt"))[0]
    if fmt == "coco":
        return root / "annotations" / "instances_train.json"
    return sorted((root / "Annotations").glob("*.xml"))[0]


def _read(reader, src: Path, task: str, strict: bool) -> None:
    from sparse_core.data.labels import Problems

    problems = Problems(strict=strict)
    items, names = reader(src, task, None, problems)
    problems.raise_if_any()
    assert isinstance(items, list) and isinstance(names, list)


@pytest.mark.parametrize("fmt", ["yolo", "coco", "voc"])
def test_fuzz_label_reader(fmt, label_sources, tmp_path):
    from sparse_core.data import prepare

    src = label_sources[fmt]
    target = _target(fmt, src)
    original = target.read_text()
    seeds = [original] + ([t.read_text() for t in sorted(target.parent.glob("*.txt"))[1:3]] if fmt == "yolo" else [])
    tasks = ["detect"] if fmt == "voc" else ["detect", "segment"]
    texts = mutated(seeds)
    if fmt == "coco":
        texts = st.one_of(texts, json_mutated(json.loads(original)))
    try:
        with Bounded(f"{fmt} reader") as box:

            @settings(FUZZ, max_examples=N_LABELS)
            @given(text=texts, task=st.sampled_from(tasks), strict=st.booleans())
            def one(text, task, strict):
                target.write_text(text, encoding="utf-8", errors="surrogatepass")
                box.run(_read, prepare.READERS[fmt], src, task, strict)

            one()
    finally:
        target.write_text(original)
    assert sum(box.counts.values()) >= min(N_LABELS, 100)
