"""The audit trail: every RPC lands in PostgreSQL's audit_logs, in the background."""

from __future__ import annotations

import json
import logging

import adbc_driver_postgresql.dbapi as pg
import pytest

from flight_server.security.audit import AuditLog, fingerprint

from support.servers import ServerHandle

pytestmark = pytest.mark.postgres


def test_audit_rpcs_reach_audit_logs(hybrid_server: ServerHandle) -> None:
    sql = "SELECT count(*) AS n FROM cdx_records WHERE domain = 'audit-probe.example'"
    hybrid_server.get({"sql": sql})
    hybrid_server.get({"query": "domains.top", "params": {"limit": 2}})
    with pytest.raises(Exception, match="syntax"):
        hybrid_server.get({"sql": "selec 1"})
    hybrid_server.app.audit.flush()
    uri = hybrid_server.app.settings.postgres.uri
    assert uri is not None
    with pg.connect(uri, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("SELECT details::text FROM audit_logs WHERE details ? 'query_id' ORDER BY id")
        rows = [json.loads(r[0]) for r in cur.fetchall()]
    mine = [r for r in rows if r.get("sql_fingerprint") == fingerprint(sql)]
    assert mine and mine[-1]["status"] == "ok" and mine[-1]["subject"] == "anonymous"
    assert all("audit-probe" not in json.dumps(r) for r in rows)  # the SQL text itself is never stored
    assert any(r["action"] == "domains.top" for r in rows)
    assert any(r["status"] == "invalid_argument" for r in rows)


def test_audit_never_blocks_when_postgres_is_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flight_server.audit")
    audit = AuditLog("postgresql://postgres@127.0.0.1:1/none?connect_timeout=1", interval_s=3600)
    try:
        for i in range(5):
            audit.record({"rpc": "DoGet", "n": i})
        audit.flush()
        assert audit.dropped == 5 and audit.written == 0
        assert sum(1 for r in caplog.records if r.getMessage() == "audit") == 5  # the log has every entry
    finally:
        audit.close()


def test_audit_fingerprint_folds_whitespace_and_case() -> None:
    assert fingerprint("SELECT  1\n FROM t") == fingerprint("select 1 from t")
    assert fingerprint("select 1") != fingerprint("select 2")
