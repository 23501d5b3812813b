"""Authentication, roles, project scoping and TLS through a real Flight server."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_manager
import jwt
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from flight_server.app import App
from flight_server.commands import parse_command
from flight_server.context import Caller, RequestContext
from flight_server.errors import ChronoError, PermissionDenied, Unauthenticated, to_flight_error
from flight_server.security.auth import hash_password
from flight_server.security.middleware import caller_of, require
from flight_server.server import ChronoFlightServer
from flight_server.settings import AuthSettings, CacheSettings, Settings, TLSSettings

from support.flightsql import connect
from support.servers import ServerHandle, start_server, stop_server
from support.tokens import SECRET, get, options, token


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    users = tmp_path_factory.mktemp("users") / "users.json"
    users.write_text(
        json.dumps(
            [{"username": "bi-tool", "password_hash": hash_password("pw-123", b"salt-salt-salt-1"), "role": "analyst",
              "projects": ["proj-002"]}]
        )
    )  # fmt: skip
    handle = start_server(
        tmp_path_factory.mktemp("secured"),
        rows=20_000,
        auth=AuthSettings(jwt_secret=SECRET, users_file=users),
        cache=CacheSettings(warm_top_n=0),
    )
    yield handle
    stop_server(handle)


@pytest.mark.parametrize(
    "bearer",
    [
        None,
        "garbage",
        jwt.encode({"sub": "x", "aud": "chrono-flight", "role": "admin"}, SECRET, algorithm="HS256"),  # no exp
        token("admin", exp=int(time.time()) - 3600),
        token("admin", aud="someone-else"),
        token("admin", nbf=int(time.time()) + 3600),
    ],
)
def test_security_bad_or_missing_token_is_unauthenticated(secured: ServerHandle, bearer: str | None) -> None:
    call = options(bearer) if bearer else flight.FlightCallOptions()
    with pytest.raises(flight.FlightUnauthenticatedError) as caught:
        secured.client.do_get(flight.Ticket(b'{"query": "domains.top"}'), options=call).read_all()
    assert "\n" not in str(caught.value).split(". Detail")[0]
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(secured.client.list_flights(options=call))


def test_security_viewer_runs_named_queries_but_not_sql(secured: ServerHandle) -> None:
    viewer = token("viewer", ["proj-001"])
    assert get(secured, {"query": "domains.top", "params": {"limit": 3}}, viewer).num_rows > 0
    with pytest.raises(flight.FlightUnauthorizedError, match="viewer"):
        get(secured, {"sql": "SELECT 1"}, viewer)
    with pytest.raises(flight.FlightUnauthorizedError):
        get(secured, {"dataset": "cdx_records"}, viewer)


def test_security_ticket_of_another_caller_is_authorized_again(secured: ServerHandle) -> None:
    info = secured.client.get_flight_info(
        flight.FlightDescriptor.for_command(b'{"sql": "SELECT count(*) AS n FROM cdx_records"}'),
        options=options(token("admin")),
    )
    with pytest.raises(flight.FlightUnauthorizedError):
        secured.client.do_get(info.endpoints[0].ticket, options=options(token("viewer", ["proj-001"]))).read_all()
    scoped = secured.client.do_get(info.endpoints[0].ticket, options=options(token("analyst", ["proj-001"])))
    everything = secured.client.do_get(info.endpoints[0].ticket, options=options(token("admin")))
    assert scoped.read_all().column("n")[0].as_py() < everything.read_all().column("n")[0].as_py()


def test_security_analyst_sql_sees_only_its_projects(secured: ServerHandle) -> None:
    analyst = token("analyst", ["proj-001", "proj-003"])
    sql = (
        "WITH cdx_records AS (SELECT project_id FROM cdx_records) "
        "SELECT DISTINCT project_id FROM cdx_records UNION SELECT project_id FROM main.content_analytics"
    )
    seen = set(get(secured, {"sql": sql}, analyst).column("project_id").to_pylist())
    assert seen == {"proj-001", "proj-003"}
    assert len(set(get(secured, {"sql": sql}, token("admin")).column("project_id").to_pylist())) > 2
    assert get(secured, {"sql": "SELECT * FROM cdx_records"}, token("analyst", [])).num_rows == 0


def test_security_cache_keys_carry_the_scope(secured: ServerHandle) -> None:
    command = {"sql": "SELECT count(*) AS n FROM cdx_records"}
    first = get(secured, command, token("analyst", ["proj-001"])).column("n")[0].as_py()
    second = get(secured, command, token("analyst", ["proj-002"])).column("n")[0].as_py()
    assert first != second


def test_security_named_query_for_a_foreign_project_is_denied(secured: ServerHandle) -> None:
    viewer = token("viewer", ["proj-001"])
    with pytest.raises(flight.FlightUnauthorizedError, match="proj-002"):
        get(secured, {"query": "projects.content_quality", "params": {"project_id": "proj-002"}}, viewer)
    with pytest.raises(flight.FlightUnauthorizedError, match="proj-009"):
        get(secured, {"query": "projects.comparison", "params": {"project_ids": ["proj-001", "proj-009"]}}, viewer)
    top = get(secured, {"query": "projects.comparison"}, viewer)
    assert top.column("project_id").to_pylist() == ["proj-001"]


def test_security_actions_need_their_role(secured: ServerHandle) -> None:
    body = json.dumps({"tables": ["cdx_records"]}).encode()
    with pytest.raises(flight.FlightUnauthorizedError):
        list(secured.client.do_action(flight.Action("cache.invalidate", body), options=options(token("analyst", []))))
    assert list(secured.client.do_action(flight.Action("cache.invalidate", body), options=options(token("admin"))))
    assert list(secured.client.do_action(flight.Action("health", b""), options=options(token("viewer", []))))


def test_security_ingest_needs_service_or_admin(secured: ServerHandle) -> None:
    table = pa.table({"project_id": ["proj-001"], "n": [1]})
    for role, allowed in (("viewer", False), ("analyst", False), ("service", True)):
        writer, _ = secured.client.do_put(
            flight.FlightDescriptor.for_path("sec_events"), table.schema, options=options(token(role, ["proj-001"]))
        )
        if allowed:
            writer.write_table(table)
            writer.close()
        else:
            with pytest.raises(flight.FlightUnauthorizedError):
                writer.write_table(table)
                writer.close()


# -- write scoping: a scoped caller puts only rows of its own projects ------------------------


def put_as(handle: ServerHandle, dataset: str, data: pa.Table, bearer: str, chunk: int | None = None) -> Any:
    """A DoPut with a bearer token; the put result."""
    writer, acks = handle.client.do_put(flight.FlightDescriptor.for_path(dataset), data.schema, options=options(bearer))
    writer.write_table(data, max_chunksize=chunk)
    writer.done_writing()
    ack = acks.read()
    writer.close()
    return json.loads(ack.to_pybytes())


def captures(domain: str, projects: list[str | None]) -> pa.Table:
    n = len(projects)
    return pa.table(
        {
            "id": [f"{domain}-{i}" for i in range(n)],
            "domain": [domain] * n,
            "original_url": [f"https://{domain}/{i}" for i in range(n)],
            "unix_timestamp": pa.array([1_714_521_600 + i for i in range(n)], pa.int64()),
            "project_id": pa.array(projects, pa.string()),
        }
    )


def dataset_files(handle: ServerHandle) -> list[str]:
    root = handle.data_dir / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def stored(handle: ServerHandle, domain: str) -> int:
    found = get(handle, {"sql": f"SELECT count(*) AS n FROM cdx_records WHERE domain = '{domain}'", "cache": "bypass"},
                token("admin"))  # fmt: skip
    return int(found.column("n")[0].as_py())


def test_security_service_cannot_put_rows_of_another_project(secured: ServerHandle) -> None:
    service = token("service", ["proj-001"])
    before = dataset_files(secured)
    # the foreign rows come in the third batch, after rows the caller may write
    mixed = captures("foreign.example", ["proj-001"] * 20 + ["proj-002"] * 3)
    with pytest.raises(flight.FlightUnauthorizedError, match="no write access to project 'proj-002'"):
        put_as(secured, "cdx_records", mixed, service, chunk=10)
    with pytest.raises(flight.FlightUnauthorizedError, match="no project_id"):
        put_as(secured, "cdx_records", captures("nulls.example", ["proj-001", None]), service)
    without = captures("missing.example", ["proj-001"]).drop_columns(["project_id"])
    with pytest.raises(flight.FlightUnauthorizedError, match="no project_id"):
        put_as(secured, "cdx_records", without, service)
    assert stored(secured, "foreign.example") == stored(secured, "nulls.example") == stored(secured, "missing.example")
    assert stored(secured, "foreign.example") == 0
    assert dataset_files(secured) == before  # nothing committed, nothing left behind
    assert put_as(secured, "cdx_records", captures("own.example", ["proj-001"] * 3), service)["rows"] == 3
    assert put_as(secured, "cdx_records", captures("any.example", ["proj-002", None]), token("admin"))["rows"] == 2


def test_security_service_cannot_widen_a_shared_schema(secured: ServerHandle) -> None:
    service = token("service", ["proj-001"])
    junk = captures("junk.example", ["proj-001"])
    for i in range(50):
        junk = junk.append_column(f"junk_{i}", pa.array(["x"], pa.string()))
    columns = get(secured, {"sql": "SELECT * FROM cdx_records LIMIT 0"}, token("admin")).column_names
    with pytest.raises(flight.FlightUnauthorizedError, match="only an admin may add columns to dataset 'cdx_records'"):
        put_as(secured, "cdx_records", junk, service)
    assert get(secured, {"sql": "SELECT * FROM cdx_records LIMIT 0"}, token("admin")).column_names == columns
    # a new dataset is the service's to create; once it exists, its schema is an admin's to change
    first = pa.table({"project_id": ["proj-001"], "n": [1]})
    assert put_as(secured, "sec_shared", first, service)["rows"] == 1
    with pytest.raises(flight.FlightUnauthorizedError, match=r"only an admin may add columns.*new: extra"):
        put_as(secured, "sec_shared", first.append_column("extra", pa.array([2])), service)
    assert put_as(secured, "sec_shared", first.append_column("extra", pa.array([2])), token("admin"))["rows"] == 1


def test_security_project_column_matches_without_case(secured: ServerHandle) -> None:
    service = token("service", ["proj-001"])
    cased = pa.table({"Project_ID": ["proj-001", "proj-002"], "n": [1, 2]})
    with pytest.raises(flight.FlightUnauthorizedError, match="no write access to project 'proj-002'"):
        put_as(secured, "sec_cased", cased, service)
    assert not (secured.data_dir / "datasets" / "sec_cased").exists()


def test_security_flightsql_bulk_ingest_is_scoped(secured: ServerHandle) -> None:
    bearer = {"adbc.flight.sql.authorization_header": f"Bearer {token('service', ['proj-001'])}"}
    with connect(secured, **bearer) as conn, conn.cursor() as cur:
        with pytest.raises(adbc_driver_manager.Error, match="no write access to project 'proj-002'"):
            cur.adbc_ingest("cdx_records", captures("bulk.example", ["proj-002"]), mode="append")
        own = pa.table({"project_id": ["proj-001"], "n": [5]})
        assert cur.adbc_ingest("sec_bulk", own, mode="create") == 1
        with pytest.raises(adbc_driver_manager.Error, match="only an admin may replace dataset 'sec_bulk'"):
            cur.adbc_ingest("sec_bulk", own, mode="replace")
        assert cur.adbc_ingest("cdx_records", captures("bulk.example", ["proj-001"]), mode="append") == 1
    assert stored(secured, "bulk.example") == 1


def test_security_basic_auth_handshake_returns_a_bearer_token(secured: ServerHandle) -> None:
    header, value = secured.client.authenticate_basic_token("bi-tool", "pw-123")
    assert header == b"authorization" and value.startswith(b"Bearer ")
    bearer = value.decode().split(" ", 1)[1]
    seen = set(get(secured, {"sql": "SELECT DISTINCT project_id FROM cdx_records"}, bearer).column(0).to_pylist())
    assert seen == {"proj-002"}
    with pytest.raises(flight.FlightUnauthenticatedError):
        secured.client.authenticate_basic_token("bi-tool", "wrong")


def test_security_every_named_query_runs_scoped(server: ServerHandle) -> None:
    caller = Caller(subject="t", role="analyst", projects=("proj-001",))
    for query in server.app.catalog:
        if query.engine != "duckdb" or any(p.required for p in query.params if not p.name.startswith("project")):
            continue
        params = {p.name: "proj-001" for p in query.params if p.required}
        ctx = RequestContext(rpc="test", caller=caller)
        plan = server.app.executor.plan(
            parse_command(json.dumps({"query": query.name, "params": params}).encode()), ctx
        )
        table = server.app.executor.run_to_table(plan, ctx)
        if "project_id" in table.column_names:
            assert set(table.column("project_id").to_pylist()) <= {"proj-001", None}


def test_security_refuses_public_bind_without_auth(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, host="0.0.0.0", port=0)
    app = App(settings)
    try:
        with pytest.raises(SystemExit, match="without authentication"):
            ChronoFlightServer(app)
    finally:
        app.close()


# -- failing closed ----------------------------------------------------------------------


class _Recorder(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Middleware a deployment might add (tracing, logging): records the calls it sees."""

    def __init__(self) -> None:
        self.methods: list[flight.FlightMethod] = []

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        self.methods.append(info.method)


def test_security_extra_middleware_cannot_drop_authentication(tmp_path: Path) -> None:
    app = App(Settings(data_dir=tmp_path, port=0, auth=AuthSettings(jwt_secret=SECRET)))
    recorder = _Recorder()
    server = None
    try:
        with pytest.raises(ValueError, match="'auth' is reserved by the server"):
            ChronoFlightServer(app, "grpc://127.0.0.1:0", middleware={"auth": recorder})
        server = ChronoFlightServer(app, "grpc://127.0.0.1:0", middleware={"tracing": recorder})
        threading.Thread(target=server.serve, daemon=True).start()
        client = flight.connect(f"grpc://127.0.0.1:{server.port}")
        ticket = flight.Ticket(b'{"sql": "SELECT 1 AS v"}')
        with pytest.raises(flight.FlightUnauthenticatedError, match="missing authorization header"):
            client.do_get(ticket).read_all()
        with pytest.raises(flight.FlightUnauthenticatedError, match="invalid token"):
            list(client.list_flights(options=options("forged")))
        assert client.do_get(ticket, options=options(token("admin"))).read_all().column("v")[0].as_py() == 1
        assert recorder.methods == [flight.FlightMethod.DO_GET]  # it only sees calls authentication let in
    finally:
        if server is not None:
            server.shutdown()
        app.close()


class _WithoutAuth(flight.FlightServerBase):  # type: ignore[misc]
    """A server wired without the auth middleware, asking for the caller all the same."""

    def list_flights(self, context: flight.ServerCallContext, criteria: bytes) -> Any:
        try:
            caller_of(context)
        except ChronoError as exc:
            raise to_flight_error(exc) from None
        return iter([])


def test_security_no_auth_middleware_means_no_caller() -> None:
    nobody = Caller()
    assert (nobody.role, nobody.projects, nobody.scope) == ("none", (), "")
    for permission in ("query", "metadata", "sql", "ingest", "admin"):
        with pytest.raises(PermissionDenied, match="role 'none' may not"):
            require(nobody, permission, "do this")
    with pytest.raises(Unauthenticated, match="could not authenticate"):
        caller_of(None)
    server = _WithoutAuth("grpc://127.0.0.1:0")
    threading.Thread(target=server.serve, daemon=True).start()
    try:
        with pytest.raises(flight.FlightUnauthenticatedError, match="could not authenticate the call"):
            list(flight.connect(f"grpc://127.0.0.1:{server.port}").list_flights())
    finally:
        server.shutdown()


# -- TLS -----------------------------------------------------------------------------------


def _cert(subject: str, issuer_key: Any, issuer: x509.Name | None, ca: bool) -> tuple[Any, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return key, builder.sign(issuer_key or key, hashes.SHA256())


def _pem(key: Any, cert: x509.Certificate) -> tuple[bytes, bytes]:
    return (
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        cert.public_bytes(serialization.Encoding.PEM),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _cert("test-ca", None, None, ca=True)
    files: dict[str, Path] = {}
    for name in ("server", "client"):
        key, cert = _cert(name, ca_key, ca_cert.subject, ca=False)
        key_pem, cert_pem = _pem(key, cert)
        (folder / f"{name}.key").write_bytes(key_pem)
        (folder / f"{name}.crt").write_bytes(cert_pem)
        files[f"{name}_key"], files[f"{name}_cert"] = folder / f"{name}.key", folder / f"{name}.crt"
    (folder / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files["ca"] = folder / "ca.crt"
    return files


def _tls_server(tmp_path: Path, tls: TLSSettings) -> tuple[App, ChronoFlightServer]:
    import threading

    app = App(Settings(data_dir=tmp_path, port=0, tls=tls))
    server = ChronoFlightServer(app)
    threading.Thread(target=server.serve, daemon=True).start()
    return app, server


def test_security_tls_serves_grpc_tls(tmp_path: Path, pki: dict[str, Path]) -> None:
    app, server = _tls_server(tmp_path, TLSSettings(cert_file=pki["server_cert"], key_file=pki["server_key"]))
    try:
        client = flight.connect(f"grpc+tls://localhost:{server.port}", tls_root_certs=pki["ca"].read_bytes())
        assert client.do_get(flight.Ticket(b'{"sql": "SELECT 42 AS v"}')).read_all().column("v")[0].as_py() == 42
        plain = flight.connect(f"grpc://localhost:{server.port}")
        with pytest.raises(flight.FlightUnavailableError):
            plain.do_get(flight.Ticket(b'{"sql": "SELECT 1"}'), options=flight.FlightCallOptions(timeout=3)).read_all()
    finally:
        server.shutdown()
        app.close()


def test_security_mutual_tls_requires_a_client_certificate(tmp_path: Path, pki: dict[str, Path]) -> None:
    tls = TLSSettings(cert_file=pki["server_cert"], key_file=pki["server_key"], client_ca_file=pki["ca"])
    app, server = _tls_server(tmp_path, tls)
    url = f"grpc+tls://localhost:{server.port}"
    try:
        anonymous = flight.connect(url, tls_root_certs=pki["ca"].read_bytes())
        with pytest.raises(flight.FlightUnavailableError):
            anonymous.do_get(
                flight.Ticket(b'{"sql": "SELECT 1"}'), options=flight.FlightCallOptions(timeout=3)
            ).read_all()
        client = flight.connect(
            url,
            tls_root_certs=pki["ca"].read_bytes(),
            cert_chain=pki["client_cert"].read_bytes(),
            private_key=pki["client_key"].read_bytes(),
        )
        assert client.do_get(flight.Ticket(b'{"sql": "SELECT 7 AS v"}')).read_all().column("v")[0].as_py() == 7
    finally:
        server.shutdown()
        app.close()
