from django.db import migrations

from vetting.roles import sync_role_groups


def create_role_groups(apps, schema_editor):
    sync_role_groups(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("evidence", "0001_initial"),
        ("vetting", "0002_workflow"),
    ]

    operations = [migrations.RunPython(create_role_groups, migrations.RunPython.noop)]
