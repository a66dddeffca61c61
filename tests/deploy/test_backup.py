"""`manage.py backup`: private files, rotation by age, and a verified restore."""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import psycopg
import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from psycopg import sql

from evidence.models import Evidence
from evidence.validation import validate_upload
from iama_vetting.management.commands import backup as backup_command
from iama_vetting.management.commands.backup import libpq_environment, postgres_params
from tests.factories import PDF_BYTES, upload
from vetting.models import Application


def run_backup(*args: str) -> str:
    out = io.StringIO()
    call_command("backup", *args, stdout=out)
    return out.getvalue()


def make_application() -> Application:
    return Application.objects.create(
        full_name="Ada Example",
        email="ada@example.org",
        referral="A friend",
        statement="Hello",
        consent_given_at=timezone.now(),
    )


@pytest.fixture(autouse=True)
def evidence_root(settings):
    """As deploy/README.md leaves it: the evidence root exists."""
    settings.EVIDENCE_ROOT.mkdir(parents=True, exist_ok=True)
    return settings.EVIDENCE_ROOT


def database_backup(directory):
    return next(
        path for path in directory.iterdir() if path.name.startswith("rvi-db-") and ".counts" not in path.name
    )


@pytest.mark.django_db(transaction=True)
def test_backup_files_are_private_and_verify_restores_the_same_rows(tmp_path, settings):
    make_application()
    (settings.EVIDENCE_ROOT / "ab").mkdir(parents=True)
    (settings.EVIDENCE_ROOT / "ab" / "x.pdf").write_bytes(b"%PDF")
    output = run_backup("--dir", str(tmp_path / "backups"))

    directory = tmp_path / "backups"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    names = sorted(path.name for path in directory.iterdir())
    assert len(names) == 3, names
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "Database backup:" in output and "Evidence archive:" in output

    backup = database_backup(directory)
    counts = json.loads(backup.with_name(backup.name.split(".")[0] + ".counts.json").read_text())["tables"]
    assert counts["vetting_application"] == 1
    verified = io.StringIO()
    call_command("backup", "--verify", str(backup), stdout=verified)
    assert "Backup verified" in verified.getvalue()


@pytest.mark.parametrize(
    ("table", "recorded", "message"),
    [
        ("vetting_application", 2, "vetting_application: 2 in the backup's record, 1 restored"),
        ("vetting_lost_table", 3, "vetting_lost_table: 3 in the backup's record, absent restored"),
    ],
    ids=["rows differ", "a table missing"],
)
@pytest.mark.django_db(transaction=True)
def test_verify_fails_when_the_restore_differs_from_the_record(tmp_path, table, recorded, message):
    make_application()
    run_backup("--dir", str(tmp_path))
    backup = database_backup(tmp_path)
    record = backup.with_name(backup.name.split(".")[0] + ".counts.json")
    data = json.loads(record.read_text())
    data["tables"][table] = recorded
    record.write_text(json.dumps(data))
    with pytest.raises(CommandError, match=message):
        call_command("backup", "--verify", str(backup), stdout=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_verify_refuses_a_file_that_is_not_a_backup(tmp_path):
    bogus = tmp_path / "rvi-db-20260101T000000Z.sqlite3"
    bogus.write_bytes(b"not a database at all" * 100)
    (tmp_path / "rvi-db-20260101T000000Z.counts.json").write_text('{"tables": {}}')
    with pytest.raises(CommandError, match="not a readable SQLite database|damaged"):
        call_command("backup", "--verify", str(bogus), stdout=io.StringIO())


@pytest.mark.parametrize("record", ['["x"]', '{"tables": ["x"]}', '{"tables": 5}'])
def test_verify_refuses_a_damaged_row_count_record(tmp_path, record):
    backup = tmp_path / "rvi-db-20260101T000000Z.sqlite3"
    backup.write_bytes(b"x")
    (tmp_path / "rvi-db-20260101T000000Z.counts.json").write_text(record)
    with pytest.raises(CommandError) as refused:
        call_command("backup", "--verify", str(backup), stdout=io.StringIO())
    assert str(refused.value) == (
        "rvi-db-20260101T000000Z.counts.json (the row counts taken with this backup) is missing or damaged."
    )


@pytest.mark.parametrize(
    "url",
    [
        "notaurl",
        "postgres://rvi:s3cret-pw@127.0.0.1:abc/postgres",
        "mysql://rvi:s3cret-pw@127.0.0.1/postgres",
        # No scheme: django-environ would warn with the parsed password.
        "//rvi:s3cret-pw@127.0.0.1/postgres",
    ],
)
def test_verify_refuses_a_scratch_url_that_is_not_postgres_without_repeating_it(tmp_path, capsys, url):
    backup = tmp_path / "rvi-db-20260101T000000Z.dump"
    backup.write_bytes(b"PGDMP")
    (tmp_path / "rvi-db-20260101T000000Z.counts.json").write_text('{"tables": {}}')
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with pytest.raises(CommandError) as refused:
            call_command("backup", "--verify", str(backup), "--scratch-url", url, stdout=io.StringIO())
    assert str(refused.value) == (
        "The scratch database URL (--scratch-url or BACKUP_SCRATCH_DATABASE_URL) is not a valid "
        "postgres://user:password@host:port/database URL."
    )
    shown = str(refused.value) + "".join(capsys.readouterr()) + "".join(str(w.message) for w in warned)
    assert "s3cret" not in shown


@pytest.mark.django_db(transaction=True)
def test_rotation_deletes_only_our_backups_older_than_the_limit(tmp_path):
    now = datetime.now(UTC)
    old = tmp_path / f"rvi-db-{(now - timedelta(days=15)).strftime('%Y%m%dT%H%M%SZ')}.dump"
    old_archive = tmp_path / f"rvi-evidence-{(now - timedelta(days=20)).strftime('%Y%m%dT%H%M%SZ')}.tar.gz"
    recent = tmp_path / f"rvi-db-{(now - timedelta(days=13)).strftime('%Y%m%dT%H%M%SZ')}.dump"
    unrelated = tmp_path / "notes-from-2019.txt"
    for path in (old, old_archive, recent, unrelated):
        path.write_text("x")
        # An old modification time on every file: the name's date decides, not the clock of a copy.
        os.utime(path, (0, 0))
    output = run_backup("--dir", str(tmp_path), "--keep-days", "14")
    assert "Removed 2 backup files older than 14 days." in output
    assert not old.exists() and not old_archive.exists()
    assert recent.exists() and unrelated.exists()


def unmount(root) -> None:
    shutil.rmtree(root)


def empty(root) -> None:
    shutil.rmtree(root)
    root.mkdir()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (unmount, "does not exist or is not a directory"),
        (empty, "holds no files, but 1 evidence rows have one"),
    ],
)
@pytest.mark.django_db
def test_a_missing_or_emptied_evidence_root_is_refused_and_no_backup_is_written_or_rotated(
    tmp_path, evidence_root, damage, message
):
    Evidence.objects.store(make_application(), validate_upload(upload("passport.pdf", PDF_BYTES), note=""))
    directory = tmp_path / "backups"
    directory.mkdir()
    stamp = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y%m%dT%H%M%SZ")
    old = directory / f"rvi-evidence-{stamp}.tar.gz"
    old.write_text("the last good archive")
    damage(evidence_root)
    with pytest.raises(CommandError, match=f"{message}.*Nothing was changed"):
        run_backup("--dir", str(directory))
    assert [path.name for path in directory.iterdir()] == [old.name]


@pytest.mark.parametrize("keep_days", ["0", "1000000"])
def test_keep_days_out_of_range_is_refused_before_anything_is_written(tmp_path, keep_days):
    directory = tmp_path / "backups"
    with pytest.raises(CommandError, match="--keep-days must be at least 1 and at most 36500"):
        run_backup("--dir", str(directory), "--keep-days", keep_days)
    assert not directory.exists()


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("/proc/nope", "No such file or directory"),
        ("/sys", "Permission denied"),
        ("{here}/a-file/sub", "Not a directory"),
    ],
)
@pytest.mark.django_db
def test_a_backup_directory_that_cannot_be_written_is_refused_in_one_line(tmp_path, where, reason):
    here = tmp_path / "here"
    here.mkdir()
    (here / "a-file").write_text("x")
    directory = Path(where.format(here=here))
    with pytest.raises(CommandError) as refused:
        run_backup("--dir", str(directory))
    assert str(refused.value) == f"Cannot write backups to {directory}: {reason}. Nothing was changed."
    assert [path.name for path in here.iterdir()] == ["a-file"]


def made_hours_ago(directory: Path, hours: float, *suffixes: str) -> list[Path]:
    """Backup files named as `backup` names them, `hours` ago."""
    stamp = (datetime.now(UTC) - timedelta(hours=hours)).strftime("%Y%m%dT%H%M%SZ")
    paths = [directory / name.format(stamp=stamp) for name in suffixes]
    for path in paths:
        path.write_text("x")
    return paths


FULL_BACKUP = ("rvi-db-{stamp}.dump", "rvi-db-{stamp}.counts.json", "rvi-evidence-{stamp}.tar.gz")


@pytest.mark.django_db(transaction=True)
def test_check_passes_right_after_a_backup(tmp_path):
    run_backup("--dir", str(tmp_path))
    output = run_backup("--check", "--dir", str(tmp_path))
    assert "Newest database backup: rvi-db-" in output and "0.0 hours old." in output
    assert "Newest evidence archive: rvi-evidence-" in output


def test_check_fails_when_the_newest_backup_is_older_than_26_hours_and_names_it(tmp_path):
    made_hours_ago(tmp_path, 50, *FULL_BACKUP)
    [newest, _counts, _archive] = made_hours_ago(tmp_path, 27, *FULL_BACKUP)
    with pytest.raises(
        CommandError,
        match=f"The newest database backup, {newest.name}, is 27.0 hours old \\(the limit is 26\\)",
    ):
        run_backup("--check", "--dir", str(tmp_path))


@pytest.mark.django_db(transaction=True)
def test_a_file_named_like_a_backup_with_an_impossible_date_is_left_alone(tmp_path):
    impossible = tmp_path / "rvi-db-20261399T000000Z.dump"
    impossible.write_text("x")
    made_hours_ago(tmp_path, 2, *FULL_BACKUP)
    assert "2.0 hours old." in run_backup("--check", "--dir", str(tmp_path))
    run_backup("--dir", str(tmp_path), "--keep-days", "1")  # a nightly backup, and its rotation
    assert impossible.exists()


def test_check_passes_with_a_backup_of_25_hours_and_writes_nothing(tmp_path):
    made_hours_ago(tmp_path, 25, *FULL_BACKUP)
    before = sorted(tmp_path.iterdir())
    assert "25.0 hours old." in run_backup("--check", "--dir", str(tmp_path))
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("recent", "message"),
    [
        ((), "No database backup in"),
        # An interrupted run leaves only its partial file: that is no backup.
        (("rvi-db-{stamp}.dump.partial", "rvi-evidence-{stamp}.tar.gz"), "No database backup in"),
        (("rvi-db-{stamp}.sqlite3", "rvi-db-{stamp}.counts.json"), "No evidence archive in"),
    ],
)
def test_check_fails_when_a_part_of_the_backup_is_missing(tmp_path, recent, message):
    made_hours_ago(tmp_path, 1, *recent)
    with pytest.raises(CommandError, match=message):
        run_backup("--check", "--dir", str(tmp_path))


def test_check_with_evidence_on_s3_needs_only_the_database_backup(tmp_path, settings):
    settings.EVIDENCE_STORAGE = "s3"
    made_hours_ago(tmp_path, 1, "rvi-db-{stamp}.sqlite3")
    assert "Newest database backup" in run_backup("--check", "--dir", str(tmp_path))


def test_check_of_a_directory_that_does_not_exist_fails(tmp_path):
    with pytest.raises(CommandError, match="No backup: .*nowhere cannot be read"):
        run_backup("--check", "--dir", str(tmp_path / "nowhere"))


def test_database_password_goes_to_a_private_passfile_not_the_environment_or_arguments():
    params = {
        "dbname": "rvi",
        "user": "rvi",
        "password": "s3cr:et",
        "host": "db.example",
        "sslmode": "require",
    }
    with libpq_environment(params) as env:
        assert "s3cr" not in " ".join(env.values())
        passfile = env["PGPASSFILE"]
        assert stat.S_IMODE(os.stat(passfile).st_mode) == 0o600
        assert Path(passfile).read_text() == "*:*:*:*:s3cr\\:et\n"
        assert env["PGSSLMODE"] == "require"
    assert not os.path.exists(passfile)


def test_pg_dump_takes_no_libpq_variable_from_the_operators_shell(monkeypatch):
    # A PGSERVICE or PGOPTIONS left in root's shell would point pg_dump elsewhere than the row counts.
    monkeypatch.setenv("PGSERVICE", "some-other-cluster")
    monkeypatch.setenv("PGOPTIONS", "-c search_path=elsewhere")
    with libpq_environment({"dbname": "rvi", "host": "127.0.0.1"}) as env:
        assert sorted(key for key in env if key.startswith("PG")) == ["PGAPPNAME", "PGDATABASE", "PGHOST"]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_postgres_backup_then_verify_round_trip(tmp_path):
    assert connection.vendor == "postgresql"
    make_application()
    run_backup("--dir", str(tmp_path))
    backup = database_backup(tmp_path)
    assert backup.name.endswith(".dump")
    assert backup.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    verified = io.StringIO()
    call_command("backup", "--verify", str(backup), stdout=verified)
    assert "Backup verified" in verified.getvalue()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_verify_makes_its_scratch_database_with_the_role_of_the_setting(tmp_path, settings):
    """The role comes from the env file, so its password never is on a command line."""
    make_application()
    run_backup("--dir", str(tmp_path))
    host, port = connection.settings_dict["HOST"], connection.settings_dict["PORT"] or 5432
    settings.BACKUP_SCRATCH_DATABASE_URL = f"postgres://rvi_no_such_role:s3cret-pw@{host}:{port}/postgres"
    with pytest.raises(CommandError) as refused:
        call_command("backup", "--verify", str(database_backup(tmp_path)), stdout=io.StringIO())
    assert "rvi_no_such_role" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)


def documented_restore_command() -> str:
    """The pg_restore line of deploy/README.md's "Backups and restore", continuation lines joined."""
    guide = (settings.BASE_DIR / "deploy" / "README.md").read_text()
    section = guide.split("## Backups and restore", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"sudo -u postgres pg_restore(?:[^`\n\\]|\\\n)*", section)
    assert found, "deploy/README.md no longer shows the restore command"
    return found[0].replace("\\\n", " ")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None,
    reason="needs root and runuser (Debian package util-linux) to read the dump as another user",
)
def test_the_documented_restore_works_on_a_backup_only_its_owner_can_read(tmp_path):
    """As on the server: the dump is 0600 in a 0700 directory, and pg_restore runs as another user."""
    make_application()
    backups = tmp_path / "backups"
    run_backup("--dir", str(backups))
    dump = database_backup(backups)
    scratch = f"rvi_restore_{secrets.token_hex(6)}"
    params = postgres_params(connection.settings_dict, dbname="postgres")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    for key, variable in (
        ("host", "PGHOST"),
        ("port", "PGPORT"),
        ("user", "PGUSER"),
        ("password", "PGPASSWORD"),
    ):
        if key in params:
            env[variable] = str(params[key])
    with psycopg.connect(**params, autocommit=True) as conn:
        role = conn.execute("SELECT current_user").fetchone()[0]
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
    # `nobody` stands in for the postgres user: it may not read the backups either.
    # The database and role are this server's scratch ones instead of rvi's.
    command = (
        documented_restore_command()
        .replace("sudo -u postgres", "runuser -u nobody --")
        .replace("--role=rvi_owner", f"--role={role}")
        .replace(" -d rvi ", f" -d {scratch} ")
    )
    command = re.sub(r"\S*(rvi-db-<time>|<file>)\.dump", str(dump), command)
    try:
        result = subprocess.run(["sh", "-c", command], cwd="/", env=env, capture_output=True, text=True)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        with psycopg.connect(**{**params, "dbname": scratch}) as conn:
            assert conn.execute("SELECT count(*) FROM vetting_application").fetchone()[0] == 1
    finally:
        with psycopg.connect(**params, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch)))


@pytest.mark.django_db(transaction=True)
def test_rotation_keeps_a_backup_of_13_days_23_hours_and_deletes_one_of_14_days_1_hour(tmp_path):
    now = datetime.now(UTC)
    kept = tmp_path / f"rvi-db-{(now - timedelta(days=13, hours=23)).strftime('%Y%m%dT%H%M%SZ')}.dump"
    deleted = tmp_path / f"rvi-db-{(now - timedelta(days=14, hours=1)).strftime('%Y%m%dT%H%M%SZ')}.dump"
    for path in (kept, deleted):
        path.write_text("x")
    run_backup("--dir", str(tmp_path))
    assert kept.exists()
    assert not deleted.exists()


@pytest.mark.django_db(transaction=True)
def test_the_evidence_archive_holds_every_evidence_file(tmp_path, settings):
    (settings.EVIDENCE_ROOT / "ab").mkdir(parents=True)
    (settings.EVIDENCE_ROOT / "ab" / "x.pdf").write_bytes(b"%PDF-1.7 the evidence")
    run_backup("--dir", str(tmp_path))
    [archive] = tmp_path.glob("rvi-evidence-*.tar.gz")
    with tarfile.open(archive) as opened:
        assert opened.extractfile("evidence/ab/x.pdf").read() == b"%PDF-1.7 the evidence"


def test_verify_fails_on_a_sqlite_backup_whose_rows_still_count_but_are_damaged(tmp_path):
    backup = tmp_path / "rvi-db-20260101T000000Z.sqlite3"
    database = sqlite3.connect(backup)
    database.execute("CREATE TABLE vetting_application (id integer PRIMARY KEY, email text)")
    database.execute("CREATE INDEX vetting_application_email ON vetting_application (email)")
    database.execute("INSERT INTO vetting_application (email) VALUES ('ada@example.org')")
    database.commit()
    database.close()
    (tmp_path / "rvi-db-20260101T000000Z.counts.json").write_text('{"tables": {"vetting_application": 1}}')
    # A flipped byte in the table's row (bit rot): counting still works, the index no longer matches.
    data = backup.read_bytes()
    backup.write_bytes(data.replace(b"ada@example.org", b"eve@example.org", 1))
    with pytest.raises(CommandError, match="is damaged: SQLite's integrity check failed"):
        call_command("backup", "--verify", str(backup), stdout=io.StringIO())


@pytest.fixture
def failing_pg_dump(tmp_path, monkeypatch):
    """A pg_dump that dies halfway through, as on a full disk or a dropped connection."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pg_dump"
    script.write_text(
        "#!/bin/sh\nprintf 'PGDMP half a dump'\necho 'pg_dump: error: connection lost' >&2\nexit 1\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_failed_pg_dump_leaves_no_backup_and_the_last_good_one_is_not_rotated_away(
    tmp_path, failing_pg_dump
):
    directory = tmp_path / "backups"
    directory.mkdir()
    stamp = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y%m%dT%H%M%SZ")
    last_good = directory / f"rvi-db-{stamp}.dump"
    last_good.write_text("the last good backup")
    with pytest.raises(CommandError, match="pg_dump failed: pg_dump: error: connection lost"):
        run_backup("--dir", str(directory))
    assert [path.name for path in directory.iterdir()] == [last_good.name]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_verify_drops_its_scratch_database(tmp_path, monkeypatch):
    make_application()
    run_backup("--dir", str(tmp_path))
    # The scratch name is random; note it as it is made (other runs may verify on this server too).
    made = []

    def token_hex(nbytes):
        made.append(secrets.token_hex(nbytes))
        return made[-1]

    monkeypatch.setattr(backup_command, "secrets", SimpleNamespace(token_hex=token_hex))
    call_command("backup", "--verify", str(database_backup(tmp_path)), stdout=io.StringIO())
    [scratch] = [f"rvi_verify_{name}" for name in made]
    with psycopg.connect(**postgres_params(connection.settings_dict, dbname="postgres")) as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", [scratch]).fetchone()[0]
    assert left == 0
