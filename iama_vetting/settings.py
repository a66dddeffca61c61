"""Settings for IaMA RVI, read from the environment with django-environ.

Every variable has a type and either a safe default or fails loudly. The
variable names are an interface (README, deploy/.env.example); keep them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import warnings
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

import environ
from csp.constants import NONCE, NONE, SELF, UNSAFE_EVAL, UNSAFE_INLINE
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.mail.message import sanitize_address
from django.core.validators import validate_email

from iama_vetting import maintenance as _maintenance

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def env_bool(name: str, default: bool) -> bool:
    """Only 'true' or 'false' (any case): a typo must not silently mean False."""
    raw = env.str(name, default="true" if default else "false").strip().lower()
    if raw not in ("true", "false"):
        raise ImproperlyConfigured(f"{name} must be 'true' or 'false', not {raw!r}.")
    return raw == "true"


def env_secret(name: str) -> str:
    """A secret exactly as set, or "": django-environ would take one that starts
    with "$" for the name of another variable (a relay's password may)."""
    return os.environ.get(name, "")


def env_list(name: str, default: list[str]) -> list[str]:
    """Comma-separated values; spaces around the commas and empty entries (a trailing comma) are ignored."""
    return [entry.strip() for entry in env.list(name, default=default) if entry.strip()]


def env_int(name: str, default: int, minimum: int = 1) -> int:
    try:
        value = env.int(name, default=default)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be a whole number.") from error
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}.")
    return value


def env_service_url(name: str, service: str, credential: str, example: str) -> str:
    """The http(s) address of a service the app calls, or "" when unset.

    Neither message quotes the URL: it may hold a password. None belongs in it:
    `credential` is what signs in, and invitation mails show the homeserver's URL.
    """
    url = env.str(name, default="")
    if not url:
        return url
    try:
        parts = urlsplit(url)
        # Reading the port raises for one that is no number or above 65535 (urlsplit, for a broken [IPv6]).
        port = parts.port
    except ValueError:
        parts = port = None
    if parts is not None and parts.username is not None:
        raise ImproperlyConfigured(
            f"{name} must not hold a user name or password: {credential} is the credential."
        )
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or port == 0
        or any(character.isspace() for character in url)
    ):
        raise ImproperlyConfigured(
            f"{name} must be {service}'s address, https:// (or http://), a host and, "
            f"if needed, a port from 1 to 65535: {example}"
        )
    return url


def is_local_host(host: str) -> bool:
    host = host.strip("[]").lstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


DEBUG = env_bool("DEBUG", default=False)

# SESSION_SECRET is the name the existing deployment guide uses for the key.
# No random fallback outside DEBUG: every worker must sign with the same key.
SECRET_KEY = env_secret("SESSION_SECRET")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SESSION_SECRET must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-when-DEBUG-is-true"  # noqa: S105

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")
if DEBUG and not all(is_local_host(host) for host in ALLOWED_HOSTS):
    raise ImproperlyConfigured(
        "DEBUG is on with a public host in ALLOWED_HOSTS: refusing to start. Set DEBUG=false in production."
    )
# In DEBUG, the addresses runserver answers on (DESIGN: "localhost when DEBUG").
CSRF_TRUSTED_ORIGINS = env_list(
    "CSRF_TRUSTED_ORIGINS", default=["http://127.0.0.1:8000", "http://localhost:8000"] if DEBUG else []
)
# Our page for a refused form, not Django's (templates/403_csrf.html).
CSRF_FAILURE_VIEW = "iama_vetting.views.csrf_failure"
# Absolute links in e-mails (status page, admin) start with this.
SITE_URL = env.str(
    "SITE_URL", default="http://127.0.0.1:8000" if DEBUG else f"https://{ALLOWED_HOSTS[0].lstrip('.')}"
).rstrip("/")
_site = urlsplit(SITE_URL)
if (
    _site.scheme not in ("http", "https")
    or not _site.hostname
    or _site.path
    or _site.query
    or _site.fragment
    or _site.username is not None
    or any(character.isspace() for character in SITE_URL)
):
    # Every link in every mail starts with it: a wrong one breaks them all, silently.
    raise ImproperlyConfigured(
        "SITE_URL must be the site's address, a scheme and a host and nothing more: https://rvi.example.org"
    )

INSTALLED_APPS = [
    # The admin with staff two-factor sign-in (iama_vetting/admin_site.py).
    "iama_vetting.apps.StaffAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "vetting",
    "evidence",
    "notifications",
    # Security hardening (issue 5): CSP reports, staff 2FA.
    "iama_vetting.apps.IamaVettingConfig",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
]

MIDDLEWARE = [
    # First, so every log line of the request, and the access line, carry its id.
    "iama_vetting.middleware.RequestContextMiddleware",
    # The header middleware come before anything that can answer by itself (static
    # files, the 429, maintenance), so every response carries the headers.
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "iama_vetting.middleware.SecurityHeadersMiddleware",
    "iama_vetting.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # After WhiteNoise (static files are not counted), before maintenance (its answers are).
    "iama_vetting.middleware.DefaultRateLimitMiddleware",
    # Before sessions and the database: maintenance must answer with the database down.
    "iama_vetting.maintenance.MaintenanceModeMiddleware",
    # Outside sessions: its page for a wrong method must not start one.
    "iama_vetting.middleware.MethodNotAllowedPageMiddleware",
    # Django's and django-otp's, skipped on the public pages (no sessions there).
    "iama_vetting.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "iama_vetting.middleware.AuthenticationMiddleware",
    "iama_vetting.middleware.OTPMiddleware",
    "iama_vetting.middleware.MessageMiddleware",
    "iama_vetting.outage.DatabaseOutageMiddleware",
]

ROOT_URLCONF = "iama_vetting.urls"
WSGI_APPLICATION = "iama_vetting.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "iama_vetting.maintenance.maintenance_notice",
            ],
        },
    },
]

# Database: SQLite by default; PostgreSQL through psycopg 3 with Django's
# connection pool. The pool owns connection lifetime, so CONN_MAX_AGE stays 0
# (Django refuses a pool with persistent connections). The URL is never repeated, nor any
# part of it: it may hold a password. So the parser's error (it may quote a piece of the URL)
# is dropped, and its warning about a URL without a scheme (it prints the password) silenced:
# the check after it says so.
try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
except ValueError:
    raise ImproperlyConfigured(
        "DATABASE_URL cannot be read: its port must be a number up to 65535, and any @ : / "
        "in the user name or password percent-encoded (%40 %3A %2F)."
    ) from None
if DATABASES["default"].get("ENGINE") not in ("django.db.backends.sqlite3", "django.db.backends.postgresql"):
    # Said now, not at the first query.
    raise ImproperlyConfigured("DATABASE_URL must be a sqlite:/// or postgres:// URL.")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            # Take the write lock when a transaction begins: a read that turns into a
            # write would otherwise fail at once with "database is locked" when two
            # requests write together (two staff downloading evidence, say).
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            # Readers never wait for the writer.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # With a pool, Django checks each connection as it leaves the pool (one
    # round trip), so connections PostgreSQL dropped are replaced, not used.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    _pool_min_size = env_int("DATABASE_POOL_MIN_SIZE", 1, minimum=0)
    _pool_max_size = env_int("DATABASE_POOL_MAX_SIZE", 4)
    # psycopg_pool would refuse it only at the first query, and at every query after it.
    if _pool_min_size > _pool_max_size:
        raise ImproperlyConfigured("DATABASE_POOL_MIN_SIZE must not be more than DATABASE_POOL_MAX_SIZE.")
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT", 5),
            # Server-side cap on any one statement, in milliseconds.
            "options": f"-c statement_timeout={env_int('DATABASE_STATEMENT_TIMEOUT_MS', 30_000)}",
            "pool": {
                "min_size": _pool_min_size,
                "max_size": _pool_max_size,
                # Seconds a request waits for a free connection before failing.
                "timeout": env_int("DATABASE_POOL_TIMEOUT", 10),
                # Recycle connections so none outlives a failover or a config change.
                "max_lifetime": env_int("DATABASE_CONN_MAX_LIFETIME", 600),
                "max_idle": 300,
            },
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Cache: local memory by default; Redis (Django's own backend) when
# CACHE_URL or REDIS_URL names one. Rate limits need it shared in production.
_cache_variable = "CACHE_URL" if env.str("CACHE_URL", default="") else "REDIS_URL"
_cache_url = env.str(_cache_variable, default="")


def _check_redis_url(url: str) -> None:
    """Raise ValueError for a Redis URL the parser would read wrongly without a word.

    It takes a port above 65535 as a port, and a password with a bare # or ? as
    ending there: the rest of the URL is lost, or becomes a Unix socket path.
    (Other caches are Django's own, warned about by check --deploy: W003.)
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return
    parts.port  # noqa: B018 - raises ValueError for one that is no number or above 65535
    if not parts.hostname or parts.fragment or "@" in parts.path + parts.query:
        raise ValueError


try:
    if _cache_url:
        _check_redis_url(_cache_url)
    CACHES = {
        "default": env.cache_url_config(_cache_url)
        if _cache_url
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    }
except (ValueError, ImproperlyConfigured):
    # As for DATABASE_URL: the parser's message may quote a piece of the URL, password included.
    raise ImproperlyConfigured(
        f"{_cache_variable} cannot be read: it must be a redis:// or rediss:// URL, its port a number "
        "up to 65535, and any @ : / [ ] # ? in the password percent-encoded (%40 %3A %2F %5B %5D %23 %3F)."
    ) from None

PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 12},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))).resolve()
STATICFILES_DIRS = [BASE_DIR / "static"]
# Files browsers ask for at the site root (favicon.ico), served by WhiteNoise.
WHITENOISE_ROOT = BASE_DIR / "static" / "root"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    "evidence": {"BACKEND": "evidence.storage.EvidenceStorage"},
}

# Evidence files: local disk below EVIDENCE_ROOT, 0750 directories, 0640 files.
EVIDENCE_ROOT = Path(env.str("EVIDENCE_ROOT", default=str(BASE_DIR / "uploads" / "evidence"))).resolve()


def _inside(path: Path, directory: Path) -> bool:
    directory = directory.resolve()
    return path == directory or directory in path.parents


# Every directory that ends up public, and how.
for _public_dir, _how in (
    (STATIC_ROOT, "STATIC_ROOT: evidence would be public"),
    (WHITENOISE_ROOT, "WHITENOISE_ROOT: evidence would be public at the site root"),
    *(
        (
            static_dir,
            "a STATICFILES_DIRS directory: collectstatic would copy evidence into STATIC_ROOT, where it is public",
        )
        for static_dir in STATICFILES_DIRS
    ),
):
    if _inside(EVIDENCE_ROOT, _public_dir):
        raise ImproperlyConfigured(f"EVIDENCE_ROOT must not be inside {_how}.")
# purge_evidence deletes what lies under the root and no evidence row names.
for _kept_dir in (BASE_DIR, STATIC_ROOT, WHITENOISE_ROOT, *STATICFILES_DIRS):
    if _inside(_kept_dir.resolve(), EVIDENCE_ROOT):
        raise ImproperlyConfigured(
            "EVIDENCE_ROOT must not contain the project or a static directory: purge_evidence "
            "deletes files under it that no evidence row names."
        )
EVIDENCE_STORAGE = env.str("EVIDENCE_STORAGE", default="local")
if EVIDENCE_STORAGE == "s3":
    # django-storages on any S3-compatible service. Objects are private and
    # never overwritten; the keys are the same <2 hex>/<uuid>.<ext> names.
    if not env.str("AWS_STORAGE_BUCKET_NAME", default=""):
        raise ImproperlyConfigured("EVIDENCE_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME.")
    STORAGES["evidence"] = {
        "BACKEND": "evidence.storage.S3EvidenceStorage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "location": env.str("AWS_LOCATION", default="evidence"),
            "region_name": env.str("AWS_S3_REGION_NAME", default="") or None,
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default="") or None,
            # Empty: boto3 finds credentials itself (instance role, ~/.aws).
            "access_key": env.str("AWS_ACCESS_KEY_ID", default="") or None,
            "secret_key": env_secret("AWS_SECRET_ACCESS_KEY") or None,
        },
    }
elif EVIDENCE_STORAGE != "local":
    raise ImproperlyConfigured(f"EVIDENCE_STORAGE must be 'local' or 's3', not {EVIDENCE_STORAGE!r}.")
# Behind nginx: downloads answer with X-Accel-Redirect to this internal location.
EVIDENCE_X_ACCEL_PREFIX = env.str("EVIDENCE_X_ACCEL_PREFIX", default="")
if EVIDENCE_X_ACCEL_PREFIX and (
    not EVIDENCE_X_ACCEL_PREFIX.startswith("/") or any(c.isspace() for c in EVIDENCE_X_ACCEL_PREFIX)
):
    raise ImproperlyConfigured(
        "EVIDENCE_X_ACCEL_PREFIX must be the path of nginx's internal location, starting with /: "
        "/_protected_evidence/"
    )
EVIDENCE_RETENTION_DAYS = env_int("EVIDENCE_RETENTION_DAYS", 180)
EVIDENCE_MAX_FILE_SIZE = 16 * 1024 * 1024
EVIDENCE_MAX_FILES = 5

# Applicant experience and privacy (issue 8) ---------------------------------
# Images above this many pixels are refused before decoding (decompression bombs).
EVIDENCE_MAX_IMAGE_PIXELS = 50_000_000
# Community policy: may an applicant erase their application while staff are deciding on it?
ERASURE_BLOCKED_DURING_REVIEW = env_bool("ERASURE_BLOCKED_DURING_REVIEW", default=False)
# Translations: English is the source language; `manage.py makemessages -l xx` writes here.
LOCALE_PATHS = [BASE_DIR / "locale"]
# End of issue 8 block ---------------------------------------------------------

# Uploads always go to a temporary file, never into memory whole.
FILE_UPLOAD_HANDLERS = ["django.core.files.uploadhandler.TemporaryFileUploadHandler"]
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750
# A few more than the form allows, so a sixth file gets the form's own message;
# beyond this Django refuses the request outright.
DATA_UPLOAD_MAX_NUMBER_FILES = 10

TRUSTED_PROXY_COUNT = env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more.")

# E-mail. Mail is written to the outbox (notifications.OutboundEmail) in the
# same transaction as its cause and delivered by `manage.py send_outbox`
# through the relay (notifications/relay.py). Without a relay password the
# worker refuses to send and mail stays queued; in DEBUG it prints mail to
# the console instead, so `make run` shows every mail without a relay.
SMTP_RELAY_HOST = env.str("SMTP_RELAY_HOST", default="mail.smtp2go.com")
try:
    SMTP_RELAY_PORTS = [
        int(port) for port in env_list("SMTP_RELAY_PORTS", default=["2525", "8025", "587", "80"])
    ]
except ValueError as error:
    raise ImproperlyConfigured("SMTP_RELAY_PORTS must be port numbers separated by commas.") from error
if not SMTP_RELAY_PORTS or not all(0 < port < 65536 for port in SMTP_RELAY_PORTS):
    raise ImproperlyConfigured("SMTP_RELAY_PORTS must list at least one port between 1 and 65535.")
SMTP_RELAY_USER = env.str("SMTP_RELAY_USER", default="support@rvi.iam-alliance.com")
SMTP_RELAY_AUTHPW = env_secret("SMTP_RELAY_AUTHPW")
# Seconds per connect or read on each port; Django's default (none) would
# let a silent relay hang the worker for ever.
try:
    SMTP_TIMEOUT = env.float("SMTP_TIMEOUT", default=10.0)
except ValueError as error:
    raise ImproperlyConfigured("SMTP_TIMEOUT must be a number of seconds.") from error
if not SMTP_TIMEOUT > 0:
    raise ImproperlyConfigured("SMTP_TIMEOUT must be more than 0 seconds.")
# A PEM file of certificates to trust instead of the system's (a private
# relay, the tests' own server). Empty: the system's trust store.
SMTP_CA_FILE = env.str("SMTP_CA_FILE", default="")
if SMTP_CA_FILE and not Path(SMTP_CA_FILE).is_file():
    raise ImproperlyConfigured(f"SMTP_CA_FILE {SMTP_CA_FILE!r} is not a readable file.")
if SMTP_CA_FILE:
    try:
        ssl.create_default_context(cafile=SMTP_CA_FILE)
    except ssl.SSLError:
        # Said now: otherwise every mail fails at its first TLS handshake.
        raise ImproperlyConfigured(f"SMTP_CA_FILE {SMTP_CA_FILE!r} holds no PEM certificate.") from None
    except OSError:
        raise ImproperlyConfigured(f"SMTP_CA_FILE {SMTP_CA_FILE!r} is not a readable file.") from None
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="IaMA RVI Support <support@rvi.iam-alliance.com>")
# Parsed as Django's mail parses it when sending: one it refuses would fail every mail.
try:
    sanitize_address(DEFAULT_FROM_EMAIL, "utf-8")
    validate_email(parseaddr(DEFAULT_FROM_EMAIL)[1])
except (ValueError, ValidationError) as error:
    raise ImproperlyConfigured(
        "DEFAULT_FROM_EMAIL must be one address with its domain, a name without commas before it "
        "if wanted: IaMA RVI Support <support@example.org>."
    ) from error
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Bare addresses, comma-separated. A bad entry must stop start-up: queue_email
# would refuse it inside confirm_email, and every confirmation link would fail.
STAFF_NOTIFY_EMAILS = env_list("STAFF_NOTIFY_EMAILS", default=[])
for _entry in STAFF_NOTIFY_EMAILS:
    try:
        validate_email(_entry)
        sanitize_address(_entry, "utf-8")  # a domain IDNA cannot encode: every mail to it fails
    except (ValueError, ValidationError) as error:
        raise ImproperlyConfigured(
            f"STAFF_NOTIFY_EMAILS: {_entry!r} is not an e-mail address; list bare addresses "
            "(name@example.org), separated by commas."
        ) from error
EMAIL_BACKEND = (
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG and not SMTP_RELAY_AUTHPW
    else "notifications.relay.RelayEmailBackend"
)
# The outbox worker: mails claimed per SMTP connection, seconds between
# looks at the outbox when idle, and seconds a claim lasts. A worker killed
# while sending leaves its mails claimed; another worker sends them once the
# lease has run out, so the lease must outlast the slowest batch start.
OUTBOX_BATCH_SIZE = env_int("OUTBOX_BATCH_SIZE", 100)
OUTBOX_POLL_SECONDS = env_int("OUTBOX_POLL_SECONDS", 5)
OUTBOX_LEASE_SECONDS = env_int("OUTBOX_LEASE_SECONDS", 300)
# The slowest start of a batch (every port timing out) plus one mail.
if (len(SMTP_RELAY_PORTS) + 5) * SMTP_TIMEOUT > OUTBOX_LEASE_SECONDS:
    raise ImproperlyConfigured(
        "OUTBOX_LEASE_SECONDS must be at least (number of SMTP_RELAY_PORTS + 5) x SMTP_TIMEOUT, "
        "or a worker could lose its claim while it is still sending."
    )

# Matrix homeserver (vetting.matrix): invitations are registration tokens on it.
MATRIX_HOMESERVER_URL = env_service_url(
    "MATRIX_HOMESERVER_URL", "the homeserver", "MATRIX_ADMIN_TOKEN", "https://matrix.example.org"
)
MATRIX_ADMIN_TOKEN = env_secret("MATRIX_ADMIN_TOKEN")
# At least 3: the person is told a date 48 hours before the real expiry, which must come after the issue.
MATRIX_TOKEN_VALID_DAYS = env_int("MATRIX_TOKEN_VALID_DAYS", 30, minimum=3)
# `synapse` (its admin API) or `mas` (Matrix Authentication Service's admin API).
MATRIX_BACKEND = env.str("MATRIX_BACKEND", default="synapse").strip().lower()
if MATRIX_BACKEND not in ("synapse", "mas"):
    raise ImproperlyConfigured(f"MATRIX_BACKEND must be 'synapse' or 'mas', not {MATRIX_BACKEND!r}.")
# The part after the colon in user IDs; defaults to the homeserver URL's host.
MATRIX_SERVER_NAME = env.str("MATRIX_SERVER_NAME", default="")
# The Matrix spec's server name: a host name, an IPv4 address or an [IPv6] one, and an optional port.
if MATRIX_SERVER_NAME and not re.fullmatch(
    r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?", MATRIX_SERVER_NAME
):
    raise ImproperlyConfigured(
        "MATRIX_SERVER_NAME must be the homeserver's server name, the part after the colon in user IDs: "
        "matrix.example.org"
    )
MATRIX_MAS_URL = env_service_url(
    "MATRIX_MAS_URL", "the authentication service", "MATRIX_MAS_CLIENT_SECRET", "https://auth.example.org"
)
MATRIX_MAS_CLIENT_ID = env.str("MATRIX_MAS_CLIENT_ID", default="")
MATRIX_MAS_CLIENT_SECRET = env_secret("MATRIX_MAS_CLIENT_SECRET")
# Normally staff hand the token over through two separate channels; only
# when this is true does the applicant's e-mail carry it.
MATRIX_SEND_TOKEN_TO_APPLICANT = env_bool("MATRIX_SEND_TOKEN_TO_APPLICANT", default=False)

# ---------------------------------------------------------------------------
# Security hardening (issue 5): HTTPS, headers, cookies, CSP, rate limits,
# staff sign-in, logging. The README's "Security" section explains each choice.

# nginx terminates TLS and says so in X-Forwarded-Proto (deploy/ sets it).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", default=not DEBUG)
# The load balancer's health check may speak plain HTTP on the private side.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_HSTS_SECONDS = 0 if DEBUG else 365 * 24 * 60 * 60
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "strict-origin-when-cross-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# SAMEORIGIN, as CSP frame-ancestors 'self': the site may frame itself.
X_FRAME_OPTIONS = "SAMEORIGIN"
# Written by iama_vetting.middleware.SecurityHeadersMiddleware.
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=()"
SILENCED_SYSTEM_CHECKS = [
    # W019 asks for X-Frame-Options DENY; SAMEORIGIN is the chosen policy (above).
    "security.W019",
    # W021 asks for HSTS preload. The preload list takes only a registrable
    # domain and binds every subdomain of it: that is decided at the apex
    # domain, not by this one service on a subdomain.
    "security.W021",
]

# Cookies: HTTPS only, not readable by scripts, not sent on cross-site posts.
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
# Only staff have sessions (the public pages use none): 8 hours at most,
# and gone when the browser closes.
SESSION_COOKIE_AGE = 8 * 60 * 60
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
# The CSRF cookie also ends with the browser (Django's default keeps it a
# year): a form needs it only while it is open, and nothing then marks a
# visitor's browser for a year.
CSRF_COOKIE_AGE = None

# Only `make bench` turns this on: it adds the baseline view of iama_vetting/bench.py.
BENCH_BARE_VIEW = env_bool("BENCH_BARE_VIEW", default=False)

# Staff two-factor sign-in (TOTP with django-otp, backup codes). Required
# unless DEBUG; tests switch it per test.
STAFF_REQUIRE_2FA = env_bool("STAFF_REQUIRE_2FA", default=not DEBUG)
OTP_TOTP_ISSUER = "IaMA RVI"

# Content Security Policy (django-csp 4). Production: only our own origin,
# scripts also by per-request nonce; no unsafe-inline anywhere. The
# middleware adds report-uri/report-to when the host is not local.
CSP_REPORT_PATH = "/csp-report/"
_CSP_STRICT = {
    "default-src": [SELF],
    "script-src": [SELF, NONCE],
    "style-src": [SELF],
    "img-src": [SELF, "data:"],
    "font-src": [SELF],
    "connect-src": [SELF],
    "object-src": [NONE],
    "base-uri": [SELF],
    "form-action": [SELF],
    "frame-ancestors": [SELF],
    "upgrade-insecure-requests": True,
}
if DEBUG:
    # Development: a permissive policy is enforced, and the production policy
    # runs report-only beside it, so the console shows what would break.
    CONTENT_SECURITY_POLICY = {
        "DIRECTIVES": {
            "default-src": [SELF, UNSAFE_INLINE, UNSAFE_EVAL, "data:", "blob:"],
            "frame-ancestors": [SELF],
        }
    }
    CONTENT_SECURITY_POLICY_REPORT_ONLY = {"DIRECTIVES": {**_CSP_STRICT, "upgrade-insecure-requests": False}}
else:
    CONTENT_SECURITY_POLICY = {"DIRECTIVES": _CSP_STRICT}
    CONTENT_SECURITY_POLICY_REPORT_ONLY = None

# security.txt (RFC 9116): where to report a vulnerability.
SECURITY_CONTACT = env.str("SECURITY_CONTACT", default="mailto:support@rvi.iam-alliance.com")
try:
    if SECURITY_CONTACT.startswith(("https://", "tel:")):
        if any(character.isspace() for character in SECURITY_CONTACT):
            raise ValidationError("a URI has no spaces")
    else:
        # RFC 9116 allows a mailto: URI with fields after "?".
        validate_email(SECURITY_CONTACT.removeprefix("mailto:").partition("?")[0])
except ValidationError:
    raise ImproperlyConfigured(
        "SECURITY_CONTACT must be an e-mail address or an https:// URL (RFC 9116): security@example.org"
    ) from None

# Rate limits (django-ratelimit; the tiers are in iama_vetting/ratelimits.py).
# Counters live in the "ratelimit" cache: the shared Redis in production,
# wrapped by iama_vetting.cache.FallbackCache so that an unreachable Redis
# means per-process counting, never unlimited and never a 500.
# RATELIMIT_FAIL_OPEN would not help: it only covers a cache that answers
# without a value, not one that raises (django-ratelimit #333).
RATELIMIT_USE_CACHE = "ratelimit"
# Off only for load tests and fault-injection runs from one address; never in production.
RATELIMIT_ENABLE = env_bool("RATELIMIT_ENABLE", default=True)
# The one tier of every anonymous view without limits of its own, per client IP.
RATELIMIT_DEFAULT_PER_MINUTE = env_int("RATELIMIT_DEFAULT_PER_MINUTE", 120)
RATELIMIT_FAIL_OPEN = False
RATELIMIT_IP_META_KEY = "iama_vetting.ratelimits.client_ip"
_ratelimit_primary = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "ratelimit"}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    _ratelimit_primary = {
        **CACHES["default"],
        # Change it when several sites share one Redis database.
        "KEY_PREFIX": env.str("RATELIMIT_KEY_PREFIX", default="rvi-ratelimit"),
        # Fail fast and without retries: the fallback takes over.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": None},
    }
CACHES["ratelimit"] = {
    "BACKEND": "iama_vetting.cache.FallbackCache",
    "OPTIONS": {"PRIMARY": _ratelimit_primary},
}

# Logging: JSON lines in production, readable text in development. Every
# line carries the request's id, user id, client IP, method and path.
LOG_LEVEL = env.str("LOG_LEVEL", default="DEBUG" if DEBUG else "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL {LOG_LEVEL!r} is not a logging level.")
LOG_FORMAT = env.str("LOG_FORMAT", default="text" if DEBUG else "json").lower()
if LOG_FORMAT not in ("json", "text"):
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'json' or 'text', not {LOG_FORMAT!r}.")
# Loggers that must never write DEBUG: SQL can show personal data, and boto3's stack at DEBUG
# writes request signing, the AWS session token (X-Amz-Security-Token) included.
_NO_DEBUG_LEVEL = "INFO" if LOG_LEVEL == "DEBUG" else LOG_LEVEL
_NO_DEBUG_LOGGERS = ("django.db.backends", "botocore", "boto3", "s3transfer", "urllib3")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "iama_vetting.logs.RequestContextFilter"}},
    "formatters": {
        "json": {"()": "iama_vetting.logs.JSONFormatter"},
        "text": {"()": "iama_vetting.logs.TextFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_context"],
        },
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        **{name: {"level": _NO_DEBUG_LEVEL} for name in _NO_DEBUG_LOGGERS},
        # Our access line (iama_vetting.request) replaces runserver's and
        # django.request's per-request warnings would only repeat it.
        "django.server": {"level": "WARNING"},
    },
}

# Operations (deploy/README.md). Backups land in BACKUP_DIR (0600 files).
BACKUP_DIR = Path(env.str("BACKUP_DIR", default=str(BASE_DIR / "backups"))).resolve()
# `backup --verify` restores into a scratch database made with this role (it
# may CREATE DATABASE); from the env file, as its password must not be on a command line.
BACKUP_SCRATCH_DATABASE_URL = env.str("BACKUP_SCRATCH_DATABASE_URL", default="")
# Maintenance mode is a file, not a row: every worker sees it, and it still
# works while the database is down for the very maintenance it announces.
MAINTENANCE_FILE = Path(env.str("MAINTENANCE_FILE", default=str(BASE_DIR / "maintenance.json"))).resolve()
# Planned window, in UTC: "<first|second|third|fourth|last> <weekday> HH:MM-HH:MM",
# empty for none. Public pages announce it during the 48 hours before.
MAINTENANCE_WINDOW = env.str("MAINTENANCE_WINDOW", default="first sunday 02:00-04:00")
# Checked now, so a typo stops the start instead of breaking every public page.
_maintenance.parse_window(MAINTENANCE_WINDOW)
