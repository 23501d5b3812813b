"""PostgreSQL set-up: the OLTP schema and the read-only role.

`apply_schema` runs `schemas/postgres.sql` and `schemas/postgres_roles.sql`, both
idempotent, at every start-up; when the reader URI names the reader role with a
password, it gives the role that password (so a deployment needs no manual step).
`declared_tables` reads the tables and columns that
`schemas/postgres.sql` declares, without a connection: what the server knows of
PostgreSQL while it cannot reach it. `find_user` reads an approved user's password hash
and projects, for log-in. `is_empty` tells whether the OLTP tables hold no
project yet; `flight_server.demo.oltp` fills them with demo rows.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import unquote, urlsplit

import adbc_driver_postgresql.dbapi as pg
import sqlglot
from sqlglot import exp

logger = logging.getLogger(__name__)

READER_ROLE = "chrono_reader"  # created by schemas/postgres_roles.sql


def apply_schema(uri: str, schemas_dir: Path, reader_uri: str | None = None) -> None:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        for name in ("postgres.sql", "postgres_roles.sql"):
            cur.executescript((schemas_dir / name).read_text())
        reader = urlsplit(reader_uri) if reader_uri else None
        if reader is not None and reader.username == READER_ROLE and reader.password:
            cur.execute("SELECT quote_literal($1)", (unquote(reader.password),))
            literal = str(cur.fetchone()[0])
            cur.execute(f"ALTER ROLE {READER_ROLE} PASSWORD {literal}")
    logger.info("postgres schema applied")


def declared_tables(schemas_dir: Path) -> dict[str, dict[str, str]]:
    """Table -> column -> type of every `CREATE TABLE` in schemas/postgres.sql (parsed, not run)."""
    tables: dict[str, dict[str, str]] = {}
    for statement in sqlglot.parse((schemas_dir / "postgres.sql").read_text(), read="postgres"):
        if isinstance(statement, exp.Create) and statement.kind == "TABLE" and isinstance(statement.this, exp.Schema):
            columns = [c for c in statement.this.expressions if isinstance(c, exp.ColumnDef)]
            tables[statement.this.this.name.lower()] = {
                c.name: c.args["kind"].sql("postgres") if c.args.get("kind") else "TEXT" for c in columns
            }
    return tables


def find_user(uri: str, email: str) -> tuple[str, str, list[str]] | None:
    """(email, password hash, owned project ids) of an approved user, or None."""
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT u.email, u.hashed_password, coalesce(array_agg(p.id) FILTER (WHERE p.id IS NOT NULL), '{}') "
            "FROM users u LEFT JOIN projects p ON p.owner_id = u.id "
            "WHERE u.email = $1 AND u.approval_status = 'approved' GROUP BY u.email, u.hashed_password",
            (email,),
        )
        row = cur.fetchone()
    return None if row is None else (str(row[0]), str(row[1]), [str(p) for p in row[2]])


def is_empty(uri: str) -> bool:
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT NOT EXISTS (SELECT 1 FROM projects)")
        return bool(cur.fetchone()[0])
