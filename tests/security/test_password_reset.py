"""Staff password reset: mail through the outbox, a link that works once, rate limited."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import time_machine

from notifications.models import OutboundEmail

pytestmark = pytest.mark.django_db


def test_reset_mail_is_queued_with_a_site_url_link_that_sets_a_new_password(client, agent, settings):
    settings.SITE_URL = "https://rvi.example.org"
    response = client.post("/admin/password_reset/", {"email": "agent@staff.example"}, HTTP_HOST="localhost")
    assert response.status_code == 302
    mail = OutboundEmail.objects.get(template="staff-password-reset")
    assert mail.to == "agent@staff.example"
    link = re.search(r"https://rvi\.example\.org(/reset/\S+/)", mail.body_text).group(1)

    form = client.get(link, follow=True)
    assert form.status_code == 200
    new_password = "a-brand-new-long-password"
    done = client.post(
        form.redirect_chain[-1][0], {"new_password1": new_password, "new_password2": new_password}
    )
    assert done.status_code == 302
    agent.refresh_from_db()
    assert agent.check_password(new_password)
    assert client.get(link, follow=True).context["validlink"] is False


def test_unknown_address_gets_the_same_answer_and_no_mail(client):
    response = client.post("/admin/password_reset/", {"email": "nobody@staff.example"})
    assert response.status_code == 302
    assert not OutboundEmail.objects.filter(template="staff-password-reset").exists()


def test_reset_requests_are_rate_limited(client, agent):
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False):
        statuses = [
            client.post("/admin/password_reset/", {"email": "agent@staff.example"}).status_code
            for _ in range(4)
        ]
    assert statuses == [302, 302, 302, 429]


def test_sign_in_page_offers_the_reset_link(client):
    assert 'href="/admin/password_reset/"' in client.get("/admin/login/").content.decode()
