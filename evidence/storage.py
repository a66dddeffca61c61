from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

from botocore.exceptions import ClientError
from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from storages.backends.s3 import S3Storage
from storages.utils import clean_name


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

    def open_stream(self, name: str) -> BinaryIO:
        """The stored bytes for a download; FileNotFoundError if they are gone."""
        return self.open(name, "rb")


class S3EvidenceStorage(S3Storage):
    """Evidence on S3 (EVIDENCE_STORAGE=s3), under the same <2 hex>/<uuid>.<ext> keys.

    No ACL is sent, so objects stay as private as the bucket (never public-read);
    a name is never overwritten. There are no public URLs: downloads stream
    through the access-checked view (see evidence.views.download).
    """

    def __init__(self, **options) -> None:
        super().__init__(
            **{
                "default_acl": None,
                "file_overwrite": False,
                "querystring_auth": True,
                "querystring_expire": 60,
                **options,
            }
        )

    def open_stream(self, name: str) -> BinaryIO:
        """The object's body, read from S3 chunk by chunk as the response is sent."""
        key = self._normalize_name(clean_name(name))
        try:
            return self.bucket.Object(key).get()["Body"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(name) from error
            raise


def stored_names(storage: Storage, directory: str = "") -> Iterator[str]:
    """Every file name below `directory`, on local disk and on S3 alike."""
    directories, files = storage.listdir(directory)
    for file in files:
        yield f"{directory}/{file}" if directory else file
    for child in directories:
        yield from stored_names(storage, f"{directory}/{child}" if directory else child)


def evidence_storage() -> Storage:
    """The storage named "evidence" in STORAGES (local disk, or S3 when configured)."""
    return storages["evidence"]
