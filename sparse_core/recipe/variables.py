"""Recipe variables: evaluated in dependency order, without recursion, so 1,000 chained variables
(``a: 1``, ``b: eval(a + 1)``, ...) cost a loop rather than a deep Python stack, and a cycle is named.

``Variables.value`` also evaluates every ``eval(...)`` inside modifier fields, with the variables as its names.
"""

from __future__ import annotations

import math
from typing import Any

from sparse_core.errors import UserError
from sparse_core.recipe.safe_eval import EvalError, check_int, eval_expression, parse, safe_eval, variable_names


class Variables:
    """``values``: every variable evaluated. ``where(name)`` is its file line (or ``--recipe-args``)."""

    def __init__(self, label: str, raw: dict[str, Any], where: dict[str, int | str]):
        self.label = label
        self.raw = raw
        self._where = where
        self.values: dict[str, Any] = {}
        for name in self._order():
            self.values[name] = self.value(raw[name], name, self.where(name))

    def where(self, name: str) -> int | str:
        return self._where.get(name, 1)

    def value(self, value: Any, field: str, line: int | str) -> Any:
        """``value`` with each ``eval(...)`` string inside it evaluated; containers come back as plain dict/list.

        Depth is bounded by the YAML loader and ``parse_recipe_args``, so this recursion stays shallow.
        """
        expr = eval_expression(value)
        if expr is not None:
            try:
                return safe_eval(expr, self._lookup)
            except EvalError as err:
                raise UserError(f"{self.label}:{line}: {field}: {err}") from None
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return check_int(value, "value")
            except EvalError as err:
                raise UserError(f"{self.label}:{line}: {field}: {err}") from None
        if isinstance(value, float) and not math.isfinite(value):  # .inf / .nan / 1e400 epochs never end
            raise UserError(f"{self.label}:{line}: {field}: {value} is not a finite number; expected a finite number")
        if isinstance(value, dict):
            lines = getattr(value, "key_lines", {})
            return {k: self.value(v, field, lines.get(k, line)) for k, v in value.items()}
        if isinstance(value, list):
            lines = getattr(value, "item_lines", [])
            return [self.value(v, field, lines[i] if i < len(lines) else line) for i, v in enumerate(value)]
        return value

    def _lookup(self, name: str) -> Any:
        return self.values[name]  # KeyError: not a variable (dependencies are evaluated first)

    def _depends_on(self, name: str) -> list[str]:
        """Variables that ``eval(...)`` strings anywhere inside variable ``name`` read, in first-use order."""
        found: dict[str, None] = {}
        stack = [self.raw[name]]
        while stack:
            item = stack.pop()
            if isinstance(item, dict):
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
            elif (expr := eval_expression(item)) is not None:
                try:
                    tree = parse(expr)
                except EvalError:
                    continue  # reported with its line when the value is evaluated
                found.update(dict.fromkeys(sorted(n for n in variable_names(tree) if n in self.raw)))
        return list(found)

    def _order(self) -> list[str]:
        """Variables in an order where each comes after those it reads (iterative depth-first search)."""
        deps = {name: self._depends_on(name) for name in self.raw}
        done: set[str] = set()
        order: list[str] = []
        for start in self.raw:
            if start in done:
                continue
            path, on_path = [start], {start}
            stack = [iter(deps[start])]
            while stack:
                nxt = next(stack[-1], None)
                if nxt is None:
                    name = path.pop()
                    on_path.discard(name)
                    stack.pop()
                    done.add(name)
                    order.append(name)
                elif nxt in on_path:
                    loop = path[path.index(nxt):] + [nxt]
                    shown = loop if len(loop) <= 8 else loop[:4] + [f"... {len(loop) - 7} more ..."] + loop[-3:]
                    cycle = " -> ".join(shown)
                    raise UserError(f"{self.label}:{self.where(nxt)}: {nxt}: variables refer to each other in a "
                                    f"cycle ({cycle})")
                elif nxt not in done:
                    path.append(nxt)
                    on_path.add(nxt)
                    stack.append(iter(deps[nxt]))
        return order
