import django.db.models.deletion
from django.db import migrations, models


def copy_answers_from_audit_trail(apps, schema_editor):
    """Answers sent before this migration live only in their audit events' details: copy them.

    Erased applications are skipped (their events' details are redacted
    anyway). The files sent with an old answer cannot be told apart from the
    others, so they stay in the evidence list only.
    """
    Application = apps.get_model("vetting", "Application")
    AuditEvent = apps.get_model("vetting", "AuditEvent")
    InformationReply = apps.get_model("vetting", "InformationReply")
    events = AuditEvent.objects.filter(
        target_type="application",
        action__in=["application.information_requested", "application.information_added"],
    ).order_by("id")
    kept = {str(pk) for pk in Application.objects.filter(erased_at__isnull=True).values_list("pk", flat=True)}
    last_question = {}
    copied = []
    for event in events.iterator(chunk_size=2000):
        if event.target_id not in kept:
            continue
        if event.action == "application.information_requested":
            last_question[event.target_id] = event.details.get("question", "")
            continue
        reply = InformationReply(
            application_id=int(event.target_id),
            question=last_question.get(event.target_id, ""),
            text=event.details.get("message", ""),
        )
        copied.append((reply, event.created_at))
    # auto_now_add stamps the rows on insert; put back the time each answer was sent.
    InformationReply.objects.bulk_create([reply for reply, _sent_at in copied])
    for reply, sent_at in copied:
        reply.created_at = sent_at
    InformationReply.objects.bulk_update(
        [reply for reply, _sent_at in copied], ["created_at"], batch_size=500
    )


class Migration(migrations.Migration):
    dependencies = [
        ("evidence", "0002_evidence_purged_at"),
        ("vetting", "0007_application_email_upper_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="InformationReply",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("question", models.TextField(blank=True, verbose_name="question")),
                ("text", models.TextField(blank=True, max_length=5000, verbose_name="answer")),
                ("created_at", models.DateTimeField(auto_now_add=True, verbose_name="sent at")),
                (
                    "application",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="information_replies",
                        to="vetting.application",
                    ),
                ),
                (
                    "evidence",
                    models.ManyToManyField(
                        blank=True,
                        related_name="+",
                        to="evidence.evidence",
                        verbose_name="evidence sent with it",
                    ),
                ),
            ],
            options={
                "verbose_name": "answer to a request for information",
                "verbose_name_plural": "answers to requests for information",
                "ordering": ["-created_at", "-id"],
            },
        ),
        # The rows go with the table on the way back.
        migrations.RunPython(copy_answers_from_audit_trail, migrations.RunPython.noop),
    ]
