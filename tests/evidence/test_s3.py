"""Evidence on S3 (EVIDENCE_STORAGE=s3) against a real moto S3 server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from botocore.config import Config
from django.core.files.base import ContentFile

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.deploy import servers
from tests.factories import PDF_BYTES, make_application, upload
from tests.vetting.test_apply import form_data
from tests.vetting.test_data_rights import status_path
from vetting.models import Application, AuditEvent

pytestmark = [
    pytest.mark.s3,
    pytest.mark.skipif(
        importlib.util.find_spec("moto") is None, reason="needs moto[server] (requirements-dev.txt)"
    ),
]

BUCKET = "rvi-evidence-test"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret"}


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    port = servers.free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen(  # noqa: S603 - moto's own server module
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        servers.wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        servers.stop(process)
        log.close()


@pytest.fixture
def bucket(s3_endpoint):
    import boto3

    s3 = boto3.resource(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = s3.Bucket(BUCKET)
    bucket.create()
    yield bucket
    bucket.objects.all().delete()
    bucket.delete()


def storage_for(endpoint: str, **options):
    from evidence.storage import S3EvidenceStorage

    return S3EvidenceStorage(
        **{
            "bucket_name": BUCKET,
            "location": "evidence",
            "endpoint_url": endpoint,
            "region_name": "us-east-1",
            "access_key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
            "secret_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            **options,
        }
    )


def test_s3_storage_never_overwrites_a_name(s3_endpoint, bucket):
    storage = storage_for(s3_endpoint)
    first = storage.save("ab/same.pdf", ContentFile(b"first"))
    second = storage.save("ab/same.pdf", ContentFile(b"second"))
    assert first == "ab/same.pdf" and second != first
    assert storage.open_stream(first).read() == b"first"


def test_s3_storage_reports_a_missing_object_as_file_not_found(s3_endpoint, bucket):
    with pytest.raises(FileNotFoundError):
        storage_for(s3_endpoint).open_stream("ab/nothing.pdf")


def test_a_missing_bucket_or_a_stopped_server_reaches_callers_as_os_error(s3_endpoint):
    missing_bucket = storage_for(s3_endpoint, bucket_name="no-such-bucket")
    with pytest.raises(OSError, match="NoSuchBucket"):
        missing_bucket.save("ab/x.pdf", ContentFile(PDF_BYTES))
    with pytest.raises(OSError, match="NoSuchBucket"):
        missing_bucket.listdir("")

    # Nothing listens on a fresh port: the S3 server is down. One attempt keeps the test quick.
    stopped = storage_for(
        f"http://127.0.0.1:{servers.free_port()}",
        client_config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    with pytest.raises(OSError, match="Could not connect"):
        stopped.save("ab/x.pdf", ContentFile(PDF_BYTES))


@pytest.mark.django_db
def test_apply_with_a_missing_bucket_gets_the_friendly_message_and_keeps_nothing(
    s3_endpoint, client, monkeypatch
):
    monkeypatch.setattr(
        Evidence._meta.get_field("file"), "storage", storage_for(s3_endpoint, bucket_name="no-such-bucket")
    )
    response = client.post(
        "/apply/",
        form_data(evidence_1=upload("id.pdf", PDF_BYTES), evidence_2=upload("letter.pdf", PDF_BYTES)),
    )
    assert response.status_code == 503
    assert "We could not store your files just now, so nothing was kept." in response.content.decode()
    assert not Application.objects.exists()
    assert not Evidence.objects.exists()


@pytest.mark.django_db
def test_with_s3_unreachable_downloads_answer_503_and_nothing_is_lost(
    s3_endpoint, bucket, client, agent, monkeypatch
):
    field = Evidence._meta.get_field("file")
    monkeypatch.setattr(field, "storage", storage_for(s3_endpoint))
    application = make_application()
    evidence = Evidence.objects.store(application, validate_upload(upload("id.pdf", PDF_BYTES)))
    # Nothing listens on a fresh port: the S3 server is down.
    stopped = storage_for(
        f"http://127.0.0.1:{servers.free_port()}",
        client_config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    monkeypatch.setattr(field, "storage", stopped)

    client.force_login(agent)
    download = client.get(f"/evidence/{evidence.pk}/")
    assert download.status_code == 503
    assert download["Retry-After"]
    assert "The evidence storage cannot be reached right now" in download.content.decode()
    assert not AuditEvent.objects.filter(action="evidence.downloaded").exists()
    client.logout()
    export = client.get(status_path(application, "my-data/"))
    assert export.status_code == 503
    assert "Your data is not available right now" in export.content.decode()

    assert Evidence.objects.filter(pk=evidence.pk, purged_at__isnull=True).exists()
    assert storage_for(s3_endpoint).exists(evidence.file.name)


def test_apply_download_and_purge_with_evidence_on_s3(s3_endpoint, bucket, tmp_path):
    app = servers.App(
        tmp_path / "app",
        EVIDENCE_STORAGE="s3",
        AWS_STORAGE_BUCKET_NAME=BUCKET,
        AWS_S3_ENDPOINT_URL=s3_endpoint,
        AWS_S3_REGION_NAME="us-east-1",
        # Even behind nginx, S3 evidence is streamed by the app: there is no file for nginx.
        EVIDENCE_X_ACCEL_PREFIX="/_protected_evidence/",
        **CREDENTIALS,
    ).install()
    rendered = app.render_deploy(tmp_path / "rendered", resolver="127.0.0.1")
    evidence_bytes = servers.pdf_bytes(200_000)
    with app.gunicorn(rendered / "gunicorn.conf.py", servers.free_port()) as url:
        answer = servers.submit_application(url, {"proof": ("proof.pdf", evidence_bytes)})
        assert answer.status_code == 302, answer.text

        keys = [item.key for item in bucket.objects.all()]
        assert len(keys) == 1
        evidence_id = app.shell_json(
            "import json; from evidence.models import Evidence; e = Evidence.objects.get();"
            "print(json.dumps([str(e.pk), e.file.name]))"
        )
        assert keys == [f"evidence/{evidence_id[1]}"]
        assert evidence_id[1] == f"{evidence_id[0][:2]}/{evidence_id[0]}.pdf"
        grants = bucket.Object(keys[0]).Acl().grants
        assert not [grant for grant in grants if "AllUsers" in str(grant.get("Grantee", {}).get("URI", ""))]
        assert not app.evidence_root.exists() or not any(app.evidence_root.rglob("*.pdf"))

        response = requests.get(
            f"{url}/evidence/{evidence_id[0]}/", cookies={"sessionid": app.staff_session()}, timeout=30
        )
        assert response.status_code == 200
        assert hashlib.sha256(response.content).digest() == hashlib.sha256(evidence_bytes).digest()
        assert response.headers["Content-Disposition"].startswith('attachment; filename="proof.pdf"')
        # Streamed from S3, where the body has no name and no length of its own.
        assert response.headers["Content-Type"] == "application/pdf"
        assert response.headers["Content-Length"] == str(len(evidence_bytes))
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "X-Accel-Redirect" not in response.headers

    app.manage(
        "shell",
        "-c",
        "from datetime import timedelta; from django.utils import timezone; from vetting.models import Application;"
        "Application.objects.update(status='rejected', updated_at=timezone.now() - timedelta(days=400))",
    )
    output = app.manage("purge_evidence")
    assert "1 evidence files of applications decided more than 180 days ago were purged." in output
    assert list(bucket.objects.all()) == []
