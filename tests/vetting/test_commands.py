from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import authenticate, get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def test_dev_superuser_is_created_once_with_a_random_password_shown_once(settings):
    settings.DEBUG = True
    out = StringIO()
    call_command("create_dev_superuser", stdout=out)
    password = re.search(r"with password (\S+)", out.getvalue()).group(1)
    assert authenticate(username="admin", password=password).is_superuser

    again = StringIO()
    call_command("create_dev_superuser", stdout=again)
    assert password not in again.getvalue()
    assert "a superuser exists" in again.getvalue()
    assert get_user_model().objects.filter(is_superuser=True).count() == 1


def test_dev_superuser_is_refused_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(CommandError, match="only with DEBUG=true"):
        call_command("create_dev_superuser")
    assert not get_user_model().objects.exists()
