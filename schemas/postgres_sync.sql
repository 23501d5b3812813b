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

-- one function for the four triggers; each branch reads only the transition tables its
-- trigger declares (PL/pgSQL plans a statement when it first runs)
CREATE OR REPLACE FUNCTION chrono_sync.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO chrono_sync.changes (table_name, op, row_key)
        SELECT TG_TABLE_NAME, 'I', n.id::text FROM new_rows n;
    ELSIF TG_OP = 'UPDATE' THEN
        -- both keys: an update may change the primary key itself
        INSERT INTO chrono_sync.changes (table_name, op, row_key)
        SELECT TG_TABLE_NAME, 'U', k FROM (SELECT n.id::text FROM new_rows n
                                           UNION SELECT o.id::text FROM old_rows o) AS keys (k);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO chrono_sync.changes (table_name, op, row_key)
        SELECT TG_TABLE_NAME, 'D', o.id::text FROM old_rows o;
    ELSE
        INSERT INTO chrono_sync.changes (table_name, op, row_key) VALUES (TG_TABLE_NAME, 'T', NULL);
    END IF;
    RETURN NULL;
END
$$;

-- chrono_sync.track('projects') installs the four triggers on a table (idempotent)
CREATE OR REPLACE FUNCTION chrono_sync.track(target TEXT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t RECORD;
BEGIN
    IF (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(target) AND tgname LIKE 'chrono\_sync\__') = 4 THEN
        RETURN;  -- already tracked: take no lock on the table
    END IF;
    FOR t IN SELECT * FROM (VALUES
        ('chrono_sync_i', 'INSERT', 'REFERENCING NEW TABLE AS new_rows'),
        ('chrono_sync_u', 'UPDATE', 'REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows'),
        ('chrono_sync_d', 'DELETE', 'REFERENCING OLD TABLE AS old_rows'),
        ('chrono_sync_t', 'TRUNCATE', '')) AS v (name, event, transition)
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', t.name, target);
        EXECUTE format('CREATE TRIGGER %I AFTER %s ON %I %s FOR EACH STATEMENT EXECUTE FUNCTION chrono_sync.capture()',
                       t.name, t.event, target, t.transition);
    END LOOP;
END
$$;

-- chrono_sync.untrack('projects') removes them again: for an administrator who turns the
-- sync off on every server (nothing else deletes captured changes then)
CREATE OR REPLACE FUNCTION chrono_sync.untrack(target TEXT) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    suffix TEXT;
BEGIN
    FOREACH suffix IN ARRAY ARRAY['i', 'u', 'd', 't'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %I', 'chrono_sync_' || suffix, target);
    END LOOP;
    DELETE FROM chrono_sync.changes WHERE table_name = target;
END
$$;

REVOKE ALL ON SCHEMA chrono_sync FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA chrono_sync FROM PUBLIC;
