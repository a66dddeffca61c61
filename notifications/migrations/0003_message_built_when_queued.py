from django.db import migrations, models


def build_queued_messages(apps, schema_editor):
    # Mail queued before messages were built at queueing time: build it now.
    from notifications.models import build_message

    OutboundEmail = apps.get_model("notifications", "OutboundEmail")
    for mail in OutboundEmail.objects.filter(message=b"").iterator():
        mail.message = build_message(mail.to, mail.subject, mail.body_text, mail.body_html)
        mail.save(update_fields=["message"])


class Migration(migrations.Migration):

    dependencies = [
        ("notifications", "0002_outbox_worker"),
    ]

    operations = [
        migrations.AddField(
            model_name="outboundemail",
            name="message",
            field=models.BinaryField(default=b"", verbose_name="message as sent"),
            preserve_default=False,
        ),
        migrations.RunPython(build_queued_messages, migrations.RunPython.noop, elidable=True),
        migrations.AddConstraint(
            model_name="outboundemail",
            constraint=models.CheckConstraint(
                condition=models.Q(("message", b""), _negated=True), name="outboundemail_message_built"
            ),
        ),
    ]
