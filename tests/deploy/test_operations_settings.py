"""Settings of the deployment work: S3 evidence storage and the maintenance window."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings

PRINT = (
    "import json, django; from django.conf import settings; django.setup(); "
    "print(json.dumps({'evidence': settings.STORAGES['evidence'], 'window': settings.MAINTENANCE_WINDOW}))"
)


def load(**environment: str) -> subprocess.CompletedProcess:
    clean = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("AWS_", "EVIDENCE_", "MAINTENANCE_"))
    }
    clean.update(
        {"DEBUG": "true", "ALLOWED_HOSTS": "localhost", "DJANGO_SETTINGS_MODULE": "iama_vetting.settings"}
    )
    return subprocess.run(
        [sys.executable, "-c", PRINT],
        cwd=settings.BASE_DIR,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_s3_storage_needs_a_bucket():
    result = load(EVIDENCE_STORAGE="s3")
    assert result.returncode != 0
    assert "EVIDENCE_STORAGE=s3 needs AWS_STORAGE_BUCKET_NAME." in result.stderr


def test_s3_storage_uses_the_private_no_overwrite_backend():
    result = load(
        EVIDENCE_STORAGE="s3", AWS_STORAGE_BUCKET_NAME="rvi-evidence", AWS_S3_REGION_NAME="eu-central-1"
    )
    assert result.returncode == 0, result.stderr
    evidence = json.loads(result.stdout)["evidence"]
    assert evidence["BACKEND"] == "evidence.storage.S3EvidenceStorage"
    assert evidence["OPTIONS"]["bucket_name"] == "rvi-evidence"
    assert evidence["OPTIONS"]["location"] == "evidence"


def test_unknown_evidence_storage_refuses_to_start():
    result = load(EVIDENCE_STORAGE="ftp")
    assert result.returncode != 0
    assert "EVIDENCE_STORAGE must be 'local' or 's3', not 'ftp'." in result.stderr


def test_maintenance_window_defaults_to_the_guides_first_sunday():
    result = load()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["window"] == "first sunday 02:00-04:00"


def test_a_mistyped_maintenance_window_refuses_to_start():
    result = load(MAINTENANCE_WINDOW="every sunday 02:00-04:00")
    assert result.returncode != 0
    assert "MAINTENANCE_WINDOW" in result.stderr


SERVICE_URLS = [
    ("MATRIX_HOMESERVER_URL", "the homeserver", "MATRIX_ADMIN_TOKEN"),
    ("MATRIX_MAS_URL", "the authentication service", "MATRIX_MAS_CLIENT_SECRET"),
]


@pytest.mark.parametrize(("name", "service", "_credential"), SERVICE_URLS)
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:99999",
        "http://127.0.0.1:abc",
        "http://127.0.0.1:0",
        "http://[::1",
        "matrix.example.org",
    ],
)
def test_an_unusable_service_url_refuses_to_start(name, service, _credential, url):
    result = load(**{name: url})
    assert result.returncode != 0
    assert f"{name} must be {service}'s address" in result.stderr


@pytest.mark.parametrize(("name", "_service", "credential"), SERVICE_URLS)
def test_a_password_in_a_service_url_refuses_to_start_and_is_not_shown(name, _service, credential):
    result = load(**{name: "https://rvi:S3CRETPW@127.0.0.1:1"})
    assert result.returncode != 0
    assert f"{credential} is the credential" in result.stderr
    assert "S3CRETPW" not in result.stderr


def test_env_example_lists_every_variable_the_settings_read():
    source = (settings.BASE_DIR / "iama_vetting" / "settings.py").read_text()
    read = set(re.findall(r"""env(?:\.\w+|_\w+)\(\s*["']([A-Z][A-Z0-9_]+)["']""", source))
    read |= set(re.findall(r"""env_int\('([A-Z][A-Z0-9_]+)'""", source))
    listed = set(
        re.findall(r"^([A-Z][A-Z0-9_]+)=", (settings.BASE_DIR / "deploy" / ".env.example").read_text(), re.M)
    )
    assert read, "the pattern found no variables"
    assert read - listed == set()
