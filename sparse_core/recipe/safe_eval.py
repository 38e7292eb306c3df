"""``eval(expr)`` recipe values, without Python's ``eval`` and with bounded cost.

Recipes come from zoo stubs and strangers. SparseML's recipe evaluator (``sparseml.optim.helpers`` with
``restricted_eval``) accepts: numbers, numeric variables, ``+ - * / // % **``, unary minus, and calls of
min/max/round/int/float/abs; and ``eval(name)`` where ``name`` is a non-numeric variable (a string such as
``mask_type: unstructured``, a list, ``null``, a bool) gives that value unchanged. It has no comparisons,
conditionals or string operations, so neither do we. On top of SparseML's rules every expression is bounded:
length, AST depth, integer size (checked before ``**`` computes) and the type of the result, so a hostile recipe
fails in microseconds with a message instead of eating CPU and memory.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings

MAX_CHARS = 1000  # an expression longer than this is not a recipe setting
MAX_DEPTH = 40  # AST levels (``-`` / ``(`` / ``+`` nesting); SparseML's own recipes use fewer than 6
MAX_INT = 2**63  # integers (literals, variables, every intermediate result) stay within +-2**63
MAX_ROUND_DIGITS = 100

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CALLS = {"min": min, "max": max, "round": round, "int": int, "float": float, "abs": abs}
_ALLOWED = "numbers, variables, + - * / // % **, parentheses, min/max/round/int/float/abs"


class EvalError(ValueError):
    """A bad expression; ``name`` is set when the problem is an unknown variable."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def eval_expression(text) -> str | None:
    """The inside of ``eval(...)`` if ``text`` is such a string, else None (SparseML: starts with ``eval(``, ends
    with ``)``, surrounding blanks ignored)."""
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if stripped.startswith("eval(") and stripped.endswith(")"):
        return stripped[5:-1]
    return None


def parse(expr: str) -> ast.expr:
    """The checked AST of ``expr``: parseable, at most MAX_CHARS long and MAX_DEPTH deep."""
    text = expr.strip()
    if len(text) > MAX_CHARS:
        raise EvalError(f"eval(...) is {len(text)} characters long; expected at most {MAX_CHARS}")
    try:
        with warnings.catch_warnings():  # e.g. "invalid decimal literal" for 1if: stderr gets one line, ours
            warnings.simplefilter("ignore")
            tree = ast.parse(text, mode="eval")
    except SyntaxError as err:
        raise EvalError(f"cannot parse eval({_short(expr)}): {err.msg}") from None
    except (RecursionError, MemoryError, ValueError):  # the parser's own stack, or a NUL byte
        raise EvalError(f"cannot parse eval({_short(expr)}): too deeply nested or not text") from None
    stack = [(tree.body, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise EvalError(f"eval({_short(expr)}) nests more than {MAX_DEPTH} levels deep; expected a simple formula")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return tree.body


def variable_names(tree: ast.expr) -> set[str]:
    """Every name an expression reads (function names included; callers intersect with their variables)."""
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def safe_eval(expr: str | ast.expr, lookup):
    """Evaluate ``expr`` (text or a tree from ``parse``); ``lookup(name)`` gives a variable or raises KeyError.

    A bare variable name gives that variable's value whatever its type (SparseML's ``eval(mask_type)``); any
    other expression must give a finite int or float.
    """
    tree = parse(expr) if isinstance(expr, str) else expr
    if isinstance(tree, ast.Name):
        return _lookup(tree.id, lookup)
    try:
        value = _eval(tree, lookup)
    except ZeroDivisionError:
        raise EvalError(f"eval({_short(expr)}): division by zero") from None
    except OverflowError:
        raise EvalError(f"eval({_short(expr)}): result too large") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise EvalError(f"eval({_short(expr)}) gave {_short(repr(value))}; expected a finite number")
    return value


def check_int(value: int, what: str) -> int:
    """``value`` if within +-MAX_INT, else an EvalError naming ``what``."""
    if abs(value) > MAX_INT:
        raise EvalError(f"{what} is an integer of {value.bit_length()} bits; expected at most 2**63 in size")
    return value


def _short(value) -> str:
    text = value if isinstance(value, str) else (ast.unparse(value) if isinstance(value, ast.AST) else repr(value))
    return text if len(text) <= 60 else text[:50] + f"... ({len(text)} chars)"


def _lookup(name: str, lookup):
    try:
        return lookup(name)
    except KeyError:
        raise EvalError(f"unknown variable '{name}'", name=name) from None


def _number(value, what: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EvalError(f"{what} is {_short(repr(value))}, not a number")
    return check_int(value, what) if isinstance(value, int) else value


def _eval(node: ast.AST, lookup) -> int | float:
    if isinstance(node, ast.Constant):
        return _number(node.value, "constant")
    if isinstance(node, ast.Name):
        return _number(_lookup(node.id, lookup), f"variable '{node.id}'")
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, lookup), _eval(node.right, lookup)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _result(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _result(_UNARY[type(node.op)](_eval(node.operand, lookup)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS:
        return _call(node, lookup)
    raise EvalError(f"'{_short(node)}' is not allowed (allowed: {_ALLOWED})")


def _check_power(base: int | float, exp: int | float) -> None:
    """Refuse ``base ** exp`` before computing it when the result would be out of bounds (ints) or absurd."""
    if abs(exp) > 10_000:
        raise EvalError(f"exponent {_short(exp)} too large; expected at most 10000")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0 and abs(base) > 1:
        if (abs(base).bit_length() - 1) * exp > 63:
            raise EvalError(f"{base} ** {exp} is larger than 2**63; expected a recipe-sized number")


def _result(value):
    if isinstance(value, complex):
        raise EvalError(f"result {value} is a complex number; expected a real number")
    return check_int(value, "result") if isinstance(value, int) else value


def _call(node: ast.Call, lookup) -> int | float:
    name = node.func.id
    args = [_eval(arg, lookup) for arg in node.args]
    if any(kw.arg != "ndigits" or name != "round" for kw in node.keywords):
        raise EvalError(f"{name}(): keyword arguments other than round(..., ndigits=N) are not allowed")
    kwargs = {kw.arg: _eval(kw.value, lookup) for kw in node.keywords}
    digits = (args[1:2] or [kwargs.get("ndigits", 0)])[0]
    if name == "round" and (not isinstance(digits, int) or abs(digits) > MAX_ROUND_DIGITS):
        raise EvalError(f"round(): ndigits {_short(digits)}; expected an integer within +-{MAX_ROUND_DIGITS}")
    try:
        return _result(_CALLS[name](*args, **kwargs))
    except (TypeError, ValueError) as err:
        raise EvalError(f"{name}(): {err}") from None
