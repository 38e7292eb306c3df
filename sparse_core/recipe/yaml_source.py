"""Reading recipe text: YAML or Markdown front matter, ``!Tag`` modifiers, and the line of every key.

Errors must name the file line, so mappings load as ``LineDict`` (remembers its own line and each key's line).
``!ModifierName`` tags load as a LineDict with ``tag`` set; anchors/aliases (SparseML's ``.md`` recipes use them)
are plain YAML and just work.
"""

from __future__ import annotations

import re

import yaml

from sparse_core.errors import UserError


class LineDict(dict):
    """A YAML mapping with ``line`` (1-based), ``key_lines`` {key: line} and ``tag`` (``!Name`` without '!')."""

    line: int = 0
    tag: str | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.key_lines: dict = {}


class LineList(list):
    """A YAML sequence with ``line`` and ``item_lines`` (the line of each item)."""

    line: int = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.item_lines: list[int] = []


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps lines and accepts any ``!Tag``; a subclass so the global SafeLoader is untouched."""


def _fill_mapping(loader: _Loader, node: yaml.MappingNode, data: LineDict) -> None:
    loader.flatten_mapping(node)  # YAML merge keys (<<)
    data.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(None, None, "unhashable key", key_node.start_mark) from None
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_lines[key] = key_node.start_mark.line + 1


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = LineDict()
    yield data
    _fill_mapping(loader, node, data)


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = LineList()
    yield data
    data.line = node.start_mark.line + 1
    for item in node.value:
        data.append(loader.construct_object(item, deep=True))
        data.item_lines.append(item.start_mark.line + 1)


def _construct_tagged(loader: _Loader, suffix: str, node: yaml.Node):
    data = LineDict()
    data.tag = suffix
    data.line = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        _fill_mapping(loader, node, data)
    elif not (isinstance(node, yaml.ScalarNode) and node.value == ""):
        raise yaml.constructor.ConstructorError(
            None, None, f"!{suffix} must be followed by a mapping of fields", node.start_mark
        )
    return data


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)
_Loader.add_multi_constructor("!", _construct_tagged)

_FENCE = re.compile(r"^(---|\.\.\.)\s*$")


def front_matter(text: str, label: str) -> str:
    """The YAML block of a Markdown recipe, padded with blank lines so YAML line numbers match the file.

    SparseML's ``.md`` recipes may open with an HTML licence comment; the block is the first ``---`` ... ``---``.
    """
    lines = text.splitlines()
    start = None
    in_comment = False
    for i, line in enumerate(lines):
        stripped = line.strip()
        if in_comment:
            in_comment = "-->" not in stripped
            continue
        if stripped.startswith("<!--"):
            in_comment = "-->" not in stripped
            continue
        if not stripped:
            continue
        if _FENCE.match(stripped) and stripped == "---":
            start = i
        break
    if start is None:
        raise UserError(f"{label}:1: Markdown recipe has no YAML front matter; expected a '---' line opening it")
    for j in range(start + 1, len(lines)):
        if _FENCE.match(lines[j].strip()):
            return "\n" * (start + 1) + "\n".join(lines[start + 1 : j]) + "\n"
    raise UserError(f"{label}:{start + 1}: YAML front matter opened with '---' is never closed by a '---' line")


def looks_like_markdown(text: str) -> bool:
    """Raw text (no file suffix to go by, e.g. a recipe stored in a checkpoint) is Markdown when it opens with an
    HTML comment, or with a ``---`` line that a later ``---`` / ``...`` line closes (front matter)."""
    if text.lstrip().startswith("<!--"):
        return True
    lines = [ln.strip() for ln in text.splitlines()]
    first = next((i for i, ln in enumerate(lines) if ln and not ln.startswith("#")), None)
    if first is None or lines[first] != "---":
        return False
    return any(_FENCE.match(ln) for ln in lines[first + 1 :])


def load_yaml(text: str, label: str):
    """Parse one YAML document with line info; a syntax error becomes one UserError line with the file line."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Loader)]
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise UserError(f"{label}:{line}: malformed YAML: {what}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{label}:1: malformed YAML: {str(err).splitlines()[0]}") from None
    docs = [d for d in docs if d is not None]
    if len(docs) > 1:
        raise UserError(f"{label}:1: recipe holds {len(docs)} YAML documents; expected one")
    return docs[0] if docs else None
