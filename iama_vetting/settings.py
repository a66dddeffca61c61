"""Settings for IaMA RVI, read from the environment with django-environ.

Every variable has a type and either a safe default or fails loudly. The
variable names are an interface (README, deploy/.env.example); keep them.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()


def env_bool(name: str, default: bool) -> bool:
    """Only 'true' or 'false' (any case): a typo must not silently mean False."""
    raw = env.str(name, default="true" if default else "false").strip().lower()
    if raw not in ("true", "false"):
        raise ImproperlyConfigured(f"{name} must be 'true' or 'false', not {raw!r}.")
    return raw == "true"


def env_positive_int(name: str, default: int) -> int:
    try:
        value = env.int(name, default=default)
    except ValueError as error:
        raise ImproperlyConfigured(f"{name} must be a whole number.") from error
    if value < 1:
        raise ImproperlyConfigured(f"{name} must be at least 1.")
    return value


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
SECRET_KEY = env.str("SESSION_SECRET", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SESSION_SECRET must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-when-DEBUG-is-true"  # noqa: S105

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off.")
if DEBUG and not all(is_local_host(host) for host in ALLOWED_HOSTS):
    raise ImproperlyConfigured(
        "DEBUG is on with a public host in ALLOWED_HOSTS: refusing to start. Set DEBUG=false in production."
    )
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
# Absolute links in e-mails (status page, admin) start with this.
SITE_URL = env.str(
    "SITE_URL", default="http://127.0.0.1:8000" if DEBUG else f"https://{ALLOWED_HOSTS[0].lstrip('.')}"
).rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "vetting",
    "evidence",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
            ],
        },
    },
]

# Database: SQLite by default; PostgreSQL through psycopg 3 with Django's
# connection pool. The pool owns connection lifetime, so CONN_MAX_AGE stays 0
# (Django refuses a pool with persistent connections).
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": env_positive_int("DATABASE_CONNECT_TIMEOUT", 5),
            # Server-side cap on any one statement, in milliseconds.
            "options": f"-c statement_timeout={env_positive_int('DATABASE_STATEMENT_TIMEOUT_MS', 30_000)}",
            "pool": {
                "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=1),
                "max_size": env_positive_int("DATABASE_POOL_MAX_SIZE", 4),
                # Seconds a request waits for a free connection before failing.
                "timeout": env_positive_int("DATABASE_POOL_TIMEOUT", 10),
                # Recycle connections so none outlives a failover or a config change.
                "max_lifetime": env_positive_int("DATABASE_CONN_MAX_LIFETIME", 600),
                "max_idle": 300,
            },
        }
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Cache: local memory by default; Redis (Django's own backend) when
# CACHE_URL or REDIS_URL names one. Rate limits need it shared in production.
_cache_url = env.str("CACHE_URL", default="") or env.str("REDIS_URL", default="")
CACHES = {
    "default": env.cache_url_config(_cache_url)
    if _cache_url
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
}

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
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    "evidence": {"BACKEND": "evidence.storage.EvidenceStorage"},
}

# Evidence files: local disk below EVIDENCE_ROOT, 0750 directories, 0640 files.
EVIDENCE_ROOT = Path(env.str("EVIDENCE_ROOT", default=str(BASE_DIR / "uploads" / "evidence"))).resolve()
if EVIDENCE_ROOT == STATIC_ROOT or STATIC_ROOT in EVIDENCE_ROOT.parents:
    raise ImproperlyConfigured("EVIDENCE_ROOT must not be inside STATIC_ROOT: evidence would be public.")
EVIDENCE_STORAGE = env.str("EVIDENCE_STORAGE", default="local")
if EVIDENCE_STORAGE != "local":
    raise ImproperlyConfigured(f"EVIDENCE_STORAGE={EVIDENCE_STORAGE!r} is not supported yet; use 'local'.")
# Behind nginx: downloads answer with X-Accel-Redirect to this internal location.
EVIDENCE_X_ACCEL_PREFIX = env.str("EVIDENCE_X_ACCEL_PREFIX", default="")
EVIDENCE_RETENTION_DAYS = env_positive_int("EVIDENCE_RETENTION_DAYS", 180)
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

TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured("TRUSTED_PROXY_COUNT must be 0 or more.")

# E-mail. Mail is written to the outbox (notifications.OutboundEmail) and
# delivered from there. Without a relay password it stays queued, and in
# DEBUG it is printed to the console instead.
SMTP_RELAY_HOST = env.str("SMTP_RELAY_HOST", default="mail.smtp2go.com")
SMTP_RELAY_PORTS = [int(port) for port in env.list("SMTP_RELAY_PORTS", default=["2525", "8025", "587", "80"])]
SMTP_RELAY_USER = env.str("SMTP_RELAY_USER", default="support@rvi.iam-alliance.com")
SMTP_RELAY_AUTHPW = env.str("SMTP_RELAY_AUTHPW", default="")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="IaMA RVI Support <support@rvi.iam-alliance.com>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
STAFF_NOTIFY_EMAILS = env.list("STAFF_NOTIFY_EMAILS", default=[])
EMAIL_BACKEND = (
    "django.core.mail.backends.console.EmailBackend"
    if DEBUG
    else "django.core.mail.backends.smtp.EmailBackend"
)

# Matrix homeserver (used by the invitations work).
MATRIX_HOMESERVER_URL = env.str("MATRIX_HOMESERVER_URL", default="")
MATRIX_ADMIN_TOKEN = env.str("MATRIX_ADMIN_TOKEN", default="")
MATRIX_TOKEN_VALID_DAYS = env_positive_int("MATRIX_TOKEN_VALID_DAYS", 30)

# Sessions and CSRF cookies are sent over HTTPS only in production.
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SESSION_COOKIE_HTTPONLY = True

LOG_LEVEL = env.str("LOG_LEVEL", default="DEBUG" if DEBUG else "INFO").upper()
if LOG_LEVEL not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
    raise ImproperlyConfigured(f"LOG_LEVEL {LOG_LEVEL!r} is not a logging level.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "{asctime} {levelname} {name}: {message}", "style": "{"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "text"},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # SQL at DEBUG would flood development logs and can show personal data.
        "django.db.backends": {"level": "INFO"},
    },
}
