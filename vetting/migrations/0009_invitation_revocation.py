from django.conf import settings
from django.db import migrations, models


def record_how_revoked_invitations_were_revoked(apps, schema_editor):
    """An admin's revocation names the admin; the others are told apart by their audit events.

    A withdrawal's event names the invitation it revoked, and so does a sync that
    found the token gone from the homeserver. Where an erasure redacted those
    details, the invitation stays without a revocation: "revoked by" shows none.
    """
    AuditEvent = apps.get_model("vetting", "AuditEvent")
    Invitation = apps.get_model("vetting", "Invitation")
    revoked = Invitation.objects.filter(state="revoked")
    revoked.filter(revoked_by__isnull=False).update(revocation="admin")
    for action, key, revocation in [
        ("application.withdrawn", "invitation_revoked", "withdrawal"),
        ("invitation.gone_on_server", "invitation", "homeserver"),
    ]:
        events = AuditEvent.objects.filter(target_type="application", action=action)
        invitations = [details[key] for details in events.values_list("details", flat=True) if key in details]
        revoked.filter(pk__in=invitations, revoked_by__isnull=True).update(revocation=revocation)


class Migration(migrations.Migration):
    dependencies = [
        ("vetting", "0008_information_reply"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="invitation",
            name="revocation",
            field=models.CharField(
                blank=True,
                choices=[
                    ("", "Not revoked"),
                    ("admin", "An inviting admin"),
                    ("withdrawal", "The applicant, by withdrawing"),
                    ("homeserver", "Nobody here: the token was gone from the homeserver"),
                ],
                default="",
                max_length=10,
                verbose_name="how it was revoked",
            ),
        ),
        # The column goes on the way back, and what it held with it.
        migrations.RunPython(record_how_revoked_invitations_were_revoked, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="invitation",
            constraint=models.CheckConstraint(
                condition=models.Q(("state", "revoked"), ("revocation", ""), _connector="OR"),
                name="invitation_revocation_only_when_revoked",
            ),
        ),
    ]
