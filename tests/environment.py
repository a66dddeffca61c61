"""Environment for the test run, loaded before Django reads its settings.

pytest loads this module early (`-p tests.environment` in pyproject.toml):
settings.py refuses to start without these outside DEBUG, and the suite runs
with DEBUG off, as production does. Values already set (CI's DATABASE_URL)
win. Other test-only switches live in tests/conftest.py.
"""

import os

os.environ.setdefault("DEBUG", "false")
os.environ.setdefault("SESSION_SECRET", "test-session-secret-not-used-anywhere-else")
os.environ.setdefault("ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("STAFF_NOTIFY_EMAILS", "queue@staff.example,lead@staff.example")
# Security (issue 5): the test client speaks plain HTTP, so no redirect to
# HTTPS; staff 2FA is switched on by the tests that are about it.
os.environ.setdefault("SECURE_SSL_REDIRECT", "false")
os.environ.setdefault("STAFF_REQUIRE_2FA", "false")
