from django.apps import AppConfig


class VettingConfig(AppConfig):
    name = "vetting"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from vetting import signals  # noqa: F401  (connects the sign-in audit receivers)
