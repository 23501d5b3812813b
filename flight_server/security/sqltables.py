"""Every table a statement reads, wherever sqlglot put its node.

The read-only policy (sqlguard), project scoping and the secret-column policy
(scoping) and the replica rewrite all start from `table_references`: each `exp.Table`
node of the tree that names a table (not a table function) and is not a reference to
a CTE. sqlglot's scope analysis is not used for this: it lists no sources under a
VALUES root or in PIVOT/UNPIVOT statements, and a table it does not list would be
neither checked nor scoped.

A name is a CTE reference only where BOTH engines a query may run on resolve it to
that CTE (raw SQL is written in DuckDB's dialect and may be translated for PostgreSQL):

- the CTEs of a WITH are visible in its main body (nested subqueries included) and in
  the bodies of the CTEs after them; a forward reference is a table (DuckDB reads the
  table even under RECURSIVE);
- a CTE's own name inside its body is the CTE only under WITH RECURSIVE, in the
  recursive term of a plain `UNION [ALL]` body; everywhere else DuckDB reads the real
  table (a non-recursive CTE named like a table reads the table);
- an inner WITH shadows an outer one;
- names match case-insensitively in DuckDB; in PostgreSQL unquoted names fold to lower
  case and quoted names match exactly; a CTE reference must match under both rules;
- a schema- or catalog-qualified name is always a table.

Anything else is a table. Scoping a reference that turns out to be a CTE is harmless;
leaving a table unscoped is not.
"""

from __future__ import annotations

from sqlglot import exp


def table_references(tree: exp.Expr) -> list[exp.Table]:
    """The nodes of `tree` that read a table, in tree order."""
    return [t for t in tree.find_all(exp.Table) if isinstance(t.this, exp.Identifier) and not is_cte_reference(t)]


def is_cte_reference(table: exp.Table) -> bool:
    """Does this table node name a CTE visible where it stands (see module docstring)?"""
    if table.args.get("db") or table.args.get("catalog") or not isinstance(table.this, exp.Identifier):
        return False
    name: exp.Identifier = table.this
    path: list[exp.Expr] = [table]
    node = table.parent
    while node is not None:
        child = path[-1]
        if isinstance(node, exp.With) and isinstance(child, exp.CTE):
            if any(_same_name(name, _cte_name(c)) for c in _earlier(node, child)):
                return True
            if node.args.get("recursive") and _same_name(name, _cte_name(child)) and _in_recursive_term(child, path):
                return True
        else:
            with_ = node.args.get("with_") or node.args.get("with")
            visible = with_.expressions if isinstance(with_, exp.With) and child is not with_ else []
            if any(_same_name(name, _cte_name(c)) for c in visible):  # the main body sees every CTE
                return True
        path.append(node)
        node = node.parent
    return False


def same_identifier(a: exp.Identifier, b: exp.Identifier) -> bool:
    """Do two identifiers name the same thing in DuckDB and in PostgreSQL alike?"""
    return _same_name(a, b)


def _earlier(with_: exp.With, cte: exp.CTE) -> list[exp.CTE]:
    out = []
    for candidate in with_.expressions:
        if candidate is cte:
            break
        out.append(candidate)
    return out


def _cte_name(cte: exp.Expr) -> exp.Identifier | None:
    alias = cte.args.get("alias")
    ident = alias.this if isinstance(alias, exp.TableAlias) else None
    return ident if isinstance(ident, exp.Identifier) else None


def _same_name(reference: exp.Identifier, other: exp.Identifier | None) -> bool:
    if other is None:
        return False
    duckdb_match = reference.name.lower() == other.name.lower()
    postgres_match = _folded(reference) == _folded(other)
    return duckdb_match and postgres_match


def _folded(identifier: exp.Identifier) -> str:
    return str(identifier.name) if identifier.quoted else str(identifier.name).lower()


def _in_recursive_term(cte: exp.CTE, path: list[exp.Expr]) -> bool:
    """Is the path (table up to the CTE) inside the recursive term of a UNION body?"""
    body = cte.this
    if isinstance(body, exp.Subquery):  # one pair of parentheses around the body
        body = body.this
    plain_union = type(body) is exp.Union and not any(body.args.get(k) for k in ("by_name", "side", "kind"))
    if not plain_union:
        return False
    term = body.args.get("expression")
    return any(node is term for node in path)
