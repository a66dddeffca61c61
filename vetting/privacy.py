"""The privacy notice's version, recorded with each applicant's consent.

Change PRIVACY_NOTICE_VERSION whenever the text of
templates/vetting/privacy.html changes in substance, so every application
shows which text its applicant agreed to.
"""

from __future__ import annotations

PRIVACY_NOTICE_VERSION = "2026-11-29"
