"""The Matrix username rule (vetting.models.validate_matrix_localpart), length included.

Synapse caps only the whole user ID (255 characters with "@" and ":server");
we cap the username at MATRIX_LOCALPART_MAX_LENGTH (64), the length of the
fields that store it. Issuing an invitation checks a typed name with the
validator alone, with no form field's max_length in the way.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from vetting import workflow
from vetting.models import MATRIX_LOCALPART_MAX_LENGTH, Application, Invitation, validate_matrix_localpart


def test_the_cap_is_64_characters():
    assert MATRIX_LOCALPART_MAX_LENGTH == 64


@pytest.mark.parametrize("name", ["a" * 64, "alex." + "x" * 59, "=" * 64])
def test_a_username_of_64_characters_is_accepted(name):
    validate_matrix_localpart(name)


@pytest.mark.parametrize("length", [65, 300])
def test_a_username_longer_than_64_characters_is_refused_saying_so(length):
    with pytest.raises(ValidationError) as refused:
        validate_matrix_localpart("a" * length)
    assert refused.value.code == "localpart_too_long"
    assert refused.value.messages == [
        f"A Matrix username can have at most 64 characters (this one has {length})."
    ]


@pytest.mark.django_db
def test_issuing_an_invitation_for_a_300_character_username_is_refused_before_the_homeserver(
    approved, inviting_admin, fake_synapse
):
    with pytest.raises(workflow.WorkflowError, match="at most 64 characters"):
        workflow.issue_invitation(approved, inviting_admin, "a" * 300)
    approved.refresh_from_db()
    assert approved.status == Application.Status.APPROVED
    assert not Invitation.objects.exists()
    assert fake_synapse.server.requests == []
