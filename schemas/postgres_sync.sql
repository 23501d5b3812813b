-- Change capture for the DuckDB replicas: a trigger-maintained change table.
-- Idempotent; applied by the schema owner at start-up when sync is on.
--
-- Every committed INSERT, UPDATE, DELETE or TRUNCATE on a replicated table leaves rows
-- in chrono_sync.changes: the table, the operation, the primary key as text and the
-- writing transaction's id. Statement-level triggers with transition tables write one
-- INSERT ... SELECT per statement, so a bulk statement costs one extra insert, not one
-- per row. A consumer remembers the PostgreSQL snapshot it last applied; the changes
-- it has not seen are those whose transaction was not visible in that snapshot.

CREATE SCHEMA IF NOT EXISTS chrono_sync;

CREATE TABLE IF NOT EXISTS chrono_sync.changes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    table_name  TEXT NOT NULL,
    op          CHAR(1) NOT NULL,           -- I, U, D, or T (truncate: the whole table)
    row_key     TEXT,                       -- primary key as text; NULL for T
    xid         XID8 NOT NULL DEFAULT pg_current_xact_id(),
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS changes_xid ON chrono_sync.changes (xid);

-- one row per consumer (a server's DuckDB file): the oldest transaction it may still need
CREATE TABLE IF NOT EXISTS chrono_sync.consumers (
    name        TEXT PRIMARY KEY,
    horizon     XID8 NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION chrono_sync.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO chrono_sync.changes (table_name, op, row_key)
    SELECT TG_TABLE_NAME, 'I', n.id::text FROM new_rows n;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION chrono_sync.capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    -- both keys: an update may change the primary key itself
    INSERT INTO chrono_sync.changes (table_name, op, row_key)
    SELECT TG_TABLE_NAME, 'U', k FROM (SELECT n.id::text FROM new_rows n
                                       UNION SELECT o.id::text FROM old_rows o) AS keys (k);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION chrono_sync.capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO chrono_sync.changes (table_name, op, row_key)
    SELECT TG_TABLE_NAME, 'D', o.id::text FROM old_rows o;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION chrono_sync.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO chrono_sync.changes (table_name, op, row_key) VALUES (TG_TABLE_NAME, 'T', NULL);
    RETURN NULL;
END
$$;

-- chrono_sync.track('projects') installs the four triggers on a table (idempotent)
CREATE OR REPLACE FUNCTION chrono_sync.track(target TEXT) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(target) AND tgname LIKE 'chrono\_sync\__') = 4 THEN
        RETURN;  -- already tracked: take no lock on the table
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS chrono_sync_i ON %I', target);
    EXECUTE format('CREATE TRIGGER chrono_sync_i AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION chrono_sync.capture_insert()', target);
    EXECUTE format('DROP TRIGGER IF EXISTS chrono_sync_u ON %I', target);
    EXECUTE format('CREATE TRIGGER chrono_sync_u AFTER UPDATE ON %I REFERENCING NEW TABLE AS new_rows '
                   'OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION chrono_sync.capture_update()', target);
    EXECUTE format('DROP TRIGGER IF EXISTS chrono_sync_d ON %I', target);
    EXECUTE format('CREATE TRIGGER chrono_sync_d AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows '
                   'FOR EACH STATEMENT EXECUTE FUNCTION chrono_sync.capture_delete()', target);
    EXECUTE format('DROP TRIGGER IF EXISTS chrono_sync_t ON %I', target);
    EXECUTE format('CREATE TRIGGER chrono_sync_t AFTER TRUNCATE ON %I '
                   'FOR EACH STATEMENT EXECUTE FUNCTION chrono_sync.capture_truncate()', target);
END
$$;

REVOKE ALL ON SCHEMA chrono_sync FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA chrono_sync FROM PUBLIC;
