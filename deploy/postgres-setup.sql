-- PostgreSQL for IaMA RVI, rendered by `manage.py deploy_config`.
-- Run once as the postgres superuser:
--   sudo -u postgres psql -v ON_ERROR_STOP=1 -v password="'app-password'" \
--        -v owner_password="'another-password'" < postgres-setup.sql
-- Two roles: {{ db_user }}_owner owns the schema and only runs migrations;
-- {{ db_user }} (the app, in DATABASE_URL) may only read and write rows: it
-- cannot create, alter or drop tables, nor create databases or roles.
-- Remote database? Use TLS: DATABASE_URL=postgres://...?sslmode=require
-- (sslmode=verify-full with the server's CA is better still).

CREATE ROLE {{ db_user }}_owner LOGIN PASSWORD :owner_password NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE {{ db_user }} LOGIN PASSWORD :password NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
CREATE DATABASE {{ db_name }} OWNER {{ db_user }}_owner ENCODING 'UTF8' TEMPLATE template0;
REVOKE ALL ON DATABASE {{ db_name }} FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE {{ db_name }} TO {{ db_user }};

\connect {{ db_name }}
REVOKE ALL ON SCHEMA public FROM PUBLIC;
ALTER SCHEMA public OWNER TO {{ db_user }}_owner;
GRANT USAGE ON SCHEMA public TO {{ db_user }};
-- Tables and sequences that migrations create later get the same rights.
ALTER DEFAULT PRIVILEGES FOR ROLE {{ db_user }}_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {{ db_user }};
ALTER DEFAULT PRIVILEGES FOR ROLE {{ db_user }}_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO {{ db_user }};

-- Releases run `manage.py migrate` with DATABASE_URL naming {{ db_user }}_owner
-- (deploy/README.md, "Each release"); the services never hold that password.
