"""Arithmetic for ``eval(expr)`` recipe values, without Python's ``eval``.

Recipes come from zoo stubs and strangers; an AST whitelist (numbers, variable names, + - * / // % **, unary
signs, parentheses, and min/max/round/int/float/abs calls) gives SparseML's useful subset with nothing to exploit.
"""

from __future__ import annotations

import ast
import math
import operator
import re

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
_EVAL_RE = re.compile(r"^\s*eval\((.*)\)\s*$", re.DOTALL)


class EvalError(ValueError):
    """A bad expression; ``name`` is set when the problem is an unknown variable."""

    def __init__(self, message: str, name: str | None = None):
        super().__init__(message)
        self.name = name


def eval_expression(text: str) -> str | None:
    """The inside of ``eval(...)`` if ``text`` is such a string, else None."""
    if not isinstance(text, str):
        return None
    match = _EVAL_RE.match(text)
    return match.group(1) if match else None


def safe_eval(expr: str, lookup) -> int | float:
    """Evaluate ``expr``; ``lookup(name)`` returns a variable's value or raises KeyError."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise EvalError(f"cannot parse eval({expr}): {err.msg}") from None
    try:
        value = _eval(tree.body, lookup)
    except ZeroDivisionError:
        raise EvalError(f"eval({expr}): division by zero") from None
    except OverflowError:
        raise EvalError(f"eval({expr}): result too large") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise EvalError(f"eval({expr}) gave {value!r}; expected a finite number")
    return value


def _eval(node: ast.AST, lookup):
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise EvalError(f"only numbers are allowed, got {node.value!r}")
        return node.value
    if isinstance(node, ast.Name):
        try:
            value = lookup(node.id)
        except KeyError:
            raise EvalError(f"unknown variable '{node.id}'", name=node.id) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EvalError(f"variable '{node.id}' is {value!r}, not a number")
        return value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _eval(node.left, lookup), _eval(node.right, lookup)
        if isinstance(node.op, ast.Pow) and abs(right) > 1000:
            raise EvalError("exponent too large")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, lookup))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS and not node.keywords:
        args = [_eval(arg, lookup) for arg in node.args]
        try:
            return _CALLS[node.func.id](*args)
        except TypeError as err:
            raise EvalError(f"{node.func.id}(): {err}") from None
    allowed = "numbers, variables, + - * / // % **, parentheses, min/max/round/int/float/abs"
    raise EvalError(f"'{ast.unparse(node)}' is not allowed (allowed: {allowed})")
