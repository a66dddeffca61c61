"""deploy/postgres-setup.sql on a real PostgreSQL: the app's role reads and writes rows, nothing more."""

from __future__ import annotations

import io
import secrets
import shutil
import subprocess

import pytest
from django.core.management import call_command
from django.db import connection

from tests.deploy import servers

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(shutil.which("psql") is None, reason="needs psql (Debian package postgresql-client)"),
]


def psql(settings_dict: dict, *args: str, user: str | None = None, database: str = "postgres"):
    command = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", settings_dict.get("HOST") or "127.0.0.1"]
    command += [
        "-p",
        str(settings_dict.get("PORT") or 5432),
        "-U",
        user or settings_dict["USER"],
        "-d",
        database,
    ]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)


def test_app_role_can_use_the_migrated_tables_but_not_change_the_schema(tmp_path):
    admin = connection.settings_dict
    suffix = secrets.token_hex(4)
    name = f"rvi_setup_{suffix}"
    out = tmp_path / "rendered"
    call_command(
        "deploy_config",
        domain="rvi.example.org",
        app_dir="/srv/iama-rvi",
        venv="/srv/iama-rvi/.venv",
        user="rvi",
        out=str(out),
        resolver="127.0.0.1",
        db_name=name,
        db_user=name,
        stdout=io.StringIO(),
    )
    try:
        setup = psql(
            admin,
            "-v",
            "password='app-pw'",
            "-v",
            "owner_password='owner-pw'",
            "-f",
            str(out / "postgres-setup.sql"),
        )
        assert setup.returncode == 0, setup.stderr
        host = admin.get("HOST") or "127.0.0.1"
        port = admin.get("PORT") or 5432
        app = servers.App(
            tmp_path / "app", DATABASE_URL=f"postgres://{name}_owner:owner-pw@{host}:{port}/{name}"
        )
        app.manage("migrate", "--no-input", "--verbosity", "0")

        as_app = psql(admin, "-c", "SELECT count(*) FROM vetting_application", user=name, database=name)
        assert as_app.returncode == 0, as_app.stderr
        app.env["DATABASE_URL"] = f"postgres://{name}:app-pw@{host}:{port}/{name}"
        app.manage(
            "shell", "-c", "from django.contrib.auth.models import Group; Group.objects.create(name='x')"
        )
        # Rows only: no TRUNCATE (it skips DELETE's row checks), REFERENCES or TRIGGER on any table.
        rights = psql(
            admin,
            "-At",
            "-c",
            "SELECT DISTINCT privilege_type FROM information_schema.role_table_grants WHERE grantee = current_user",
            user=name,
            database=name,
        )
        assert rights.returncode == 0, rights.stderr
        assert sorted(rights.stdout.split()) == ["DELETE", "INSERT", "SELECT", "UPDATE"]
        for statement in (
            "CREATE TABLE intruder (id int)",
            "DROP TABLE vetting_application",
            f"CREATE DATABASE {name}_x",
            f"CREATE ROLE {name}_x LOGIN",
            "CREATE SCHEMA intruder",
        ):
            refused = psql(admin, "-c", statement, user=name, database=name)
            assert refused.returncode != 0, statement
            assert "permission denied" in refused.stderr or "must be owner" in refused.stderr, refused.stderr
        # Another role of the same server may not even connect.
        assert psql(admin, "-c", f"CREATE ROLE {name}_stranger LOGIN").returncode == 0
        stranger = psql(admin, "-c", "SELECT 1", user=f"{name}_stranger", database=name)
        assert stranger.returncode != 0
        assert "permission denied for database" in stranger.stderr, stranger.stderr
    finally:
        # Also what a statement that should have been refused made.
        for database in (name, f"{name}_x"):
            psql(admin, "-c", f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        for role in (f"{name}_x", name, f"{name}_owner", f"{name}_stranger"):
            psql(admin, "-c", f"DROP ROLE IF EXISTS {role}")
