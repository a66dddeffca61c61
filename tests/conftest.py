"""Shared fixtures and test-only switches.

Real-component tests carry a marker naming the component. Locally they skip
when it is missing, saying which; with CI=true every skip fails the run.
"""

from __future__ import annotations

import os

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import caches
from django.db import connection

IN_CI = os.environ.get("CI", "").lower() == "true"


def pytest_collection_modifyitems(config, items):
    if connection.vendor == "postgresql":
        return
    needs_postgres = [item for item in items if item.get_closest_marker("postgres")]
    if IN_CI:
        # .ci/run runs the suite a second time on PostgreSQL; these run there.
        config.hook.pytest_deselected(items=needs_postgres)
        items[:] = [item for item in items if not item.get_closest_marker("postgres")]
    else:
        for item in needs_postgres:
            item.add_marker(pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://..."))


_skipped_in_ci: list[str] = []


def pytest_runtest_logreport(report):
    if IN_CI and report.skipped:
        _skipped_in_ci.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if _skipped_in_ci:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    if _skipped_in_ci:
        terminalreporter.write_line("CI=true: these tests skipped, which CI counts as failures:", red=True)
        for nodeid in _skipped_in_ci:
            terminalreporter.write_line(f"  {nodeid}", red=True)


@pytest.fixture(autouse=True)
def test_switches(settings, tmp_path):
    """Fast password hashing, a private evidence root, no collectstatic needed."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }
    settings.EVIDENCE_ROOT = tmp_path / "evidence"
    settings.STATIC_ROOT = tmp_path / "static"
    settings.STATIC_ROOT.mkdir()
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def fresh_rate_limits():
    """Every test starts with empty rate-limit counters (the suite posts to /apply/ a lot)."""
    caches["ratelimit"].clear()
    yield
    caches["ratelimit"].clear()


def _staff_user(django_user_model, username: str, *permissions: str):
    user = django_user_model.objects.create_user(
        username=username, email=f"{username}@staff.example", password="a-long-test-password", is_staff=True
    )
    for dotted in permissions:
        app_label, codename = dotted.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return user


@pytest.fixture
def agent(django_user_model):
    """A vetting agent: sees the queue and downloads evidence."""
    return _staff_user(django_user_model, "agent", "vetting.view_application", "evidence.view_evidence")


@pytest.fixture
def outsider(django_user_model):
    """Staff without any permission on applications or evidence."""
    return _staff_user(django_user_model, "outsider")


@pytest.fixture
def superadmin(django_user_model):
    return django_user_model.objects.create_superuser(
        username="superadmin", email="super@staff.example", password="a-long-test-password"
    )
