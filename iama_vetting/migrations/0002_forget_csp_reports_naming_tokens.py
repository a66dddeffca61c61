from django.db import migrations
from django.db.models import Q

# Pages whose path carries a capability token (status, confirmation and password-reset links).
TOKEN_PAGES = ("/status/", "/confirm/", "/reset/")


def forget_reports_naming_tokens(apps, schema_editor):
    """Reports stored before pages were kept by route hold raw links: the links are secrets.

    Rows keep counts of violation kinds only, so forgetting these loses no more
    than their past counts; the same kinds are counted again under their route.
    """
    CSPViolation = apps.get_model("iama_vetting", "CSPViolation")
    naming_a_token = Q()
    for prefix in TOKEN_PAGES:
        naming_a_token |= Q(blocked__contains=prefix) | (
            Q(document_path__contains=prefix) & ~Q(document_path__contains="<")
        )
    CSPViolation.objects.filter(naming_a_token).delete()


class Migration(migrations.Migration):
    dependencies = [("iama_vetting", "0001_initial")]

    operations = [migrations.RunPython(forget_reports_naming_tokens, migrations.RunPython.noop)]
