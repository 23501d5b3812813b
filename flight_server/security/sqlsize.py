"""Bounds on what constant function calls build while a query is planned.

DuckDB folds constant expressions when it plans a query: `repeat('x', 3000000000)` builds
a 3 GB string before the query starts running, where neither the deadline (an
interrupt) nor DuckDB's memory limit reaches. The SQL policy therefore estimates, from
constant arguments (literals, arithmetic on them, casts, bound parameters), how many
characters or list elements such calls build: `repeat`, `lpad`/`rpad`, `space`,
`range`/`generate_series` (numbers, dates and timestamps with a constant interval),
`list_resize`/`array_resize`, `bar` widths and `printf`/`format` field widths. A call
over the limit is refused with INVALID_ARGUMENT. Table functions (`FROM range(n)`)
stream their rows at run time, under the deadline, and are not bounded here; neither are
arguments that are not constant, which are computed row by row at run time.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlglot import exp

from flight_server.errors import InvalidArgument

SETTING = "FLIGHT_LIMITS__MAX_GENERATED_LENGTH"
_UNIT_SECONDS = {
    "MICROSECOND": 1e-6,
    "MILLISECOND": 1e-3,
    "SECOND": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "DAY": 86400,
    "WEEK": 7 * 86400,
    "MONTH": 28 * 86400,
    "QUARTER": 89 * 86400,
    "YEAR": 365 * 86400,
}  # fmt: skip  (months and years at their shortest: the estimate errs on the large side)
_RESIZE = {"list_resize": 1, "array_resize": 1, "bar": 3}  # function -> index of its length argument
_WIDTHS = re.compile(r"\d+")

Params = Sequence[Any] | Mapping[str, Any] | None


def check_generated_sizes(tree: exp.Expr, most: int, params: Params = None) -> None:
    """Refuse a constant call of `tree` that would build more than `most` characters or elements."""
    for node in tree.walk():
        if not isinstance(node, exp.Func) or (isinstance(node.parent, exp.Table) and node.parent.this is node):
            continue
        size = _built(node, params)
        if size is not None and size > most:
            raise InvalidArgument(
                f"{_called(node)}() would build {_count(size)} characters or elements, over the limit of "
                f"{most:,} ({SETTING}); use smaller arguments"
            )


def _called(node: exp.Func) -> str:
    """The function's name as the query spells it."""
    if isinstance(node, exp.Pad):
        return "lpad" if node.args.get("is_left") else "rpad"
    if isinstance(node, exp.GenerateSeries):
        return "range" if node.args.get("is_end_exclusive") else "generate_series"
    return str(node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()


def _count(size: float) -> str:
    return f"{size:,.0f}" if math.isfinite(size) else "unboundedly many"


def _built(node: exp.Expr, params: Params) -> float | None:
    """Characters or elements the call builds, when its arguments say so; None when unknown."""
    if isinstance(node, exp.Repeat):
        times = _number(node.args.get("times"), params)
        return None if times is None else times * max(1.0, _length(node.this, params) or 1.0)
    if isinstance(node, exp.Pad):
        return _number(node.args.get("expression"), params)
    if isinstance(node, exp.Space):
        return _number(node.this, params)
    if isinstance(node, exp.GenerateSeries):
        return _series(node, params)
    if isinstance(node, exp.Anonymous):
        name = str(node.name).lower()
        arguments = node.expressions
        if name in _RESIZE and len(arguments) > _RESIZE[name]:
            return _number(arguments[_RESIZE[name]], params)
        if name in ("printf", "format") and arguments:
            return _widest(arguments[0])
    if isinstance(node, exp.Format):
        return _widest(node.this)
    return None


def _widest(pattern: Any) -> float | None:
    if not isinstance(pattern, exp.Literal) or not pattern.is_string:
        return None
    return max((float(w) for w in _WIDTHS.findall(str(pattern.this))), default=None)


def _series(node: exp.GenerateSeries, params: Params) -> float | None:
    start, end, step = (node.args.get(k) for k in ("start", "end", "step"))
    first, last = _number(start, params), _number(end, params)
    if first is not None and last is not None:
        stride = _number(step, params) if step is not None else 1.0
        return None if not stride else max(0.0, (last - first) / stride) + 1
    since, until, seconds = _moment(start), _moment(end), _interval_seconds(step)
    if since is None or until is None or not seconds:
        return None
    return max(0.0, (until - since).total_seconds() / seconds) + 1


def _number(node: Any, params: Params) -> float | None:
    """The value of a constant numeric expression, or None."""
    try:
        return _evaluate(node, params)
    except (OverflowError, ZeroDivisionError, ValueError):
        return math.inf


def _evaluate(node: Any, params: Params) -> float | None:
    if isinstance(node, exp.Literal):
        try:
            return float(str(node.this))
        except ValueError:
            return None
    if isinstance(node, exp.Paren | exp.Cast | exp.TryCast):
        return _evaluate(node.this, params)
    if isinstance(node, exp.Neg):
        value = _evaluate(node.this, params)
        return None if value is None else -value
    if isinstance(node, exp.Placeholder):
        return _parameter(node, params)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div | exp.IntDiv | exp.Pow):
        left, right = _evaluate(node.left, params), _evaluate(node.right, params)
        if left is None or right is None:
            return None
        if isinstance(node, exp.Add):
            return left + right
        if isinstance(node, exp.Sub):
            return left - right
        if isinstance(node, exp.Mul):
            return left * right
        if isinstance(node, exp.Pow):
            result = left**right
            return result if isinstance(result, float) else math.inf  # a negative base to a fractional power
        return left / right
    return None


def _parameter(node: exp.Placeholder, params: Params) -> float | None:
    label = str(node.args.get("this") or "")
    value: Any = None
    if isinstance(params, Mapping):
        value = params.get(label)
    elif params is not None and label.isdigit() and 0 < int(label) <= len(params):
        value = params[int(label) - 1]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _length(node: Any, params: Params) -> float | None:
    """Characters of a constant string, or elements of a constant list; None when unknown."""
    if isinstance(node, exp.Literal) and node.is_string:
        return float(len(str(node.this)))
    if isinstance(node, exp.Array):
        return float(len(node.expressions))
    if isinstance(node, exp.Paren | exp.Cast):
        return _length(node.this, params)
    if isinstance(node, exp.DPipe):
        parts = [_length(node.left, params), _length(node.right, params)]
    elif isinstance(node, exp.Concat):
        parts = [_length(e, params) for e in node.expressions]
    elif isinstance(node, exp.Func):
        return _built(node, params)
    else:
        return None
    return sum(p or 0.0 for p in parts) if any(p is not None for p in parts) else None


def _moment(node: Any) -> dt.datetime | None:
    if isinstance(node, exp.Cast):
        node = node.this
    if not isinstance(node, exp.Literal) or not node.is_string:
        return None
    try:
        return dt.datetime.fromisoformat(str(node.this))
    except ValueError:
        return None


def _interval_seconds(node: Any) -> float | None:
    if not isinstance(node, exp.Interval):
        return None
    unit_node = node.args.get("unit")
    unit = str(unit_node.name if isinstance(unit_node, exp.Expr) else "").upper().rstrip("S")
    try:
        amount = float(str(node.this.this if isinstance(node.this, exp.Literal) else ""))
    except ValueError:
        return None
    seconds = _UNIT_SECONDS.get(unit)
    return None if seconds is None else abs(amount) * seconds
