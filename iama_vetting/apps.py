from __future__ import annotations

from django.apps import AppConfig
from django.contrib.admin.apps import AdminConfig


class IamaVettingConfig(AppConfig):
    """The project package as an app: it owns the CSP violation counters."""

    name = "iama_vetting"
    verbose_name = "Security"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from iama_vetting import checks  # noqa: F401 - registers the deployment checks


class StaffAdminConfig(AdminConfig):
    """django.contrib.admin with our site: staff sign-in with two factors."""

    default_site = "iama_vetting.admin_site.StaffAdminSite"
