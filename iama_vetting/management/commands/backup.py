from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from evidence.management.checks import refuse_unavailable_evidence
from evidence.storage import evidence_storage

# Only files named like this are ever rotated away; anything else in the directory is left alone.
BACKUP_NAME_RE = re.compile(r"^rvi-(db|evidence)-(?P<stamp>\d{8}T\d{6}Z)\.")
# A finished backup (not its .partial file or its row counts), as --check counts it.
FINISHED_BACKUP_RE = re.compile(
    r"^rvi-(?P<kind>db|evidence)-(?P<stamp>\d{8}T\d{6}Z)\.(dump|sqlite3|tar\.gz)\Z"
)
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
# A hundred years: any longer is a typo, and far longer cannot even be subtracted from today.
MAX_KEEP_DAYS = 36500
# libpq connection options that pg_dump/pg_restore also read from the environment.
LIBPQ_ENVIRONMENT = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "connect_timeout": "PGCONNECT_TIMEOUT",
}


def private_file(path: Path):
    """A new file only its owner can read, whatever the umask."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def made_at(stamp: str) -> datetime | None:
    """When a backup was made, from the stamp in its name; None for an impossible date,
    which no backup of ours has (the file is left alone like any other)."""
    try:
        return datetime.strptime(stamp, STAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def counts_path(backup: Path) -> Path:
    return backup.with_name(backup.name.split(".", 1)[0] + ".counts.json")


def postgres_params(settings_dict: dict, dbname: str | None = None) -> dict:
    """psycopg connection keywords for the configured database."""
    options = {key: value for key, value in settings_dict.get("OPTIONS", {}).items() if key != "pool"}
    params = {
        "dbname": dbname or settings_dict["NAME"],
        "user": settings_dict.get("USER") or None,
        "password": settings_dict.get("PASSWORD") or None,
        "host": settings_dict.get("HOST") or None,
        "port": settings_dict.get("PORT") or None,
        **options,
    }
    return {key: value for key, value in params.items() if value not in (None, "")}


@contextmanager
def libpq_environment(params: dict) -> Iterator[dict[str, str]]:
    """Environment for pg_dump/pg_restore: the password goes through a private
    PGPASSFILE that lives only while they run, never onto a command line."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    env.update({"PGDATABASE": str(params["dbname"]), "PGAPPNAME": "iama-rvi-backup"})
    for key, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        if key in params:
            env[variable] = str(params[key])
    for key, variable in LIBPQ_ENVIRONMENT.items():
        if key in params:
            env[variable] = str(params[key])
    with tempfile.TemporaryDirectory(prefix="rvi-pgpass-") as directory:
        if "password" in params:
            escaped = str(params["password"]).replace("\\", "\\\\").replace(":", "\\:")
            passfile = Path(directory) / "pgpass"
            with private_file(passfile) as handle:
                handle.write(f"*:*:*:*:{escaped}\n".encode())
            env["PGPASSFILE"] = str(passfile)
        yield env


def postgres_counts(cursor) -> dict[str, int]:
    from psycopg import sql

    cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    tables = [row[0] for row in cursor.fetchall()]
    counts = {}
    for table in tables:
        cursor.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table)))
        counts[table] = cursor.fetchone()[0]
    return counts


def sqlite_counts(database: sqlite3.Connection) -> dict[str, int]:
    tables = [
        row[0]
        for row in database.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    # Table names come from the database's own catalogue, quoted as identifiers.
    return {table: database.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] for table in tables}  # noqa: S608


def run_tool(command: list[str], env: dict[str, str], **kwargs) -> None:
    try:
        result = subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True, check=False, **kwargs)  # noqa: S603
    except FileNotFoundError as error:
        raise CommandError(f"{command[0]} is not installed: apt-get install postgresql-client") from error
    if result.returncode != 0:
        raise CommandError(f"{command[0]} failed: {result.stderr.strip()}")


class Command(BaseCommand):
    help = (
        "Back up the database (pg_dump in custom format, or SQLite's online backup) and the local "
        "evidence files into --dir as private files, then delete backups older than --keep-days; "
        "with --verify FILE, restore that backup into a scratch database and compare its row counts; "
        "with --check, fail when the newest backup is missing or older than --max-age-hours."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dir", type=Path, help="Where backups go (default: BACKUP_DIR).")
        parser.add_argument("--keep-days", type=int, default=14, help="Delete backups older than this.")
        instead = parser.add_mutually_exclusive_group()
        instead.add_argument(
            "--verify", type=Path, metavar="FILE", help="Check this database backup instead."
        )
        instead.add_argument(
            "--check",
            action="store_true",
            help="Write nothing; exit non-zero when the newest database backup (and evidence archive, "
            "for local evidence) in --dir is missing or older than --max-age-hours. For monitoring.",
        )
        parser.add_argument(
            "--max-age-hours", type=int, default=26, help="With --check: the age that fails (default 26)."
        )
        parser.add_argument(
            "--scratch-url",
            help="PostgreSQL only: a role allowed to CREATE DATABASE for --verify (default: "
            "BACKUP_SCRATCH_DATABASE_URL, else the configured database's own role). Prefer the "
            "setting in the env file: a command line shows a password to ps and the journal.",
        )

    def handle(self, *args, **options) -> None:
        if options["verify"]:
            self.verify(options["verify"], options["scratch_url"] or settings.BACKUP_SCRATCH_DATABASE_URL)
            return
        if options["check"]:
            self.check_age((options["dir"] or settings.BACKUP_DIR).resolve(), options["max_age_hours"])
            return
        if not 1 <= options["keep_days"] <= MAX_KEEP_DAYS:
            raise CommandError(
                f"--keep-days must be at least 1 and at most {MAX_KEEP_DAYS} (a hundred years). "
                "Nothing was changed."
            )
        if settings.EVIDENCE_STORAGE == "local":
            # Before anything is written or rotated: an archive of an unmounted evidence
            # volume would be empty, and the good archives would age out behind it.
            refuse_unavailable_evidence(evidence_storage())
        directory = (options["dir"] or settings.BACKUP_DIR).resolve()
        self.prepare_directory(directory)
        now = datetime.now(UTC)
        stamp = now.strftime(STAMP_FORMAT)
        database = self.backup_database(directory, stamp)
        self.stdout.write(f"Database backup: {database} ({database.stat().st_size} bytes)")
        evidence = self.backup_evidence(directory, stamp)
        if evidence:
            self.stdout.write(f"Evidence archive: {evidence} ({evidence.stat().st_size} bytes)")
        removed = self.rotate(directory, now - timedelta(days=options["keep_days"]))
        self.stdout.write(f"Removed {len(removed)} backup files older than {options['keep_days']} days.")

    # Writing

    def prepare_directory(self, directory: Path) -> None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            # mkdir accepts an existing directory that refuses new files (/sys, a read-only mount):
            # find that out before the dump, not after.
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as error:
            raise CommandError(
                f"Cannot write backups to {directory}: {error.strerror}. Nothing was changed."
            ) from error

    def backup_database(self, directory: Path, stamp: str) -> Path:
        connection = connections["default"]
        if connection.vendor == "postgresql":
            return self.backup_postgres(directory, stamp, connection.settings_dict)
        if connection.vendor == "sqlite":
            return self.backup_sqlite(directory, stamp, connection)
        raise CommandError(f"Cannot back up a {connection.vendor} database.")

    def backup_postgres(self, directory: Path, stamp: str, settings_dict: dict) -> Path:
        import psycopg

        target = directory / f"rvi-db-{stamp}.dump"
        params = postgres_params(settings_dict)
        partial = target.with_name(target.name + ".partial")
        try:
            # The row counts and pg_dump read the same exported snapshot, so
            # --verify can compare them exactly.
            with psycopg.connect(**params, autocommit=True) as conn, conn.cursor() as cursor:
                cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cursor.execute("SELECT pg_export_snapshot()")
                snapshot = cursor.fetchone()[0]
                counts = postgres_counts(cursor)
                with libpq_environment(params) as env, private_file(partial) as output:
                    run_tool(["pg_dump", "--format=custom", f"--snapshot={snapshot}"], env, stdout=output)
                cursor.execute("COMMIT")
        except psycopg.Error as error:
            partial.unlink(missing_ok=True)
            raise CommandError(f"Could not read the database: {error}") from error
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.write_counts(target, counts)
        partial.rename(target)
        return target

    def backup_sqlite(self, directory: Path, stamp: str, connection) -> Path:
        target = directory / f"rvi-db-{stamp}.sqlite3"
        partial = target.with_name(target.name + ".partial")
        private_file(partial).close()
        try:
            connection.ensure_connection()
            destination = sqlite3.connect(partial)
            try:
                # SQLite's online backup API: a consistent copy while the app keeps writing.
                connection.connection.backup(destination)
                counts = sqlite_counts(destination)
            finally:
                destination.close()
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        self.write_counts(target, counts)
        partial.rename(target)
        return target

    def write_counts(self, backup: Path, counts: dict[str, int]) -> None:
        with private_file(counts_path(backup)) as handle:
            handle.write(json.dumps({"tables": counts}, indent=1, sort_keys=True).encode())

    def backup_evidence(self, directory: Path, stamp: str) -> Path | None:
        if settings.EVIDENCE_STORAGE != "local":
            self.stdout.write(
                "Evidence is on S3 and not archived here: keep bucket versioning on so deleted "
                "or overwritten objects can be restored."
            )
            return None
        root = Path(settings.EVIDENCE_ROOT)
        target = directory / f"rvi-evidence-{stamp}.tar.gz"
        partial = target.with_name(target.name + ".partial")
        try:
            with private_file(partial) as output, tarfile.open(fileobj=output, mode="w:gz") as archive:
                archive.add(root, arcname="evidence")
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.rename(target)
        return target

    def rotate(self, directory: Path, cutoff: datetime) -> list[Path]:
        """Delete our backups whose name says they were made before `cutoff`."""
        removed = []
        for path in sorted(directory.iterdir()):
            match = BACKUP_NAME_RE.match(path.name)
            if not match or not path.is_file():
                continue
            made = made_at(match["stamp"])
            if made is not None and made < cutoff:
                path.unlink()
                removed.append(path)
        return removed

    # Checking

    def check_age(self, directory: Path, max_age_hours: int) -> None:
        if max_age_hours < 1:
            raise CommandError("--max-age-hours must be at least 1.")
        kinds = {"db": "database backup"}
        if settings.EVIDENCE_STORAGE == "local":
            kinds["evidence"] = "evidence archive"
        try:
            names = [path.name for path in directory.iterdir() if path.is_file()]
        except OSError as error:
            raise CommandError(f"No backup: {directory} cannot be read ({error.strerror}).") from error
        newest: dict[str, tuple[datetime, str]] = {}
        for name in names:
            match = FINISHED_BACKUP_RE.match(name)
            if match and match["kind"] in kinds and (made := made_at(match["stamp"])) is not None:
                newest[match["kind"]] = max(newest.get(match["kind"], (made, name)), (made, name))
        now = datetime.now(UTC)
        problems = []
        for kind, label in kinds.items():
            if kind not in newest:
                problems.append(f"No {label} in {directory}.")
                continue
            made, name = newest[kind]
            hours = (now - made) / timedelta(hours=1)
            if hours > max_age_hours:
                problems.append(
                    f"The newest {label}, {name}, is {hours:.1f} hours old (the limit is {max_age_hours})."
                )
            else:
                self.stdout.write(f"Newest {label}: {name}, {hours:.1f} hours old.")
        if problems:
            raise CommandError(" ".join(problems))

    # Verifying

    def verify(self, backup: Path, scratch_url: str | None) -> None:
        if not backup.is_file():
            raise CommandError(f"{backup} does not exist.")
        try:
            expected = json.loads(counts_path(backup).read_text())["tables"]
        except (OSError, ValueError, KeyError, TypeError):
            expected = None
        if not isinstance(expected, dict):
            raise CommandError(
                f"{counts_path(backup).name} (the row counts taken with this backup) is missing or damaged."
            )
        if backup.name.endswith(".dump"):
            restored = self.restore_postgres(backup, scratch_url)
        elif backup.name.endswith(".sqlite3"):
            restored = self.restore_sqlite(backup)
        else:
            raise CommandError(f"{backup.name} is not a database backup (.dump or .sqlite3).")
        differences = [
            f"  {table}: {expected.get(table, 'absent')} in the backup's record, {restored.get(table, 'absent')} restored"
            for table in sorted(set(expected) | set(restored))
            if expected.get(table) != restored.get(table)
        ]
        if differences:
            raise CommandError("The restored backup differs:\n" + "\n".join(differences))
        rows = sum(restored.values())
        self.stdout.write(
            f"Backup verified: {len(restored)} tables, {rows} rows, the same as when it was made."
        )

    def restore_postgres(self, backup: Path, scratch_url: str | None) -> dict[str, int]:
        import environ
        import psycopg
        from psycopg import sql

        if scratch_url:
            # Neither the message nor a warning repeats the URL: it may hold a password
            # (django-environ warns with the parsed password when it finds no engine).
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    settings_dict = environ.Env.db_url_config(scratch_url)
            except ValueError:
                settings_dict = {}
            if settings_dict.get("ENGINE") != "django.db.backends.postgresql":
                raise CommandError(
                    "The scratch database URL (--scratch-url or BACKUP_SCRATCH_DATABASE_URL) is not a "
                    "valid postgres://user:password@host:port/database URL."
                )
        else:
            settings_dict = connections["default"].settings_dict
        scratch = f"rvi_verify_{secrets.token_hex(6)}"
        admin = postgres_params(settings_dict, dbname="postgres")
        try:
            with psycopg.connect(**admin, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(scratch)))
        except psycopg.Error as error:
            raise CommandError(
                f"Could not create a scratch database ({error}). --verify needs a role that may "
                "CREATE DATABASE: create one (createuser --createdb --pwprompt rvi_verify) and set "
                'BACKUP_SCRATCH_DATABASE_URL to it in the env file (deploy/README.md, "Backups"); '
                "not --scratch-url, which ps and the journal show with its password."
            ) from error
        try:
            params = postgres_params(settings_dict, dbname=scratch)
            with libpq_environment(params) as env:
                run_tool(
                    [
                        "pg_restore",
                        "--no-owner",
                        "--no-privileges",
                        "--exit-on-error",
                        f"--dbname={scratch}",
                        str(backup),
                    ],
                    env,
                )
            with psycopg.connect(**params) as conn, conn.cursor() as cursor:
                return postgres_counts(cursor)
        finally:
            with psycopg.connect(**admin, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(scratch))
                )

    def restore_sqlite(self, backup: Path) -> dict[str, int]:
        with tempfile.TemporaryDirectory(prefix="rvi-verify-") as directory:
            scratch = Path(directory) / "scratch.sqlite3"
            shutil.copyfile(backup, scratch)
            database = sqlite3.connect(scratch)
            try:
                if database.execute("PRAGMA integrity_check").fetchone()[0] != "ok":
                    raise CommandError(f"{backup.name} is damaged: SQLite's integrity check failed.")
                return sqlite_counts(database)
            except sqlite3.DatabaseError as error:
                raise CommandError(f"{backup.name} is not a readable SQLite database: {error}") from error
            finally:
                database.close()
