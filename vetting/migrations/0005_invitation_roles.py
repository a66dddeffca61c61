from django.db import migrations

from vetting.roles import sync_role_groups


def update_role_groups(apps, schema_editor):
    # Inviting admins and server admins gain the invitation list (roles.ROLE_PERMISSIONS).
    sync_role_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("vetting", "0004_invitation"),
    ]

    operations = [migrations.RunPython(update_role_groups, migrations.RunPython.noop)]
