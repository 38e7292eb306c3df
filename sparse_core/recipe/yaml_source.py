"""Reading recipe text: YAML or Markdown front matter, ``!Tag`` modifiers, and the line of every key.

Errors must name the file line, so mappings load as ``LineDict`` (remembers its own line and each key's line).
``!ModifierName`` tags load as a LineDict with ``tag`` set; anchors/aliases (SparseML's ``.md`` recipes use them)
are plain YAML and work, within bounds: text size, nesting depth and the size of the document with every alias
expanded are checked on the composed node graph, before anything is built from it, so a 400-byte "billion laughs"
recipe or a 5,000-level ``[[[...`` fails in milliseconds with the line it starts on.
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


MAX_BYTES = 512 * 1024  # a recipe is a few KB; SparseML's largest zoo recipes are under 100 KB
MAX_DEPTH = 48  # nesting levels, aliases expanded
MAX_NODES = 10_000  # YAML values with every alias expanded (seed000, 46 scheme overrides: about 600)
_BRACKETS = re.compile(r"[\[\]{}\n]")


try:  # libyaml scans and parses (6x faster than PyYAML's Python scanner); composing stays in Python, bounded below
    from yaml._yaml import CParser

    _PARSING: tuple = (CParser,)
except ImportError:  # PyYAML built without libyaml
    _PARSING = (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _Loader(yaml.composer.Composer, *_PARSING, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader that keeps lines, accepts any ``!Tag`` and refuses documents past the bounds above. Its own
    class (not a patched SafeLoader), with the Python composer so every node passes ``compose_node``."""

    def __init__(self, text: str):
        _PARSING[0].__init__(self, text)  # CParser, or the Python Reader
        for part in _PARSING[1:]:
            part.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)

    _depth = 0
    _nodes = 0

    def compose_node(self, parent, index):
        # the composer recurses once per level: stop deep nesting before Python's stack does, and stop a huge
        # document before composing and building it costs seconds
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
                what = f"nesting deeper than {MAX_DEPTH} levels" if self._depth > MAX_DEPTH else \
                    f"more than {MAX_NODES:,} values"
                raise yaml.composer.ComposerError(None, None, f"{what}; expected a recipe", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _check_expansion(node)
        return node

    def construct_object(self, node, deep=False):
        self._last_mark = node.start_mark  # for errors a constructor raises without a mark (bad dates, huge ints)
        return super().construct_object(node, deep=deep)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose alias-expanded tree is too big or too deep, or that contains itself.

    Iterative post-order walk; each distinct node is sized once (memo by id), so the cost is the graph's size.
    """
    size: dict[int, tuple[int, int]] = {}  # id -> (expanded nodes, expanded depth)
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            on_path.discard(key)
            kids = [size[id(c)] for c in _children(node)]
            nodes, depth = 1 + sum(k[0] for k in kids), 1 + max((k[1] for k in kids), default=0)
            if nodes > MAX_NODES or depth > MAX_DEPTH:
                what = f"{nodes:,}+ values" if nodes > MAX_NODES else f"more than {MAX_DEPTH} levels of nesting"
                raise yaml.composer.ComposerError(None, None, f"aliases expand to {what}; expected a recipe "
                                                  f"(at most {MAX_NODES:,} values)", node.start_mark)
            size[key] = (nodes, depth)
        elif key not in size:
            if key in on_path:
                raise yaml.composer.ComposerError(None, None, "an alias refers to the collection that contains it",
                                                  node.start_mark)
            on_path.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _check_flow_depth(text: str, label: str) -> None:
    """``[[[[...`` (or ``{{{``) deeper than MAX_DEPTH, found by counting brackets before any parser runs (PyYAML's
    Python scanner looks ahead up to 1024 characters for every open bracket: seconds before the first node).
    Brackets inside strings count too; a recipe never holds 48 unclosed ones."""
    depth, line = 0, 1
    for match in _BRACKETS.finditer(text):
        char = match.group()
        if char == "\n":
            line += 1
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise UserError(f"{label}:{line}: malformed YAML: brackets nest deeper than {MAX_DEPTH} levels; "
                                "expected a recipe")
        else:
            depth = max(depth - 1, 0)


def check_nesting(value, what: str) -> None:
    """Refuse an already-loaded value (e.g. ``--recipe-args`` JSON) past MAX_DEPTH / MAX_NODES; iterative."""
    stack, count = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH or count > MAX_NODES:
            raise UserError(f"{what}: nested more than {MAX_DEPTH} levels or more than {MAX_NODES:,} values; "
                            "expected recipe variables")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)


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
    if len(text) > MAX_BYTES:
        raise UserError(f"{label}:1: recipe is {len(text):,} characters; expected at most {MAX_BYTES:,}")
    _check_flow_depth(text, label)
    loader = None
    try:
        loader = _Loader(text)  # PyYAML's Python reader checks the characters here already
        docs = []
        while loader.check_data():
            docs.append(loader.get_data())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark else 1
        what = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise UserError(f"{label}:{line}: malformed YAML: {what}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{label}:1: malformed YAML: {str(err).splitlines()[0]}") from None
    except (ValueError, OverflowError, RecursionError, AttributeError, TypeError, KeyError, IndexError) as err:
        # a constructor's own error on a value or an explicit tag: 2020-13-45, 10**5000, !!timestamp x, !!bool maybe
        mark = getattr(loader, "_last_mark", None)
        why = str(err).splitlines()[0][:150] if isinstance(err, (ValueError, OverflowError)) and str(err) else \
            "not a valid value for its YAML type or tag"
        if "integer string conversion" in why:  # Python's own guard; its advice (set_int_max_str_digits) is not ours
            why = "an integer with more than 4300 digits; expected a recipe-sized number"
        raise UserError(f"{label}:{mark.line + 1 if mark else 1}: malformed YAML value: {why}") from None
    finally:
        if loader is not None:
            loader.dispose()
    docs = [d for d in docs if d is not None]
    if len(docs) > 1:
        raise UserError(f"{label}:1: recipe holds {len(docs)} YAML documents; expected one")
    return docs[0] if docs else None
