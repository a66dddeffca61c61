from __future__ import annotations

import os

from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages


class EvidenceStorage(FileSystemStorage):
    """Local evidence store below EVIDENCE_ROOT.

    Django's FileSystemStorage applies these modes itself, whatever the
    process umask: directories 0750, files 0640. There is no base URL:
    evidence is served only through the access-checked download view.
    """

    def __init__(self) -> None:
        super().__init__(file_permissions_mode=0o640, directory_permissions_mode=0o750)

    # Read on every use, so a changed EVIDENCE_ROOT (tests) takes effect.
    @property
    def base_location(self) -> str:
        return str(settings.EVIDENCE_ROOT)

    @property
    def location(self) -> str:
        return os.path.abspath(self.base_location)

    @property
    def base_url(self) -> None:
        return None


def evidence_storage() -> Storage:
    """The storage named "evidence" in STORAGES (local disk, or S3 when configured)."""
    return storages["evidence"]
