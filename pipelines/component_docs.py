"""Each component folder's ``README.md`` and ``metadata.yaml``, generated from its ``component.py``.

The docstring (summary, description, ``Args:``, ``Returns:``) and the signature are the one source: the README's
overview, input and output tables, image and step function, and the metadata's inputs/outputs summary all come from
them, so the docs cannot drift from the code (``tests/test_components.py`` runs ``--check``). Two things are kept
from the files on disk: ``stability`` and ``tags`` in ``metadata.yaml`` (a person's judgement), and anything after
the ``<!-- custom-content -->`` line of the README (hand-written sections), as kubeflow/pipelines-components does.

    python -m pipelines.component_docs --write    # regenerate every component's README.md and metadata.yaml
    python -m pipelines.component_docs --check    # exit 1 naming each file that differs from its code
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path

import yaml

from sparse_core.atomic import atomic_file
from sparse_core.errors import UserError

ROOT = Path(__file__).resolve().parents[1] / "components"
MARKER = "<!-- custom-content -->"
STABILITY = ("alpha", "beta", "stable")
HEADER = "# Generated from component.py by `python -m pipelines.component_docs --write`; edit only stability and tags."
SECTION = re.compile(r"^(Args|Returns):\s*$")


def component_names(root: Path = ROOT) -> list[str]:
    return sorted(p.parent.name for p in root.glob("*/component.py"))


def parse_docstring(doc: str, where: str) -> tuple[str, dict[str, str], str]:
    """Google-style docstring -> (overview paragraphs, {arg: description}, returns)."""
    overview, args, returns, section, current = [], {}, [], None, None
    for line in inspect.cleandoc(doc or "").splitlines():
        m = SECTION.match(line)
        if m:
            section = m.group(1)
            continue
        if section is None:
            overview.append(line)
        elif section == "Returns":
            returns.append(line.strip())
        elif re.match(r"^    \w+:", line):
            current, _, text = line.strip().partition(":")
            args[current] = text.strip()
        elif line.strip() and current:
            args[current] += " " + line.strip()
    text = "\n".join(overview).strip()
    if not text:
        raise UserError(f"{where}: the component function has no docstring; expected a summary and Args:")
    paragraphs = [_md(" ".join(p.split())) for p in text.split("\n\n")]
    return "\n\n".join(paragraphs), {k: _md(v) for k, v in args.items()}, _md(" ".join(returns).strip())


def _md(text: str) -> str:
    """reStructuredText literals (``x``) as Markdown code (`x`)."""
    return re.sub(r"``(.+?)``", r"`\1`", text)


def type_name(annotation) -> str:
    """``Input[Model]``, ``Input[Model] (optional)``, ``Output[Metrics]``, ``str``, ``List[str]``, ..."""
    if typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return f"{type_name(inner[0])} (optional)"
    if typing.get_origin(annotation) is typing.Annotated:
        artifact, marker = typing.get_args(annotation)[:2]
        return f"{'Input' if 'Input' in marker.__name__ else 'Output'}[{artifact.__name__}]"
    if typing.get_origin(annotation) is list:
        return f"List[{typing.get_args(annotation)[0].__name__}]"
    if getattr(annotation, "__module__", "").startswith("kfp."):
        return f"dsl.{annotation.__name__}"
    return annotation.__name__


def describe(name: str, root: Path = ROOT, comp=None) -> dict:
    """Everything the docs say about component ``name``, read from its module (imported, unless ``comp`` is given)
    and its source (parsed)."""
    where = f"components/{name}/component.py"
    comp = comp or getattr(importlib.import_module(f"components.{name}.component"), name)
    func = comp.python_func
    overview, arg_docs, returns = parse_docstring(func.__doc__, where)
    sig = inspect.signature(func)
    inputs, outputs = [], []
    for pname, param in sig.parameters.items():
        if pname not in arg_docs:
            raise UserError(f"{where}: parameter `{pname}` is not described under Args:; expected "
                            f"'{pname}: <what it is>' in the docstring")
        kind = type_name(param.annotation)
        row = {"name": pname, "type": kind, "doc": arg_docs[pname]}
        if kind.startswith("Output["):
            outputs.append(row)
            continue
        row["required"] = param.default is inspect.Parameter.empty
        row["default"] = None if row["required"] else param.default
        inputs.append(row)
    if sig.return_annotation not in (inspect.Signature.empty, None):
        if not returns:
            raise UserError(f"{where}: returns {type_name(sig.return_annotation)} but has no Returns: section")
        outputs.append({"name": "Output", "type": type_name(sig.return_annotation), "doc": returns})
    cuda = comp.component_spec.implementation.container.image.endswith("-cuda")
    return {"name": name, "overview": overview, "inputs": inputs, "outputs": outputs,
            "step": _step_function(root / name / "component.py", name), "image": "cuda" if cuda else "cpu"}


def _step_function(path: Path, name: str) -> str:
    """The one ``steps.X`` the component body calls (tests/test_components.py holds each body to one)."""
    tree = ast.parse(path.read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    calls = [n.func.attr for n in ast.walk(func) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and isinstance(n.func.value, ast.Name) and n.func.value.id == "steps"]
    return f"sparse_core.steps.{calls[0]}" if calls else ""


def render_metadata(info: dict, existing: dict) -> str:
    """metadata.yaml: name, stability and tags (kept from ``existing``), step, image, inputs/outputs summary."""
    stability = existing.get("stability", "alpha")
    if stability not in STABILITY:
        raise UserError(f"components/{info['name']}/metadata.yaml: stability: {stability!r}; expected one of "
                        f"{', '.join(STABILITY)}")
    inputs = {}
    for row in info["inputs"]:
        inputs[row["name"]] = {"type": row["type"], "required": True} if row["required"] else \
            {"type": row["type"], "default": row["default"]}
    data = {"name": info["name"], "stability": stability, "tags": list(existing.get("tags") or []),
            "step": info["step"], "image": info["image"], "inputs": inputs,
            "outputs": {row["name"]: {"type": row["type"]} for row in info["outputs"]}}
    return HEADER + "\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(row: dict) -> str:
    if row["required"]:
        return "required"
    return "none" if row["default"] is None else f"`{row['default']!r}`"


def render_readme(info: dict, stability: str, custom: str) -> str:
    """README.md: generated part, then the marker and the hand-written ``custom`` part as it was."""
    name, env = info["name"], "SPARSEPIPE_IMAGE_CUDA" if info["image"] == "cuda" else "SPARSEPIPE_IMAGE"
    image = 'component_image("cuda")' if info["image"] == "cuda" else "component_image()"
    out = [f"# {name}", "",
           f"> Stability: **{stability}**. Generated from `component.py` by `python -m pipelines.component_docs "
           f"--write`: edit the docstring, not this file (text after the custom-content marker is kept).", "",
           info["overview"], "",
           f"Component: `components/{name}/component.py` (KFP v2 lightweight Python component). Its body calls "
           f"`{info['step']}`, so the step runs the same from a shell, a test, `kfp.local` or a pod.",
           f"Image: `sparse_core.image.{image}` (override with `{env}` at compile time).", "",
           "## Inputs", "", "| name | type | default | meaning |", "|---|---|---|---|"]
    out += [f"| `{r['name']}` | {r['type']} | {_default(r)} | {_cell(r['doc'])} |" for r in info["inputs"]]
    out += ["", "## Outputs", "", "| name | type | meaning |", "|---|---|---|"]
    out += [f"| `{r['name']}`{' (return value)' if r['name'] == 'Output' else ''} | {r['type']} | {_cell(r['doc'])} |"
            for r in info["outputs"]]
    names = {r["name"] for r in info["inputs"]}
    if "parent_run_id" in names and name not in ("open_run", "close_run"):
        out += ["", "## Tracking and caching" if "cache_dir" in names else "## Tracking", "",
                "The step opens an MLflow child run under `parent_run_id`, logs its params, metrics, small artifacts "
                "and lineage tags, and marks the run FAILED with tag `sparsepipe.error` (the one-line cause) if it "
                "raises."]
        if "cache_dir" in names:
            out[-1] += (" Its output is cached by content (`sparse_core.step_cache`; `cache_dir=none` turns that "
                        "off). On a hit the stored output is restored, the child run is tagged "
                        "`sparsepipe.cache=hit` and the stored metrics are logged again.")
    out += ["", MARKER]
    return "\n".join(out) + ("\n" + custom.strip("\n") + "\n" if custom.strip() else "\n")


def render(name: str, root: Path = ROOT) -> dict[str, str]:
    """file name -> the text it should hold, for component ``name``."""
    folder = root / name
    meta_path, readme_path = folder / "metadata.yaml", folder / "README.md"
    existing = yaml.safe_load(meta_path.read_text()) if meta_path.exists() else {}
    if not isinstance(existing, dict):
        raise UserError(f"{meta_path}: expected a YAML mapping (name, stability, tags, ...)")
    readme = readme_path.read_text() if readme_path.exists() else ""
    custom = readme.split(MARKER, 1)[1] if MARKER in readme else ""
    info = describe(name, root)
    metadata = render_metadata(info, existing)
    return {"README.md": render_readme(info, yaml.safe_load(metadata)["stability"], custom),
            "metadata.yaml": metadata}


def drift(root: Path = ROOT) -> list[str]:
    """Files (relative to the repository) whose text differs from what their component's code generates."""
    stale = []
    for name in component_names(root):
        for fname, text in render(name, root).items():
            path = root / name / fname
            if not path.exists() or path.read_text() != text:
                stale.append(f"components/{name}/{fname}")
    return stale


def write(root: Path = ROOT) -> list[str]:
    """Regenerate every component's files; returns those that changed."""
    changed = []
    for name in component_names(root):
        for fname, text in render(name, root).items():
            path = root / name / fname
            if not path.exists() or path.read_text() != text:
                with atomic_file(path) as tmp:
                    tmp.write_text(text)
                changed.append(f"components/{name}/{fname}")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.component_docs", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="regenerate README.md and metadata.yaml")
    mode.add_argument("--check", action="store_true", help="exit 1 when a file differs from its code")
    args = parser.parse_args(argv)
    try:
        files = write() if args.write else drift()
    except UserError as err:
        print(f"component_docs: error: {err}", file=sys.stderr)
        return 2
    for f in files:
        print(f"{'wrote' if args.write else 'out of date'}: {f}")
    if args.check and files:
        print("run: python -m pipelines.component_docs --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
