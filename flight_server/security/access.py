"""Which OLTP tables and columns a caller may read, as the schema declares it.

`schemas/postgres.sql` marks them with comments, which PostgreSQL keeps with the schema:

    COMMENT ON COLUMN users.hashed_password IS 'secret: ...';
    COMMENT ON TABLE audit_logs IS 'admin-only: ...';

A secret column is never returned to a non-admin caller, whatever the database role the
server connects as (the query is refused when it names the column, and `SELECT *` or a
whole-row reference reads a subquery without it, see flight_server.security.scoping); it is not
granted to the reader role (`schemas/postgres_roles.sql` grants column by column from the
same comments) and not copied into the DuckDB replicas. An admin-only table is read
through raw SQL and datasets by administrators only; named queries, which the catalogue
declares, may still aggregate it. The file is parsed once with sqlglot, so the server
knows the policy without a connection to PostgreSQL.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from flight_server.errors import PermissionDenied

SECRET_MARK = "secret"  # noqa: S105 - a comment prefix, not a password
ADMIN_ONLY_MARK = "admin-only"


@dataclass(frozen=True)
class AccessPolicy:
    """Columns of the schema's tables, their secret columns and the admin-only tables."""

    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> its columns, in order
    secret: dict[str, frozenset[str]] = field(default_factory=dict)  # table -> its secret columns
    admin_only: frozenset[str] = frozenset()

    def visible_columns(self) -> dict[str, tuple[str, ...]]:
        """Each table with secret columns -> the columns a non-admin caller may read."""
        return {t: tuple(c for c in self.columns.get(t, ()) if c not in hidden) for t, hidden in self.secret.items()}

    def restrictions(
        self, tables: Iterable[str], role: str
    ) -> tuple[dict[str, tuple[str, ...]], dict[str, frozenset[str]]]:
        """For a caller of `role` reading `tables` through raw SQL or a dataset: for each
        table that has secret columns, its other columns and its secret ones.
        PERMISSION_DENIED when a non-admin reads an admin-only table."""
        read = set(tables)
        barred = sorted(read & self.admin_only)
        if barred and role != "admin":
            raise PermissionDenied(f"table {barred[0]} is for administrators only; role '{role}' may not read it")
        visible = self.visible_columns()
        secret = {t: c for t, c in self.secret.items() if t in read}
        return {t: visible[t] for t in secret}, secret

    def secret_names(self) -> frozenset[str]:
        """Every secret column name, whatever its table."""
        return frozenset(c for hidden in self.secret.values() for c in hidden)


@functools.cache
def load_access(schema_file: Path) -> AccessPolicy:
    """The policy that `schema_file` (PostgreSQL DDL with COMMENT ON marks) declares."""
    columns: dict[str, tuple[str, ...]] = {}
    secret: dict[str, set[str]] = {}
    admin_only: set[str] = set()
    for statement in sqlglot.parse(schema_file.read_text(), read="postgres"):
        if isinstance(statement, exp.Create) and isinstance(statement.this, exp.Schema):
            table = statement.this.this
            if isinstance(table, exp.Table):
                names = tuple(c.name for c in statement.this.expressions if isinstance(c, exp.ColumnDef))
                columns[table.name.lower()] = names
        elif isinstance(statement, exp.Comment):
            mark = str(statement.expression.name).strip().lower()
            kind = str(statement.args.get("kind") or "").upper()
            target = statement.this
            if kind == "COLUMN" and isinstance(target, exp.Column) and mark.startswith(SECRET_MARK):
                secret.setdefault(target.table.lower(), set()).add(target.name.lower())
            elif kind == "TABLE" and isinstance(target, exp.Table) and mark.startswith(ADMIN_ONLY_MARK):
                admin_only.add(target.name.lower())
    unknown = sorted(f"{t}.{c}" for t, cs in secret.items() for c in cs if c not in columns.get(t, ()))
    if unknown:
        raise ValueError(f"{schema_file.name} marks {unknown[0]} secret, but no such column is created there")
    return AccessPolicy(columns, {t: frozenset(c) for t, c in secret.items()}, frozenset(admin_only))
