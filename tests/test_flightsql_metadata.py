"""Flight SQL metadata: the spec's result schemas and what they hold, on real DuckDB and PostgreSQL.

Expected schemas are written out here from FlightSql.proto (and the field order of the
reference implementations), not taken from the module under test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flight_server.app import App
from flight_server.context import Caller, RequestContext
from flight_server.errors import NotFound, PermissionDenied, Unavailable
from flight_server.flightsql import metadata
from flight_server.flightsql.catalogs import like
from flight_server.flightsql.sql_info import DATETIME_FUNCTIONS, NUMERIC_FUNCTIONS, STRING_FUNCTIONS, SYSTEM_FUNCTIONS
from flight_server.settings import CacheSettings, DuckDBSettings, Settings

from support.proxies import TcpProxy
from support.servers import ServerHandle, pg_settings

pytestmark = pytest.mark.postgres

PREFIX = "ARROW:FLIGHT:SQL:"


def _ctx(role: str = "admin") -> RequestContext:
    return RequestContext(rpc="test", caller=Caller(role=role, projects=None if role == "admin" else ()))


def _utf8(name: str, nullable: bool = True) -> pa.Field:
    return pa.field(name, pa.string(), nullable)


CATALOGS = pa.schema([_utf8("catalog_name", False)])
DB_SCHEMAS = pa.schema([_utf8("catalog_name"), _utf8("db_schema_name", False)])
TABLES = pa.schema(
    [_utf8("catalog_name"), _utf8("db_schema_name"), _utf8("table_name", False), _utf8("table_type", False)]
)
TABLES_WITH_SCHEMA = TABLES.append(pa.field("table_schema", pa.binary(), False))
TABLE_TYPES = pa.schema([_utf8("table_type", False)])
SQL_INFO = pa.schema(
    [
        pa.field("info_name", pa.uint32(), False),
        pa.field(
            "value",
            pa.dense_union(
                [
                    pa.field("string_value", pa.string(), False),
                    pa.field("bool_value", pa.bool_(), False),
                    pa.field("bigint_value", pa.int64(), False),
                    pa.field("int32_bitmask", pa.int32(), False),
                    pa.field("string_list", pa.list_(pa.field("item", pa.string())), False),
                    pa.field("int32_to_int32_list_map", pa.map_(pa.int32(), pa.list_(pa.int32())), False),
                ]
            ),
            False,
        ),
    ]
)
XDBC_TYPE_INFO = pa.schema(
    [
        _utf8("type_name", False),
        pa.field("data_type", pa.int32(), False),
        pa.field("column_size", pa.int32()),
        _utf8("literal_prefix"),
        _utf8("literal_suffix"),
        pa.field("create_params", pa.list_(pa.field("item", pa.string(), False))),
        pa.field("nullable", pa.int32(), False),
        pa.field("case_sensitive", pa.bool_(), False),
        pa.field("searchable", pa.int32(), False),
        pa.field("unsigned_attribute", pa.bool_()),
        pa.field("fixed_prec_scale", pa.bool_(), False),
        pa.field("auto_increment", pa.bool_()),
        _utf8("local_type_name"),
        pa.field("minimum_scale", pa.int32()),
        pa.field("maximum_scale", pa.int32()),
        pa.field("sql_data_type", pa.int32(), False),
        pa.field("datetime_subcode", pa.int32()),
        pa.field("num_prec_radix", pa.int32()),
        pa.field("interval_precision", pa.int32()),
    ]
)
# key_sequence before key_name: the order of the C++, Java and Go reference implementations
# (the proto comment lists key_name first; drivers read both by name)
PRIMARY_KEYS = pa.schema(
    [
        _utf8("catalog_name"),
        _utf8("db_schema_name"),
        _utf8("table_name", False),
        _utf8("column_name", False),
        pa.field("key_sequence", pa.int32(), False),
        _utf8("key_name"),
    ]
)
FOREIGN_KEYS = pa.schema(
    [
        _utf8("pk_catalog_name"),
        _utf8("pk_db_schema_name"),
        _utf8("pk_table_name", False),
        _utf8("pk_column_name", False),
        _utf8("fk_catalog_name"),
        _utf8("fk_db_schema_name"),
        _utf8("fk_table_name", False),
        _utf8("fk_column_name", False),
        pa.field("key_sequence", pa.int32(), False),
        _utf8("fk_key_name"),
        _utf8("pk_key_name"),
        pa.field("update_rule", pa.uint8(), False),
        pa.field("delete_rule", pa.uint8(), False),
    ]
)

Call = Callable[[App, RequestContext], pa.Table]
COMMANDS: list[tuple[str, Call, Callable[[], pa.Schema], pa.Schema]] = [
    ("catalogs", metadata.get_catalogs, metadata.catalogs_schema, CATALOGS),
    ("db_schemas", lambda a, c: metadata.get_db_schemas(a, c, None, None), metadata.db_schemas_schema, DB_SCHEMAS),
    (
        "tables",
        lambda a, c: metadata.get_tables(a, c, None, None, None, [], False),
        lambda: metadata.tables_schema(False),
        TABLES,
    ),
    (
        "tables_with_schema",
        lambda a, c: metadata.get_tables(a, c, "postgres", None, "user%", [], True),
        lambda: metadata.tables_schema(True),
        TABLES_WITH_SCHEMA,
    ),
    ("table_types", metadata.get_table_types, metadata.table_types_schema, TABLE_TYPES),
    ("sql_info", lambda a, c: metadata.get_sql_info(a, c, []), metadata.sql_info_schema, SQL_INFO),
    ("xdbc", lambda a, c: metadata.get_xdbc_type_info(a, c, None), metadata.xdbc_type_info_schema, XDBC_TYPE_INFO),
    (
        "primary_keys",
        lambda a, c: metadata.get_primary_keys(a, c, None, None, "users"),
        metadata.primary_keys_schema,
        PRIMARY_KEYS,
    ),
    (
        "exported_keys",
        lambda a, c: metadata.get_exported_keys(a, c, None, None, "users"),
        metadata.foreign_keys_schema,
        FOREIGN_KEYS,
    ),
    (
        "imported_keys",
        lambda a, c: metadata.get_imported_keys(a, c, None, None, "domains"),
        metadata.foreign_keys_schema,
        FOREIGN_KEYS,
    ),
    (
        "cross_reference",
        lambda a, c: metadata.get_cross_reference(a, c, None, None, "projects", None, None, "domains"),
        metadata.foreign_keys_schema,
        FOREIGN_KEYS,
    ),
]


def _strict_equal(actual: pa.Schema, expected: pa.Schema) -> None:
    assert actual.equals(expected), f"\n{actual}\n!=\n{expected}"
    for got, want in zip(actual, expected, strict=True):  # nullability at every level
        assert str(got) == str(want)
        assert got.nullable == want.nullable


@pytest.fixture
def app(hybrid_server: ServerHandle) -> App:
    return hybrid_server.app


def _column(table: pa.Table, name: str) -> list[Any]:
    return table.column(name).to_pylist()


def _names(table: pa.Table) -> list[tuple[str, str, str]]:
    return [(r["catalog_name"], r["db_schema_name"], r["table_name"]) for r in table.to_pylist()]


# -- schemas -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "call", "declared", "expected"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_metadata_schema_matches_spec(
    app: App, name: str, call: Call, declared: Callable[[], pa.Schema], expected: pa.Schema
) -> None:
    _strict_equal(declared(), expected)
    table = call(app, _ctx())
    _strict_equal(table.schema, expected)
    assert table.num_rows > 0, name


def test_metadata_refused_without_metadata_permission(app: App) -> None:
    with pytest.raises(PermissionDenied):
        metadata.get_catalogs(app, _ctx(role="nobody"))


# -- catalogs and schemas ------------------------------------------------------------------------


def test_catalogs_list_duckdb_and_postgres(app: App) -> None:
    assert _column(metadata.get_catalogs(app, _ctx()), "catalog_name") == ["duckdb", "postgres"]


def test_db_schemas_list_main_analytics_public(app: App) -> None:
    table = metadata.get_db_schemas(app, _ctx(), None, None)
    rows = list(zip(_column(table, "catalog_name"), _column(table, "db_schema_name"), strict=True))
    assert rows == [("duckdb", "analytics"), ("duckdb", "main"), ("postgres", "public")]


def test_db_schemas_filter_by_catalog_and_pattern(app: App) -> None:
    assert _column(metadata.get_db_schemas(app, _ctx(), "duckdb", None), "db_schema_name") == ["analytics", "main"]
    assert _column(metadata.get_db_schemas(app, _ctx(), None, "p%"), "db_schema_name") == ["public"]
    assert _column(metadata.get_db_schemas(app, _ctx(), None, "ma_n"), "db_schema_name") == ["main"]
    assert metadata.get_db_schemas(app, _ctx(), "", None).num_rows == 0  # "" : those without a catalog


# -- tables ----------------------------------------------------------------------------------------


def test_tables_list_every_catalog_sorted(app: App) -> None:
    table = metadata.get_tables(app, _ctx(), None, None, None, [], False)
    names = _names(table)
    assert names == sorted(names)
    for analytics in ("cdx_records", "content_analytics", "performance_metrics"):
        assert ("duckdb", "main", analytics) in names
    for oltp in ("users", "user_sessions", "projects", "domains", "scrape_pages", "audit_logs"):
        assert ("postgres", "public", oltp) in names


def test_tables_hide_internal_schemas(app: App) -> None:
    table = metadata.get_tables(app, _ctx(), None, None, None, [], False)
    assert set(_column(table, "db_schema_name")) == {"main", "analytics", "public"}
    assert not any(name.startswith(("pg_", "duckdb_", "sql_")) for name in _column(table, "table_name"))


def test_tables_show_named_queries_without_required_parameters_as_views(app: App) -> None:
    table = metadata.get_tables(app, _ctx(), "duckdb", "analytics", None, [], False)
    names = _column(table, "table_name")
    assert set(_column(table, "table_type")) == {"VIEW"}
    expected = {
        q.name.replace(".", "_")
        for q in app.catalog
        if not any(p.required for p in q.params) and app.executor.named_schema(q.name) is not None
    }
    assert set(names) == expected
    assert "domains_top" in names and "system_performance" in names
    assert "domains_timeline" not in names  # its domain is required
    assert names == sorted(names)


def test_tables_like_filters_percent_and_underscore(app: App) -> None:
    by_prefix = metadata.get_tables(app, _ctx(), None, None, "user%", [], False)
    assert _column(by_prefix, "table_name") == ["user_sessions", "users"]
    one_char = metadata.get_tables(app, _ctx(), None, None, "user_", [], False)
    assert _column(one_char, "table_name") == ["users"]
    assert _names(metadata.get_tables(app, _ctx(), None, "publi_", "domain_", [], False)) == [
        ("postgres", "public", "domains")
    ]
    assert metadata.get_tables(app, _ctx(), None, "publi_", "domain__", [], False).num_rows == 0


def test_tables_like_escaped_underscore_is_literal(app: App) -> None:
    # "domains_top" (analytics) has an underscore; "domainsxtop" would match an unescaped pattern only
    escaped = metadata.get_tables(app, _ctx(), None, None, "domains\\_top", [], False)
    assert _names(escaped) == [("duckdb", "analytics", "domains_top")]
    assert metadata.get_tables(app, _ctx(), None, None, "user\\_", [], False).num_rows == 0
    sessions = metadata.get_tables(app, _ctx(), None, None, "user\\_%", [], False)
    assert _column(sessions, "table_name") == ["user_sessions"]


def test_tables_table_types_filter_exact(app: App) -> None:
    views = metadata.get_tables(app, _ctx(), None, None, None, ["VIEW"], False)
    assert set(_column(views, "table_type")) == {"VIEW"}
    tables = metadata.get_tables(app, _ctx(), None, None, None, ["TABLE"], False)
    assert set(_column(tables, "table_type")) == {"TABLE"}
    assert "users" in _column(tables, "table_name")
    assert metadata.get_tables(app, _ctx(), None, None, None, ["table"], False).num_rows == 0
    both = metadata.get_tables(app, _ctx(), None, None, None, ["TABLE", "VIEW"], False)
    assert both.num_rows == views.num_rows + tables.num_rows


def _plain(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.remove_metadata() for f in schema])


def _table_schema(app: App, catalog: str, db_schema: str, name: str) -> pa.Schema:
    table = metadata.get_tables(app, _ctx(), catalog, db_schema, name.replace("_", "\\_"), [], True)
    assert table.num_rows == 1
    return pa.ipc.read_schema(pa.py_buffer(table.column("table_schema")[0].as_py()))


def test_tables_include_schema_round_trips_duckdb_table(app: App) -> None:
    schema = _table_schema(app, "duckdb", "main", "cdx_records")
    real = app.duckdb.schema("SELECT * FROM cdx_records", None)
    assert _plain(schema).equals(_plain(real))
    field = schema.field("domain")
    meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
    assert meta[PREFIX + "CATALOG_NAME"] == "duckdb"
    assert meta[PREFIX + "DB_SCHEMA_NAME"] == "main"
    assert meta[PREFIX + "TABLE_NAME"] == "cdx_records"
    assert meta[PREFIX + "TYPE_NAME"] == "VARCHAR"
    assert meta[PREFIX + "IS_CASE_SENSITIVE"] == "1"
    assert meta[PREFIX + "IS_READ_ONLY"] == "1"
    assert meta[PREFIX + "IS_SEARCHABLE"] == "1"
    assert meta[PREFIX + "IS_AUTO_INCREMENT"] == "0"
    assert schema.field("status_code").metadata[(PREFIX + "PRECISION").encode()] == b"10"


def test_tables_include_schema_round_trips_named_query(app: App, hybrid_server: ServerHandle) -> None:
    schema = _table_schema(app, "duckdb", "analytics", "domains_top")
    real = hybrid_server.get({"query": "domains.top"}).schema
    assert _plain(schema).equals(_plain(real))
    first = schema.field(0).metadata
    assert first[(PREFIX + "TABLE_NAME").encode()] == b"domains_top"
    assert first[(PREFIX + "DB_SCHEMA_NAME").encode()] == b"analytics"


def test_tables_include_schema_round_trips_postgres_table(app: App, hybrid_server: ServerHandle) -> None:
    schema = _table_schema(app, "postgres", "public", "projects")
    real = hybrid_server.get({"sql": "SELECT * FROM projects", "engine": "postgres"}).schema
    assert _plain(schema).equals(_plain(real))
    meta = schema.field("created_at").metadata
    assert meta[(PREFIX + "TYPE_NAME").encode()] == b"timestamp with time zone"
    assert meta[(PREFIX + "CATALOG_NAME").encode()] == b"postgres"


def test_tables_include_schema_marks_identity_columns(app: App) -> None:
    schema = _table_schema(app, "postgres", "public", "domains")
    assert schema.field("id").metadata[(PREFIX + "IS_AUTO_INCREMENT").encode()] == b"1"
    assert schema.field("domain").metadata[(PREFIX + "IS_AUTO_INCREMENT").encode()] == b"0"


def test_tables_include_schema_never_shows_hashed_password(app: App) -> None:
    schema = _table_schema(app, "postgres", "public", "users")
    assert "hashed_password" not in schema.names
    assert {"id", "email", "created_at"} <= set(schema.names)
    resolved = metadata.resolve_table(app, _ctx(), "postgres", "public", "users")
    assert "hashed_password" not in resolved.schema.names


def test_table_types_list_table_and_view(app: App) -> None:
    assert _column(metadata.get_table_types(app, _ctx()), "table_type") == ["TABLE", "VIEW"]


# -- LIKE patterns ---------------------------------------------------------------------------------

_LIKE_CHARS = "ab_%\\.*[("


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_LIKE_CHARS, max_size=8), st.text(alphabet="ab_%\\.*[(c", max_size=8))
def test_like_pattern_agrees_with_duckdb(pattern: str, value: str) -> None:
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2 == 1:
        pattern += "\\"  # DuckDB refuses a pattern ending with a lone escape character
    with duckdb.connect() as con:
        expected = con.sql("SELECT $1 LIKE $2 ESCAPE '\\'", params=[value, pattern]).fetchall()[0][0]
    assert like(pattern, value) is expected


@given(st.text(max_size=12))
def test_like_escaped_text_matches_only_itself(text: str) -> None:
    escaped = "".join("\\" + c if c in "%_\\" else c for c in text)
    assert like(escaped, text)
    assert not like(escaped, text + "x")


def test_like_without_pattern_matches_everything() -> None:
    assert like(None, "anything")
    assert like("%", "")
    assert not like("_", "")


# -- keys -------------------------------------------------------------------------------------------


def test_primary_keys_of_oltp_tables(app: App) -> None:
    table = metadata.get_primary_keys(app, _ctx(), "postgres", "public", "users")
    assert table.to_pylist() == [
        {
            "catalog_name": "postgres",
            "db_schema_name": "public",
            "table_name": "users",
            "column_name": "id",
            "key_sequence": 1,
            "key_name": "users_pkey",
        }
    ]
    projects = metadata.get_primary_keys(app, _ctx(), None, None, "projects")
    assert _column(projects, "column_name") == ["id"]
    assert metadata.get_primary_keys(app, _ctx(), "duckdb", None, "users").num_rows == 0
    assert metadata.get_primary_keys(app, _ctx(), None, None, "no_such_table").num_rows == 0


def _key_rows(table: pa.Table) -> list[tuple[str, str, str, str, int, int, int]]:
    return [
        (
            r["pk_table_name"],
            r["pk_column_name"],
            r["fk_table_name"],
            r["fk_column_name"],
            r["key_sequence"],
            r["update_rule"],
            r["delete_rule"],
        )
        for r in table.to_pylist()
    ]


CASCADE, SET_NULL, NO_ACTION = 0, 2, 3


def test_exported_keys_of_users(app: App) -> None:
    table = metadata.get_exported_keys(app, _ctx(), "postgres", "public", "users")
    assert _key_rows(table) == [
        ("users", "id", "audit_logs", "user_id", 1, NO_ACTION, SET_NULL),
        ("users", "id", "projects", "owner_id", 1, NO_ACTION, NO_ACTION),
        ("users", "id", "user_sessions", "user_id", 1, NO_ACTION, CASCADE),
    ]
    row = table.to_pylist()[0]
    assert row["pk_catalog_name"] == row["fk_catalog_name"] == "postgres"
    assert row["pk_db_schema_name"] == row["fk_db_schema_name"] == "public"
    assert row["pk_key_name"] == "users_pkey"
    assert row["fk_key_name"] == "audit_logs_user_id_fkey"


def test_imported_keys_of_project_pages(app: App) -> None:
    table = metadata.get_imported_keys(app, _ctx(), None, None, "project_pages")
    assert _key_rows(table) == [
        ("projects", "id", "project_pages", "project_id", 1, NO_ACTION, CASCADE),
        ("scrape_pages", "id", "project_pages", "page_id", 1, NO_ACTION, CASCADE),
    ]


def test_cross_reference_between_projects_and_domains(app: App) -> None:
    table = metadata.get_cross_reference(app, _ctx(), "postgres", "public", "projects", None, None, "domains")
    assert _key_rows(table) == [("projects", "id", "domains", "project_id", 1, NO_ACTION, CASCADE)]
    none = metadata.get_cross_reference(app, _ctx(), None, None, "domains", None, None, "projects")
    assert none.num_rows == 0
    other_catalog = metadata.get_cross_reference(app, _ctx(), None, None, "projects", "duckdb", None, "domains")
    assert other_catalog.num_rows == 0


# -- SqlInfo -----------------------------------------------------------------------------------------


def _info(table: pa.Table) -> dict[int, Any]:
    return dict(zip(_column(table, "info_name"), _column(table, "value"), strict=True))


def test_sql_info_requested_ids_in_order_with_types(app: App) -> None:
    table = metadata.get_sql_info(app, _ctx(), [3, 0, 1, 2, 504, 8, 517])
    assert _column(table, "info_name") == [3, 0, 1, 2, 504, 8, 517]
    info = _info(table)
    assert info[0] == "Chrono Flight"
    assert info[1] == app.version
    assert info[2] == pa.__version__
    assert info[3] is True
    assert info[504] == '"'
    assert info[8] == 0
    assert dict(info[517])[19]  # VARCHAR converts to other types
    assert table.column("value").chunk(0).type_codes.to_pylist() == [1, 0, 0, 0, 0, 3, 5]


def test_sql_info_all_when_none_requested(app: App) -> None:
    table = metadata.get_sql_info(app, _ctx(), [])
    info = _info(table)
    assert _column(table, "info_name") == sorted(info)
    assert {0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 100, 101} <= set(info)
    assert set(range(500, 577)) <= set(info)
    assert info[9] is True and info[10] is True and info[11] is False
    assert info[5] is False and info[563] is False
    assert "SELECT" in info[508]
    assert info[100] == int(app.settings.flightsql.prepared_idle_s * 1000)  # prepared handle timeout, ms


def test_sql_info_skips_unknown_ids(app: App) -> None:
    assert _column(metadata.get_sql_info(app, _ctx(), [0, 9999, 0]), "info_name") == [0]
    nothing = metadata.get_sql_info(app, _ctx(), [9999])
    assert nothing.num_rows == 0
    _strict_equal(nothing.schema, SQL_INFO)


def test_sql_info_function_lists_exist_in_duckdb(app: App) -> None:
    with duckdb.connect() as con:
        known = {row[0] for row in con.sql("SELECT function_name FROM duckdb_functions()").fetchall()}
    listed = {*NUMERIC_FUNCTIONS, *STRING_FUNCTIONS, *SYSTEM_FUNCTIONS, *DATETIME_FUNCTIONS}
    special_syntax = {"extract", "coalesce", "ifnull"}  # parsed as expressions, not catalogue functions
    assert listed - known == special_syntax


# -- XDBC types ------------------------------------------------------------------------------------


def test_xdbc_type_info_sorted_by_data_type_then_name(app: App) -> None:
    table = metadata.get_xdbc_type_info(app, _ctx(), None)
    keys = list(zip(_column(table, "data_type"), _column(table, "type_name"), strict=True))
    assert keys == sorted(keys)
    names = set(_column(table, "type_name"))
    assert {"BOOLEAN", "BIGINT", "DOUBLE", "DECIMAL", "VARCHAR", "DATE", "TIMESTAMP", "INTERVAL"} <= names


def test_xdbc_type_info_filter_by_data_type(app: App) -> None:
    table = metadata.get_xdbc_type_info(app, _ctx(), 93)  # XDBC_TIMESTAMP
    assert _column(table, "type_name") == ["TIMESTAMP", "TIMESTAMP WITH TIME ZONE"]
    assert _column(table, "sql_data_type") == [9, 9]  # XDBC_DATETIME
    assert _column(table, "datetime_subcode") == [3, 5]
    assert metadata.get_xdbc_type_info(app, _ctx(), 12345).num_rows == 0


# -- resolve_table -----------------------------------------------------------------------------------


def test_resolve_table_duckdb(app: App) -> None:
    resolved = metadata.resolve_table(app, _ctx(), None, None, "cdx_records")
    assert (resolved.engine, resolved.name) == ("duckdb", "cdx_records")
    assert _plain(resolved.schema).equals(_plain(app.duckdb.schema("SELECT * FROM cdx_records", None)))


def test_resolve_table_postgres(app: App) -> None:
    resolved = metadata.resolve_table(app, _ctx(), "postgres", "public", "domains")
    assert (resolved.engine, resolved.name) == ("postgres", "domains")
    assert {"id", "project_id", "domain"} <= set(resolved.schema.names)


def test_resolve_table_named_query(app: App) -> None:
    resolved = metadata.resolve_table(app, _ctx(), "duckdb", "analytics", "domains_top")
    assert (resolved.engine, resolved.name) == ("analytics", "domains.top")
    named = app.executor.named_schema("domains.top")
    assert named is not None and _plain(resolved.schema).equals(_plain(named))


def test_resolve_table_unknown_raises_not_found(app: App) -> None:
    with pytest.raises(NotFound, match="no_such_table"):
        metadata.resolve_table(app, _ctx(), None, None, "no_such_table")
    with pytest.raises(NotFound):
        metadata.resolve_table(app, _ctx(), "postgres", None, "cdx_records")
    with pytest.raises(NotFound):  # required parameters: not a view
        metadata.resolve_table(app, _ctx(), None, "analytics", "domains_timeline")


# -- DuckDB alone, with its own keys ------------------------------------------------------------------


@pytest.fixture(scope="module")
def duck_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """An App without PostgreSQL whose DuckDB has tables with primary and foreign keys."""

    def prepare(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE owners (id INTEGER PRIMARY KEY, name VARCHAR)")
        con.execute("CREATE TABLE pets (id INTEGER, owner_id INTEGER REFERENCES owners (id), PRIMARY KEY (id))")
        con.execute("CREATE TABLE domains_top (x INTEGER)")  # a table named like a named query's view

    app = App(_small_settings(tmp_path_factory.mktemp("duck-meta")), prepare=prepare)
    yield app
    app.close()


def _small_settings(data_dir: Path, **groups: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        port=0,
        log_format="text",
        duckdb=DuckDBSettings(threads=1, memory_limit="512MB"),
        cache=CacheSettings(warm_top_n=0),
        **groups,
    )


def test_catalogs_without_postgres_list_duckdb_only(duck_app: App) -> None:
    assert _column(metadata.get_catalogs(duck_app, _ctx()), "catalog_name") == ["duckdb"]
    assert _column(metadata.get_db_schemas(duck_app, _ctx(), None, None), "db_schema_name") == ["analytics", "main"]
    tables = metadata.get_tables(duck_app, _ctx(), None, None, None, ["TABLE"], False)
    assert _names(tables) == [
        ("duckdb", "main", "domains_top"),
        ("duckdb", "main", "owners"),
        ("duckdb", "main", "pets"),
    ]


def test_resolve_table_prefers_tables_over_named_query_views(duck_app: App) -> None:
    table = metadata.resolve_table(duck_app, _ctx(), None, None, "domains_top")
    assert (table.engine, table.name, table.schema.names) == ("duckdb", "domains_top", ["x"])
    view = metadata.resolve_table(duck_app, _ctx(), None, "analytics", "domains_top")
    assert (view.engine, view.name) == ("analytics", "domains.top")
    assert metadata.resolve_table(duck_app, _ctx(), None, None, "OWNERS").name == "owners"


def test_primary_keys_of_duckdb_tables(duck_app: App) -> None:
    table = metadata.get_primary_keys(duck_app, _ctx(), None, None, "owners")
    assert [
        (r["catalog_name"], r["db_schema_name"], r["column_name"], r["key_sequence"]) for r in table.to_pylist()
    ] == [("duckdb", "main", "id", 1)]


def test_foreign_keys_of_duckdb_tables(duck_app: App) -> None:
    exported = metadata.get_exported_keys(duck_app, _ctx(), "duckdb", "main", "owners")
    assert _key_rows(exported) == [("owners", "id", "pets", "owner_id", 1, NO_ACTION, NO_ACTION)]
    imported = metadata.get_imported_keys(duck_app, _ctx(), None, None, "pets")
    assert _key_rows(imported) == _key_rows(exported)
    assert imported.column("pk_key_name")[0].as_py() is not None


# -- PostgreSQL configured but down ----------------------------------------------------------------


@pytest.fixture
def pg_down_app(tmp_path: Path, pg_database: str) -> Iterator[App]:
    """An App whose PostgreSQL went away after start-up (a proxy in between is cut)."""
    proxy = TcpProxy(5432)
    app = App(_small_settings(tmp_path, postgres=pg_settings(pg_database, port=proxy.port, breaker_open_s=30)))
    try:
        proxy.cut()
        yield app
    finally:
        app.close()


def test_tables_leave_out_postgres_while_it_is_down(pg_down_app: App) -> None:
    assert _column(metadata.get_catalogs(pg_down_app, _ctx()), "catalog_name") == ["duckdb", "postgres"]
    tables = metadata.get_tables(pg_down_app, _ctx(), None, None, None, [], False)
    assert set(_column(tables, "catalog_name")) == {"duckdb"}
    assert "cdx_records" in _column(tables, "table_name")
    assert metadata.get_exported_keys(pg_down_app, _ctx(), None, None, "users").num_rows == 0


def test_tables_of_postgres_alone_unavailable_while_it_is_down(pg_down_app: App) -> None:
    with pytest.raises(Unavailable):
        metadata.get_tables(pg_down_app, _ctx(), "postgres", None, None, [], False)
    with pytest.raises(Unavailable):
        metadata.get_primary_keys(pg_down_app, _ctx(), "postgres", None, "users")
    # a schema pattern that leaves no PostgreSQL schema does not ask PostgreSQL at all
    assert metadata.get_tables(pg_down_app, _ctx(), "postgres", "m%", None, [], False).num_rows == 0
