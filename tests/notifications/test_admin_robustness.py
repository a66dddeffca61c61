"""The outbox list given a date-hierarchy value past year 9999: a bad filter, not a server error."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    "query", ["created_at__year=9999", "created_at__year=9999&created_at__month=12&created_at__day=31"]
)
def test_outbox_date_hierarchy_past_year_9999_is_a_bad_filter(client, superadmin, query):
    client.force_login(superadmin)
    client.raise_request_exception = False
    response = client.get(f"/admin/notifications/outboundemail/?{query}")
    assert response.status_code == 302
    # The list again with Django's "bad filter" flag, not the sign-in page.
    assert response["Location"] == "/admin/notifications/outboundemail/?e=1"
