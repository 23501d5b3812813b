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
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM chrono_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO chrono_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO chrono_reader;

-- password hashes stay with the schema owner: every users column but hashed_password
REVOKE SELECT ON users FROM chrono_reader;
GRANT SELECT (id, email, is_verified, approval_status, created_at) ON users TO chrono_reader;
