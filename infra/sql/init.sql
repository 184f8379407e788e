-- Context Memory Gateway: one-time setup of a fresh production database.
--
-- Run as a superuser connected to the (empty) target database, before the first
-- `cmg migrate`; psql 15 or newer:
--
--   CMG_DB_OWNER_PASSWORD=... CMG_DB_APP_PASSWORD=... CMG_DB_READONLY_PASSWORD=... \
--     psql "postgresql://postgres@db.internal/cmg" -v ON_ERROR_STOP=1 -f infra/sql/init.sql
--
-- docker-compose.local.yml mounts it into /docker-entrypoint-initdb.d, which does the same
-- on the first start of the postgres container.
--
-- Roles (least privilege):
--   cmg_owner     owns the database and schema; runs `cmg migrate` (DDL). Never used by
--                 the serving processes.
--   cmg_app       DATABASE_URL of gateways and workers: read and write rows, nothing else
--                 (no CREATE, ALTER, DROP or TRUNCATE).
--   cmg_readonly  SELECT only, read-only transactions: dashboards, analysts, pg_dump.
--
-- Passwords come from psql variables (-v owner_password=... app_password=...
-- readonly_password=...) or else from the environment variables CMG_DB_OWNER_PASSWORD,
-- CMG_DB_APP_PASSWORD and CMG_DB_READONLY_PASSWORD. A role given no password keeps the one
-- it has (a new one has none and cannot log in with a password until it is set).
--
-- Idempotent: run it again after migrations to re-apply grants to existing tables.

\set ON_ERROR_STOP on

-- pgvector for the embeddings; created here because it needs a superuser.
CREATE EXTENSION IF NOT EXISTS vector;

-- Roles ---------------------------------------------------------------------------------
SELECT 'CREATE ROLE cmg_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmg_owner') \gexec
SELECT 'CREATE ROLE cmg_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmg_app') \gexec
SELECT 'CREATE ROLE cmg_readonly LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cmg_readonly') \gexec

ALTER ROLE cmg_readonly SET default_transaction_read_only = on;

\if :{?owner_password}
\else
\getenv owner_password CMG_DB_OWNER_PASSWORD
\endif
\if :{?owner_password}
ALTER ROLE cmg_owner PASSWORD :'owner_password';
\endif

\if :{?app_password}
\else
\getenv app_password CMG_DB_APP_PASSWORD
\endif
\if :{?app_password}
ALTER ROLE cmg_app PASSWORD :'app_password';
\endif

\if :{?readonly_password}
\else
\getenv readonly_password CMG_DB_READONLY_PASSWORD
\endif
\if :{?readonly_password}
ALTER ROLE cmg_readonly PASSWORD :'readonly_password';
\endif

-- Database ------------------------------------------------------------------------------
SELECT format('ALTER DATABASE %I OWNER TO cmg_owner', current_database()) \gexec
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO cmg_app', current_database()) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO cmg_readonly', current_database()) \gexec

-- Schema: the migrations create their tables in public, owned by cmg_owner.
ALTER SCHEMA public OWNER TO cmg_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO cmg_app, cmg_readonly;

-- Objects that already exist (when re-run after `cmg migrate`).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cmg_app;
GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO cmg_app;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cmg_readonly;
GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO cmg_readonly;

-- Objects the migrations will create: cmg_owner's new tables and sequences get the same
-- grants automatically.
ALTER DEFAULT PRIVILEGES FOR ROLE cmg_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cmg_app;
ALTER DEFAULT PRIVILEGES FOR ROLE cmg_owner IN SCHEMA public
    GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO cmg_app;
ALTER DEFAULT PRIVILEGES FOR ROLE cmg_owner IN SCHEMA public
    GRANT SELECT ON TABLES TO cmg_readonly;
ALTER DEFAULT PRIVILEGES FOR ROLE cmg_owner IN SCHEMA public
    GRANT SELECT ON SEQUENCES TO cmg_readonly;
