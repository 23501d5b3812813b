-- The login role user queries run as: it can read the OLTP tables and nothing else.
-- Idempotent; applied at start-up after postgres.sql by the schema owner.
-- Give it a password once, as an administrator:  ALTER ROLE chrono_reader PASSWORD '...';
-- then set FLIGHT_POSTGRES__READER_URI=postgresql://chrono_reader:...@host:5432/chrono

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chrono_reader') THEN
        CREATE ROLE chrono_reader LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
    END IF;
END
$$;

-- every transaction of this role is read-only unless it says otherwise (it cannot write anyway)
ALTER ROLE chrono_reader SET default_transaction_read_only = on;

DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO chrono_reader', current_database());
END
$$;

REVOKE ALL ON SCHEMA public FROM chrono_reader;
GRANT USAGE ON SCHEMA public TO chrono_reader;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM chrono_reader;  -- column grants go with it
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM chrono_reader;

-- SELECT column by column: every column of every table and view in public except those
-- whose comment marks them secret (postgres.sql), so that secrets stay with the schema
-- owner. A table created later gets its grants at the next start-up.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname, string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) AS columns
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
        LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_class'::regclass AND d.objsubid = a.attnum
        WHERE c.relkind IN ('r', 'p', 'v', 'm') AND coalesce(d.description, '') NOT LIKE 'secret%'
        GROUP BY c.relname
    LOOP
        EXECUTE format('GRANT SELECT (%s) ON public.%I TO chrono_reader', t.columns, t.relname);
    END LOOP;
END
$$;
