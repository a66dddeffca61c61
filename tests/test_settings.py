"""Settings read from the environment: safe defaults, loud failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent

PRINT_SETTINGS = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps({'DEBUG': settings.DEBUG, 'DATABASES': settings.DATABASES, "
    "'CACHES': settings.CACHES, 'LOG_LEVEL': settings.LOG_LEVEL, 'ALLOWED_HOSTS': settings.ALLOWED_HOSTS, "
    "'CSRF_TRUSTED_ORIGINS': settings.CSRF_TRUSTED_ORIGINS, 'TRUSTED_PROXY_COUNT': settings.TRUSTED_PROXY_COUNT, "
    "'MATRIX_SEND_TOKEN_TO_APPLICANT': settings.MATRIX_SEND_TOKEN_TO_APPLICANT, "
    "'LOG_FORMAT': settings.LOG_FORMAT}, default=str))"
)


PRODUCTION = {"DEBUG": "false", "SESSION_SECRET": "s" * 50, "ALLOWED_HOSTS": "rvi.example.org"}


def load_settings(**environment: str) -> subprocess.CompletedProcess:
    clean = {
        key: value
        for key, value in os.environ.items()
        if key
        not in {
            "DEBUG",
            "SESSION_SECRET",
            "ALLOWED_HOSTS",
            "DATABASE_URL",
            "CACHE_URL",
            "REDIS_URL",
            "EVIDENCE_ROOT",
            "STATIC_ROOT",
            "LOG_LEVEL",
            "CSRF_TRUSTED_ORIGINS",
            "TRUSTED_PROXY_COUNT",
            "MATRIX_SEND_TOKEN_TO_APPLICANT",
            "LOG_FORMAT",
            "RATELIMIT_KEY_PREFIX",
        }
    }
    clean["DJANGO_SETTINGS_MODULE"] = "iama_vetting.settings"
    return subprocess.run(
        [sys.executable, "-c", PRINT_SETTINGS],
        cwd=PROJECT_DIR,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_production_refuses_to_start_without_session_secret():
    result = load_settings(ALLOWED_HOSTS="rvi.example.org")
    assert result.returncode != 0
    assert "SESSION_SECRET must be set when DEBUG is off." in result.stderr


def test_debug_defaults_to_off():
    result = load_settings(SESSION_SECRET="s" * 50, ALLOWED_HOSTS="rvi.example.org")
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["DEBUG"] is False
    assert loaded["LOG_LEVEL"] == "INFO"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"DEBUG": "yes"}, "DEBUG must be 'true' or 'false', not 'yes'."),
        ({"DEBUG": "false", "SESSION_SECRET": "s" * 50}, "ALLOWED_HOSTS must be set when DEBUG is off."),
        ({"DEBUG": "true", "TRUSTED_PROXY_COUNT": "one"}, "TRUSTED_PROXY_COUNT must be a whole number."),
        ({"DEBUG": "true", "DATABASE_POOL_MIN_SIZE": "-1"}, "DATABASE_POOL_MIN_SIZE must be at least 0."),
        (
            {"DEBUG": "true", "DATABASE_URL": "mysql://rvi:hunter2@db/rvi"},
            "DATABASE_URL must be a sqlite:/// or postgres:// URL.",
        ),
        # Neither the URL nor any piece of it is repeated: it holds the password.
        (
            {"DEBUG": "true", "DATABASE_URL": "postgres://rvi:hunter2@db:54x32/rvi"},
            "DATABASE_URL cannot be read: its port must be a number up to 65535, and any @ : / "
            "in the user name or password percent-encoded (%40 %3A %2F).",
        ),
        (
            {"DEBUG": "true", "DATABASE_URL": "postgres://rvi:hunter/2@db/rvi"},
            "DATABASE_URL cannot be read: its port must be a number up to 65535, and any @ : / "
            "in the user name or password percent-encoded (%40 %3A %2F).",
        ),
        (
            {"DEBUG": "true", "DATABASE_URL": "//rvi:hunter2@db/rvi"},
            "DATABASE_URL must be a sqlite:/// or postgres:// URL.",
        ),
        # As for DATABASE_URL, nothing of the URL is repeated; the variable used is named.
        *(
            (
                {"DEBUG": "true", variable: url},
                f"{variable} cannot be read: it must be a redis:// or rediss:// URL, its port a number "
                "up to 65535, and any @ : / [ ] # ? in the password percent-encoded "
                "(%40 %3A %2F %5B %5D %23 %3F).",
            )
            for variable, url in [
                ("CACHE_URL", "redis://:pa[ss@127.0.0.1:6379/9"),
                ("REDIS_URL", "127.0.0.1:6379"),
                ("CACHE_URL", "foo://bar"),
                # Each of these the parser read without a word, as another URL.
                ("CACHE_URL", "redis://127.0.0.1:65536/0"),
                ("CACHE_URL", "redis://rvi:hunter#2@127.0.0.1:6379/0"),
                ("CACHE_URL", "redis://rvi:12#hunter@127.0.0.1:6379/0"),
                ("REDIS_URL", "redis://:hunter?2@127.0.0.1:6379/0"),
                ("REDIS_URL", "redis://rvi:12?hunter@127.0.0.1:6379/0"),
            ]
        ),
        *(
            (
                {"DEBUG": "true", "SITE_URL": site_url},
                "SITE_URL must be the site's address, a scheme and a host and nothing more: "
                "https://rvi.example.org",
            )
            for site_url in [
                "rvi.example.org",
                "https://rvi.example.org/ ",
                "https://rvi.example.org/vetting",
                "ftp://rvi.example.org",
                "https://user@rvi.example.org",
            ]
        ),
        ({"DEBUG": "true", "MATRIX_TOKEN_VALID_DAYS": "2"}, "MATRIX_TOKEN_VALID_DAYS must be at least 3."),
        # The token is the credential, and invitation mails show the homeserver's URL.
        (
            {"DEBUG": "true", "MATRIX_HOMESERVER_URL": "https://admin:hunter2@matrix.example.org"},
            "MATRIX_HOMESERVER_URL must not hold a user name or password: MATRIX_ADMIN_TOKEN is the credential.",
        ),
        *(
            (
                {"DEBUG": "true", "MATRIX_HOMESERVER_URL": url},
                "MATRIX_HOMESERVER_URL must be the homeserver's address, https:// (or http://), a host and, "
                "if needed, a port from 1 to 65535: https://matrix.example.org",
            )
            for url in [
                "matrix.example.org",
                "https://matrix.example.org:0",
                "https://matrix.example.org:65536",
            ]
        ),
        *(
            (
                {"DEBUG": "true", "SECURITY_CONTACT": contact},
                "SECURITY_CONTACT must be an e-mail address or an https:// URL (RFC 9116): security@example.org",
            )
            for contact in [
                "security team",
                "mailto:",
                "https://example.org/report a bug",
                "http://example.org/",
            ]
        ),
        *(
            (
                {"DEBUG": "true", "MATRIX_SERVER_NAME": name},
                "MATRIX_SERVER_NAME must be the homeserver's server name, the part after the colon in user "
                "IDs: matrix.example.org",
            )
            for name in ["@bad name", "https://matrix.example.org", "matrix.example.org:port"]
        ),
        (
            {"DEBUG": "true", "EVIDENCE_X_ACCEL_PREFIX": "_protected_evidence/"},
            "EVIDENCE_X_ACCEL_PREFIX must be the path of nginx's internal location, starting with /: "
            "/_protected_evidence/",
        ),
        (
            {"DEBUG": "true", "SMTP_CA_FILE": str(PROJECT_DIR / "manage.py")},
            f"SMTP_CA_FILE {str(PROJECT_DIR / 'manage.py')!r} holds no PEM certificate.",
        ),
        (
            {"DEBUG": "true", "DATABASE_POOL_MIN_SIZE": "5", "DATABASE_POOL_MAX_SIZE": "4"},
            "DATABASE_POOL_MIN_SIZE must not be more than DATABASE_POOL_MAX_SIZE.",
        ),
        (
            {"DEBUG": "true", "DEFAULT_FROM_EMAIL": "IaMA, RVI Support <support@rvi.iam-alliance.com>"},
            "DEFAULT_FROM_EMAIL must be one address with its domain, a name without commas before it "
            "if wanted: IaMA RVI Support <support@example.org>.",
        ),
        # Production: evidence inside a directory that ends up public.
        (
            {**PRODUCTION, "EVIDENCE_ROOT": str(PROJECT_DIR / "static" / "evidence")},
            "EVIDENCE_ROOT must not be inside a STATICFILES_DIRS directory: collectstatic would copy "
            "evidence into STATIC_ROOT, where it is public.",
        ),
        (
            {**PRODUCTION, "EVIDENCE_ROOT": str(PROJECT_DIR / "static")},
            "EVIDENCE_ROOT must not be inside a STATICFILES_DIRS directory: collectstatic would copy "
            "evidence into STATIC_ROOT, where it is public.",
        ),
        (
            {**PRODUCTION, "EVIDENCE_ROOT": str(PROJECT_DIR / "static" / "root" / "evidence")},
            "EVIDENCE_ROOT must not be inside WHITENOISE_ROOT: evidence would be public at the site root.",
        ),
        # An evidence root holding the code: its orphan sweep would delete the project.
        *(
            (
                {**PRODUCTION, "EVIDENCE_ROOT": str(root)},
                "EVIDENCE_ROOT must not contain the project or a static directory: purge_evidence "
                "deletes files under it that no evidence row names.",
            )
            for root in (PROJECT_DIR, PROJECT_DIR.parent)
        ),
    ],
)
def test_manage_py_says_what_is_misconfigured_in_one_line_and_exits_with_ex_config(setting, message):
    # EX_CONFIG: rvi-mail.service does not restart on it (a wrong setting stays wrong).
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DEBUG", "DATABASE_URL", "ALLOWED_HOSTS")
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "send_outbox", "--once"],
        cwd=PROJECT_DIR,
        env={**environment, "DATABASE_URL": "postgres://nobody@127.0.0.1:1/none", **setting},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == os.EX_CONFIG == 78
    assert result.stderr == f"Configuration error: {message}\n"


@pytest.mark.parametrize("value", ["yes", "1", "treu", ""])
def test_debug_accepts_only_true_or_false(value):
    result = load_settings(DEBUG=value, SESSION_SECRET="s" * 50, ALLOWED_HOSTS="rvi.example.org")
    assert result.returncode != 0
    assert "DEBUG must be 'true' or 'false'" in result.stderr


# A LAN address is not this machine either: others on the network would reach the debug pages.
@pytest.mark.parametrize("host", ["rvi.example.org", "10.0.0.5", "192.168.1.20"])
def test_debug_with_a_public_host_refuses_to_start(host):
    result = load_settings(DEBUG="true", ALLOWED_HOSTS=host)
    assert result.returncode != 0
    assert "DEBUG is on with a public host" in result.stderr


def test_development_runs_as_is_on_sqlite_with_debug_logging():
    result = load_settings(DEBUG="true")
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["DATABASES"]["default"]["ENGINE"] == "django.db.backends.sqlite3"
    # Otherwise two requests writing at once fail at once with "database is locked".
    assert loaded["DATABASES"]["default"]["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    assert loaded["CACHES"]["default"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
    assert loaded["LOG_LEVEL"] == "DEBUG"


def test_evidence_root_inside_static_root_refuses_to_start(tmp_path):
    result = load_settings(
        DEBUG="true",
        STATIC_ROOT=str(tmp_path / "static"),
        EVIDENCE_ROOT=str(tmp_path / "static" / "evidence"),
    )
    assert result.returncode != 0
    assert "EVIDENCE_ROOT must not be inside STATIC_ROOT" in result.stderr


def test_evidence_root_next_to_the_static_directories_is_accepted():
    # Only inside them is refused: a sibling of static/ with a similar name is fine.
    result = load_settings(**PRODUCTION, EVIDENCE_ROOT=str(PROJECT_DIR / "static-evidence"))
    assert result.returncode == 0, result.stderr


def test_debug_trusts_the_development_servers_origins_for_csrf():
    result = load_settings(DEBUG="true")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["CSRF_TRUSTED_ORIGINS"] == [
        "http://127.0.0.1:8000",
        "http://localhost:8000",
    ]


def test_production_trusts_no_extra_csrf_origins_by_default():
    result = load_settings(**PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["CSRF_TRUSTED_ORIGINS"] == []


def test_postgres_url_gets_a_pool_and_timeouts():
    result = load_settings(
        SESSION_SECRET="s" * 50,
        ALLOWED_HOSTS="rvi.example.org",
        DATABASE_URL="postgres://rvi:pw@db.internal:5432/rvi",
    )
    assert result.returncode == 0, result.stderr
    database = json.loads(result.stdout)["DATABASES"]["default"]
    assert database["ENGINE"] == "django.db.backends.postgresql"
    assert database["CONN_MAX_AGE"] == 0
    assert database["CONN_HEALTH_CHECKS"] is True
    assert database["OPTIONS"]["connect_timeout"] == 5
    assert database["OPTIONS"]["options"] == "-c statement_timeout=30000"
    assert database["OPTIONS"]["pool"]["min_size"] == 1
    assert database["OPTIONS"]["pool"]["max_size"] == 4
    assert database["OPTIONS"]["pool"]["timeout"] == 10
    assert database["OPTIONS"]["pool"]["max_lifetime"] == 600


def test_a_pool_whose_minimum_equals_its_maximum_is_accepted():
    result = load_settings(
        **PRODUCTION,
        DATABASE_URL="postgres://rvi:pw@db.internal:5432/rvi",
        DATABASE_POOL_MIN_SIZE="4",
        DATABASE_POOL_MAX_SIZE="4",
    )
    assert result.returncode == 0, result.stderr
    pool = json.loads(result.stdout)["DATABASES"]["default"]["OPTIONS"]["pool"]
    assert (pool["min_size"], pool["max_size"]) == (4, 4)


def test_an_unreadable_database_url_shows_no_piece_of_its_password_even_in_a_traceback():
    # gunicorn and python -c print the whole chain; the parser's own error says "as 'hunter'".
    result = load_settings(DEBUG="true", DATABASE_URL="postgres://rvi:hunter/2@db/rvi")
    assert result.returncode != 0
    assert "DATABASE_URL cannot be read" in result.stderr
    assert "hunter" not in result.stderr


def test_redis_url_selects_djangos_redis_cache():
    result = load_settings(DEBUG="true", REDIS_URL="redis://127.0.0.1:6379/2")
    assert result.returncode == 0, result.stderr
    cache = json.loads(result.stdout)["CACHES"]["default"]
    assert cache == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:6379/2",
    }


def test_cache_url_wins_over_redis_url():
    result = load_settings(
        DEBUG="true", CACHE_URL="redis://127.0.0.1:6379/3", REDIS_URL="redis://127.0.0.1:6379/4"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["CACHES"]["default"]["LOCATION"] == "redis://127.0.0.1:6379/3"


def test_with_redis_the_rate_limit_counters_use_it_under_their_own_prefix_and_fail_fast():
    result = load_settings(**PRODUCTION, REDIS_URL="redis://127.0.0.1:6379/2")
    assert result.returncode == 0, result.stderr
    ratelimit = json.loads(result.stdout)["CACHES"]["ratelimit"]
    assert ratelimit["BACKEND"] == "iama_vetting.cache.FallbackCache"
    primary = ratelimit["OPTIONS"]["PRIMARY"]
    assert primary["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    assert primary["LOCATION"] == "redis://127.0.0.1:6379/2"
    assert primary["KEY_PREFIX"] == "rvi-ratelimit"
    # A hanging Redis must hand over to the fallback at once, not hold every request.
    assert primary["OPTIONS"] == {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": None}


def test_production_trusts_no_proxy_mails_no_token_and_logs_json_by_default():
    result = load_settings(**PRODUCTION)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    # Trusting a proxy that is not there lets a client pick its rate-limit bucket in X-Forwarded-For.
    assert loaded["TRUSTED_PROXY_COUNT"] == 0
    assert loaded["MATRIX_SEND_TOKEN_TO_APPLICANT"] is False
    assert loaded["LOG_FORMAT"] == "json"


def test_bad_log_level_refuses_to_start():
    result = load_settings(DEBUG="true", LOG_LEVEL="chatty")
    assert result.returncode != 0
    assert "LOG_LEVEL 'CHATTY' is not a logging level." in result.stderr


def test_collectstatic_builds_the_hashed_files_whitenoise_serves(tmp_path):
    static_root = tmp_path / "static"
    result = subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"],
        cwd=PROJECT_DIR,
        env={**os.environ, "STATIC_ROOT": str(static_root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((static_root / "staticfiles.json").read_text())
    hashed = manifest["paths"]["css/site.css"]
    assert hashed != "css/site.css"
    assert (static_root / hashed).is_file()
    assert (static_root / "admin" / "css" / "base.css").is_file()


def test_lists_may_have_spaces_after_the_commas_and_a_trailing_comma():
    result = load_settings(
        SESSION_SECRET="s" * 50,
        ALLOWED_HOSTS="rvi.example.org, www.rvi.example.org,",
        CSRF_TRUSTED_ORIGINS=" https://rvi.example.org , https://www.rvi.example.org",
    )
    assert result.returncode == 0, result.stderr
    settings = json.loads(result.stdout)
    assert settings["ALLOWED_HOSTS"] == ["rvi.example.org", "www.rvi.example.org"]
    assert settings["CSRF_TRUSTED_ORIGINS"] == ["https://rvi.example.org", "https://www.rvi.example.org"]


def test_secrets_starting_with_a_dollar_sign_are_read_as_they_are():
    """django-environ reads "$name" as a reference to another variable; a password may start with "$"."""
    secrets_as_set = {
        "SESSION_SECRET": "$" + "s" * 50,
        "SMTP_RELAY_AUTHPW": "$xyzpw",
        "MATRIX_ADMIN_TOKEN": "$syt_token",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, django; from django.conf import settings; django.setup(); "
            "print(json.dumps([settings.SECRET_KEY, settings.SMTP_RELAY_AUTHPW, settings.MATRIX_ADMIN_TOKEN]))",
        ],
        cwd=PROJECT_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "iama_vetting.settings",
            "DEBUG": "false",
            "ALLOWED_HOSTS": "rvi.example.org",
            **secrets_as_set,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == list(secrets_as_set.values())


LOG_FROM_EACH_LIBRARY = (
    "import logging, django; django.setup(); "
    "[logging.getLogger(name).debug('%s debug: X-Amz-Security-Token: canary-session-token', name) "
    "for name in ('botocore.auth', 'boto3.resources', 's3transfer.tasks', 'urllib3.connectionpool', "
    "'django.db.backends', 'vetting')]; "
    "logging.getLogger('botocore.credentials').info('botocore info line')"
)


def test_log_level_debug_never_lets_aws_and_http_libraries_write_debug_lines():
    """At DEBUG botocore writes each request's signing, the AWS session token included."""
    result = subprocess.run(
        [sys.executable, "-c", LOG_FROM_EACH_LIBRARY],
        cwd=PROJECT_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "iama_vetting.settings", "LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    written = [line for line in result.stderr.splitlines() if "canary-session-token" in line]
    # Only our own DEBUG line; the libraries' INFO lines still come through.
    assert len(written) == 1 and "vetting debug" in written[0], written
    assert "botocore info line" in result.stderr
