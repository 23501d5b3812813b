"""PostgreSQL benchmarks of Chrono Flight: `python -m bench.postgres [--rows N] [--quick]`.

- B5: every named query of the catalogue on DuckDB vs the same query on PostgreSQL, over
  the same demo data, through the server with `"engine": "duckdb"` / `"engine": "postgres"`
  hints (the server translates the DuckDB-dialect SQL to PostgreSQL with sqlglot). The
  three analytics tables are copied into PostgreSQL with ADBC bulk ingest (COPY) from a
  copy of the DuckDB file, indexed on domain and project_id, vacuumed and analysed.
  Hybrid named queries run their own route (DuckDB over PostgreSQL fetches) against the
  same query entirely in PostgreSQL. Geometric-mean speed-up and per query; a query
  that does not translate or run on PostgreSQL is reported with its one-line error.
- B6: a 2M-row OLTP scan (PostgreSQL over ADBC) through the server vs in-process ADBC
  `fetch_arrow_table()`, and (into pandas) vs psycopg `fetchall()` into a DataFrame.
- B7: a hybrid join (projects from PostgreSQL, CDX statistics in DuckDB) through the
  server's hybrid route vs the same join entirely in PostgreSQL.

Two PostgreSQL databases are created for the run and dropped at its end: `<db>` holds the
OLTP demo rows (with it, a query joining projects and cdx_records is hybrid) and
`<db>_copy`, a clone of it plus the analytics tables (with it, such a query can run
entirely in PostgreSQL). One server runs over each, side by side, with the L1 cache and
warming off, and every command says `"cache": "bypass"`. Queries run as the read-only
role `chrono_reader`. Baseline and candidate are interleaved over the repetitions.
Writes bench/results/postgres.json and postgres.md and prints the Markdown table.
"""
