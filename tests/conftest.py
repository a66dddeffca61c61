"""Shared fixtures and test-only switches.

Real-component tests carry a marker naming the component. Locally they skip
when it is missing, saying which; with CI=true every skip fails the run.
"""

from __future__ import annotations

import os

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from django.core.cache import caches
from django.db import connection

from iama_vetting import ratelimits
from vetting import roles
from vetting.roles import sync_role_groups

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = "/usr/bin/chromium"


def pytest_collection_modifyitems(config, items):
    if IN_CI and connection.vendor != "postgresql":
        # .ci/run runs the suite a second time on PostgreSQL; these run there.
        needs_postgres = [item for item in items if item.get_closest_marker("postgres")]
        config.hook.pytest_deselected(items=needs_postgres)
        items[:] = [item for item in items if not item.get_closest_marker("postgres")]


@pytest.fixture(autouse=True)
def postgres_when_marked(request):
    """A test marked `postgres` runs only when the configured database is PostgreSQL."""
    if request.node.get_closest_marker("postgres") and connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: set DATABASE_URL=postgres://...")


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
    ratelimits.default_tier.forget()
    yield
    caches["ratelimit"].clear()
    ratelimits.default_tier.forget()


def _staff_user(django_user_model, username: str, role: str | None = None):
    user = django_user_model.objects.create_user(
        username=username,
        email=f"{username}@staff.example",
        password=STAFF_PASSWORD,
        is_staff=True,
    )
    if role is not None:
        # Transactional tests flush the groups the migration made: make sure they exist.
        sync_role_groups(django_apps)
        user.groups.add(Group.objects.get(name=roles.group_name(role)))
    return user


STAFF_PASSWORD = "a-long-test-password"


@pytest.fixture
def agent(django_user_model):
    """A vetting agent: claims, verifies and recommends."""
    return _staff_user(django_user_model, "agent", roles.VETTING_AGENT)


@pytest.fixture
def second_agent(django_user_model):
    return _staff_user(django_user_model, "second_agent", roles.VETTING_AGENT)


@pytest.fixture
def server_admin(django_user_model):
    """Decides applications and manages agents."""
    return _staff_user(django_user_model, "server_admin", roles.SERVER_ADMIN)


@pytest.fixture
def second_server_admin(django_user_model):
    return _staff_user(django_user_model, "second_server_admin", roles.SERVER_ADMIN)


@pytest.fixture
def inviting_admin(django_user_model):
    return _staff_user(django_user_model, "inviting_admin", roles.INVITING_ADMIN)


@pytest.fixture
def outsider(django_user_model):
    """Staff without any role."""
    return _staff_user(django_user_model, "outsider")


@pytest.fixture
def superadmin(django_user_model):
    return django_user_model.objects.create_superuser(
        username="superadmin", email="super@staff.example", password=STAFF_PASSWORD
    )


@pytest.fixture
def applicant(db):
    """An applicant whose application is confirmed and waiting in the queue."""
    from tests.factories import make_application

    return make_application()


@pytest.fixture(scope="session")
def chromium():
    """Headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"needs Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the ORM calls
    # the tests make around it are ordinary synchronous ones.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            # What this machine's closed network needs: no background traffic, no sandbox as root.
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def plain_http(settings):
    """The live server speaks HTTP: cookies may not demand HTTPS, and nothing can be upgraded to it.

    Otherwise the CSP stays the production one. (upgrade-insecure-requests
    would send the upload script's same-origin redirect to https://localhost,
    where nothing listens; in production every request is HTTPS already.)
    """
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    directives = dict(settings.CONTENT_SECURITY_POLICY["DIRECTIVES"])
    assert directives.pop("upgrade-insecure-requests") is True
    settings.CONTENT_SECURITY_POLICY = {"DIRECTIVES": directives}
