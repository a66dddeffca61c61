from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.files.storage import FileSystemStorage, Storage, storages
from storages.backends.s3 import S3Storage
from storages.utils import clean_name

logger = logging.getLogger(__name__)


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


# What boto3 raises when S3 cannot be reached, refuses, or has no credentials
# (S3UploadFailedError, ClientError, EndpointConnectionError, NoCredentialsError…).
S3_FAILURES = (Boto3Error, BotoCoreError, ClientError)


def _as_os_error(method: Callable) -> Callable:
    """Raise S3 failures as OSError, as local disk does: callers handle both with one except."""

    @functools.wraps(method)
    def wrapper(self, name: str, *args, **kwargs):
        try:
            return method(self, name, *args, **kwargs)
        except S3_FAILURES as error:
            raise OSError(f"S3 {method.__name__} of {name!r} failed: {error}") from error

    return wrapper


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

    # Every method that talks to S3; the views and purge_evidence catch OSError.
    _open = _as_os_error(S3Storage._open)
    _save = _as_os_error(S3Storage._save)
    delete = _as_os_error(S3Storage.delete)
    exists = _as_os_error(S3Storage.exists)
    listdir = _as_os_error(S3Storage.listdir)
    size = _as_os_error(S3Storage.size)
    get_modified_time = _as_os_error(S3Storage.get_modified_time)

    @_as_os_error
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


def delete_left_behind(storage: Storage, name: str) -> None:
    """Delete a file that a failed or undone change left behind, as far as storage allows.

    Cleanup must not stop at the first failure, nor hide the error that made
    it necessary: a file it cannot delete is logged, and purge_evidence's
    sweep of files without a row removes it later.
    """
    try:
        storage.delete(name)
    except OSError:
        logger.exception("Could not delete the evidence file %s; purge_evidence will remove it.", name)


def evidence_storage() -> Storage:
    """The storage named "evidence" in STORAGES (local disk, or S3 when configured)."""
    return storages["evidence"]
