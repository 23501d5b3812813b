"""Flight SQL metadata end to end: the ADBC driver browses the server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from google.protobuf.message import Message

from flight_server.flightsql import flight_sql_pb2 as sql
from flight_server.flightsql import metadata

from support.flightsql import connect, descriptor
from support.servers import ServerHandle

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def conn(hybrid_server: ServerHandle) -> Iterator[Any]:
    with connect(hybrid_server) as connection:
        yield connection


def _objects(conn: Any, depth: str, **filters: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = conn.adbc_get_objects(depth=depth, **filters).read_all().to_pylist()
    return rows


def test_flightsql_get_objects_catalogs(conn: Any) -> None:
    catalogs = _objects(conn, "catalogs")
    assert {c["catalog_name"] for c in catalogs} == {"duckdb", "postgres"}
    assert all(not c["catalog_db_schemas"] for c in catalogs)


def test_flightsql_get_objects_db_schemas(conn: Any) -> None:
    found = {
        (c["catalog_name"], s["db_schema_name"]) for c in _objects(conn, "db_schemas") for s in c["catalog_db_schemas"]
    }
    assert found == {("duckdb", "main"), ("duckdb", "analytics"), ("postgres", "public")}


def test_flightsql_get_objects_tables(conn: Any) -> None:
    found = {
        (c["catalog_name"], s["db_schema_name"], t["table_name"], t["table_type"])
        for c in _objects(conn, "tables")
        for s in c["catalog_db_schemas"]
        for t in s["db_schema_tables"]
    }
    assert ("duckdb", "main", "cdx_records", "VIEW") in found
    assert ("postgres", "public", "projects", "TABLE") in found
    assert ("duckdb", "analytics", "domains_top", "VIEW") in found
    assert all(name != "domains_timeline" for _, _, name, _ in found)  # it needs parameters


@pytest.mark.parametrize("depth", ["columns", "all"])
def test_flightsql_get_objects_columns(conn: Any, depth: str) -> None:
    [catalog] = _objects(conn, depth, catalog_filter="postgres", table_name_filter="projects")
    [schema] = catalog["catalog_db_schemas"]
    [table] = schema["db_schema_tables"]
    columns = [c["column_name"] for c in table["table_columns"]]
    assert "id" in columns and columns == sorted(columns, key=columns.index)
    assert [c["ordinal_position"] for c in table["table_columns"]] == list(range(1, len(columns) + 1))


def test_flightsql_get_objects_filters(conn: Any) -> None:
    tables = [
        t["table_name"]
        for c in _objects(conn, "tables", db_schema_filter="main", table_name_filter="cdx%")
        for s in c["catalog_db_schemas"]
        for t in s["db_schema_tables"]
    ]
    assert tables == ["cdx_records"]


# the pattern took seconds; with more '%' a regex translation backtracks for minutes
# on one 30-character name, holding the GIL: the marker bounds what linear matching needs
@pytest.mark.timeout(30, method="thread")
@pytest.mark.parametrize("pattern", ["%%%%%%%%%%#", "%" * 12 + "#", "%_" * 12 + "#", "c%" * 12 + "#%"])
def test_flightsql_get_tables_with_a_pathological_like_pattern_answers(
    hybrid_server: ServerHandle, pattern: str
) -> None:
    client = hybrid_server.client
    info = client.get_flight_info(descriptor(sql.CommandGetTables(table_name_filter_pattern=pattern)))
    assert client.do_get(info.endpoints[0].ticket).read_all().num_rows == 0
    # the same filters still find what they should
    found = sql.CommandGetTables(table_name_filter_pattern="%%%%%%%%%%s")
    info = client.get_flight_info(descriptor(found))
    names = client.do_get(info.endpoints[0].ticket).read_all().column("table_name").to_pylist()
    assert "cdx_records" in names and all(name.endswith("s") for name in names)


def test_flightsql_get_table_schema(conn: Any, hybrid_server: ServerHandle) -> None:
    schema = conn.adbc_get_table_schema("cdx_records", catalog_filter="duckdb", db_schema_filter="main")
    expected = hybrid_server.get({"sql": "SELECT * FROM cdx_records LIMIT 0"}).schema
    assert schema.names == expected.names
    view = conn.adbc_get_table_schema("domains_top", db_schema_filter="analytics")
    assert view.names == hybrid_server.get({"query": "domains.top"}).schema.names


def test_flightsql_get_table_types(conn: Any) -> None:
    assert sorted(conn.adbc_get_table_types()) == ["TABLE", "VIEW"]


def test_flightsql_get_info(conn: Any) -> None:
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Chrono Flight"
    assert info["vendor_version"]
    assert info["driver_name"]


def test_flightsql_select_from_a_listed_analytics_view(conn: Any, hybrid_server: ServerHandle) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM duckdb.analytics.domains_top")
        assert cur.fetch_arrow_table().equals(hybrid_server.get({"query": "domains.top"}))


COMMANDS: list[tuple[Message, pa.Schema]] = [
    (sql.CommandGetCatalogs(), metadata.catalogs_schema()),
    (sql.CommandGetDbSchemas(), metadata.db_schemas_schema()),
    (sql.CommandGetTables(include_schema=True), metadata.tables_schema(True)),
    (sql.CommandGetTables(), metadata.tables_schema(False)),
    (sql.CommandGetTableTypes(), metadata.table_types_schema()),
    (sql.CommandGetSqlInfo(), metadata.sql_info_schema()),
    (sql.CommandGetXdbcTypeInfo(), metadata.xdbc_type_info_schema()),
    (sql.CommandGetPrimaryKeys(table="projects"), metadata.primary_keys_schema()),
    (sql.CommandGetExportedKeys(table="projects"), metadata.foreign_keys_schema()),
    (sql.CommandGetImportedKeys(table="scrape_pages"), metadata.foreign_keys_schema()),
    (sql.CommandGetCrossReference(pk_table="projects", fk_table="scrape_pages"), metadata.foreign_keys_schema()),
]


@pytest.mark.parametrize(("command", "schema"), COMMANDS, ids=[type(c).__name__ for c, _ in COMMANDS])
def test_flightsql_metadata_rpcs_agree_on_the_schema(
    hybrid_server: ServerHandle, command: Message, schema: pa.Schema
) -> None:
    client = hybrid_server.client
    info = client.get_flight_info(descriptor(command))
    assert info.schema.equals(schema)
    assert client.get_schema(descriptor(command)).schema.equals(schema)
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.schema.equals(schema)
