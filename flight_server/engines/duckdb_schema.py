"""DuckDB table DDL: the three analytics tables in the schema `base`.

`apply_schema` runs `schemas/duckdb.sql`, which is idempotent, at every start-up of the
DuckDB engine and before `demo-data` fills a database. The tables live in `base`, and
`main.<name>` is a view over the base table (UNION ALL BY NAME the dataset's ingested
Parquet files, once `ingest.datasets` re-creates it). A database of the older layout
kept the tables in `main`: their rows move into `base` first, so the views can take the
names.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

logger = logging.getLogger(__name__)

BASE_SCHEMA = "base"
# the tables schemas/duckdb.sql creates in BASE_SCHEMA (the known datasets of ingest.datasets)
BASE_TABLES = ("cdx_records", "content_analytics", "performance_metrics")


def apply_schema(con: duckdb.DuckDBPyConnection, schemas_dir: Path) -> None:
    """Run schemas/duckdb.sql, first moving tables of an older layout into the base schema."""
    legacy = [
        name
        for (name,) in con.sql(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT internal"
        ).fetchall()
        if name in BASE_TABLES
    ]
    for name in legacy:
        con.execute(f'ALTER TABLE main."{name}" RENAME TO "_legacy_{name}"')
    con.execute((schemas_dir / "duckdb.sql").read_text())
    for name in legacy:
        con.execute(f'INSERT INTO {BASE_SCHEMA}."{name}" BY NAME SELECT * FROM main."_legacy_{name}"')
        con.execute(f'DROP TABLE main."_legacy_{name}"')
        logger.info("moved table into the base schema", extra={"fields": {"table": name}})
