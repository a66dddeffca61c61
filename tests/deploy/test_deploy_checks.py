"""The project's own deployment checks, as `manage.py check --deploy` runs them in production."""

from __future__ import annotations

import pytest

from tests.security.conftest import PRODUCTION_ENV, run_python


def check_deploy(tmp_path, **environment: str):
    return run_python(
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        tmp_path,
        **{**PRODUCTION_ENV, "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", **environment},
    )


@pytest.mark.parametrize(
    ("environment", "finding"),
    [
        ({"REDIS_URL": "redis://127.0.0.1:6379/0", "STAFF_REQUIRE_2FA": "false"}, "iama_vetting.W001"),
        ({"REDIS_URL": "redis://127.0.0.1:6379/0", "RATELIMIT_ENABLE": "false"}, "iama_vetting.W002"),
        # No CACHE_URL or REDIS_URL: each worker's local memory.
        ({}, "iama_vetting.W003"),
        # A shared cache that is not Redis still leaves the rate-limit counters in each worker.
        ({"CACHE_URL": "dummycache://"}, "iama_vetting.W003"),
    ],
)
def test_values_that_start_quietly_but_leave_production_unprotected_fail_check_deploy(
    tmp_path, environment, finding
):
    result = check_deploy(tmp_path, **environment)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    findings = [line for line in output.splitlines() if "(iama_vetting." in line]
    assert len(findings) == 1 and finding in findings[0], output
