from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import PDF_BYTES, make_application, upload

pytestmark = pytest.mark.django_db


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o077, 0o022])
def test_directories_are_0750_and_files_0640_whatever_the_umask(settings, umask):
    previous = os.umask(umask)
    try:
        evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.pdf", PDF_BYTES)))
    finally:
        os.umask(previous)
    root = Path(settings.EVIDENCE_ROOT)
    stored = root / evidence.file.name
    assert mode(stored) == 0o640
    assert mode(stored.parent) == 0o750
    assert mode(root) == 0o750


def test_file_is_named_by_uuid_not_by_the_uploaded_name(settings):
    evidence = Evidence.objects.store(
        make_application(), validate_upload(upload("../../etc/cron.d/x.pdf", PDF_BYTES))
    )
    assert evidence.file.name == f"{evidence.pk.hex[:2]}/{evidence.pk}.pdf"
    assert "cron" not in evidence.file.name
    assert evidence.original_name == "x.pdf"


def test_evidence_has_no_public_url():
    evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.pdf", PDF_BYTES)))
    with pytest.raises(ValueError, match="not accessible via a URL"):
        evidence.file.url  # noqa: B018
