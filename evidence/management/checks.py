"""Checks shared by the operator commands that read the whole evidence store (purge_evidence, backup)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files.storage import Storage
from django.core.management.base import CommandError

from evidence.models import Evidence
from evidence.storage import stored_names


def refuse_unavailable_evidence(storage: Storage) -> None:
    """Raise CommandError unless the evidence store is there and holds files when rows say it should.

    An unmounted volume reads as an empty store, which would make every row's
    file look missing; backup's archive of it would replace the good ones as
    they age out.
    """
    unchanged = "Nothing was changed."
    if settings.EVIDENCE_STORAGE == "local":
        root = Path(settings.EVIDENCE_ROOT)
        if not root.is_dir():
            raise CommandError(
                f"The evidence root {root} does not exist or is not a directory: is its volume "
                f"mounted? {unchanged}"
            )
    try:
        first_file = next(stored_names(storage), None)
    except OSError as error:
        raise CommandError(f"The evidence store cannot be read ({error}). {unchanged}") from error
    rows = Evidence.objects.stored().count()
    if first_file is None and rows:
        raise CommandError(
            f"The evidence store holds no files, but {rows} evidence rows have one: is its volume "
            f"mounted? {unchanged}"
        )
