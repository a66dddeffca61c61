"""Staff sign-in with a second factor (TOTP, backup codes) when STAFF_REQUIRE_2FA is on, and its reset."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import time_machine
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticDevice, StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from evidence.models import Evidence
from evidence.validation import validate_upload
from tests.factories import jpeg_bytes, make_application, upload
from tests.security.conftest import PRODUCTION_ENV, run_python
from vetting import workflow
from vetting.models import AuditEvent

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-test-password"


@pytest.fixture
def two_factor_required(settings):
    settings.STAFF_REQUIRE_2FA = True


def current_code(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, device.step, device.t0, device.digits):06d}"


def sign_in(client, username: str):
    return client.post(
        "/admin/login/?next=/admin/vetting/application/", {"username": username, "password": PASSWORD}
    )


def enrol(client, user) -> list[str]:
    sign_in(client, user.username)
    client.get("/admin/two-factor/setup/")
    device = TOTPDevice.objects.get(user=user)
    page = client.post("/admin/two-factor/setup/", {"token": current_code(device)}).content.decode()
    return re.findall(r"<li><code>([a-z2-7]+)</code></li>", page)


def test_production_requires_two_factor_by_default_and_development_does_not(tmp_path):
    script = (
        "import django; from django.conf import settings; django.setup(); print(settings.STAFF_REQUIRE_2FA)"
    )
    production = run_python(["-c", script], tmp_path, **PRODUCTION_ENV)
    assert production.stdout.strip() == "True", production.stderr
    development = run_python(["-c", script], tmp_path, DEBUG="true")
    assert development.stdout.strip() == "False", development.stderr


def test_a_password_alone_does_not_open_the_admin(client, agent, two_factor_required):
    waiting = make_application(full_name="Robin Queue-Example")
    signed_in = sign_in(client, "agent")
    assert signed_in.status_code == 302
    queue = client.get("/admin/vetting/application/", follow=True)
    assert queue.redirect_chain[-1][0].startswith("/admin/two-factor/setup/")
    page = queue.content.decode()
    assert waiting.full_name not in page and waiting.reference not in page
    assert client.get("/admin/vetting/application/").status_code == 302


def test_force_login_without_a_second_factor_is_refused_when_required(client, agent, two_factor_required):
    client.force_login(agent)
    assert client.get("/admin/vetting/application/").status_code == 302


def test_force_login_opens_the_admin_when_two_factor_is_off(client, agent, settings):
    settings.STAFF_REQUIRE_2FA = False
    client.force_login(agent)
    assert client.get("/admin/vetting/application/").status_code == 200


@pytest.fixture
def photo() -> Evidence:
    return Evidence.objects.store(
        make_application(), validate_upload(upload("id card.jpg", jpeg_bytes((600, 400))))
    )


@pytest.mark.parametrize("view", ["", "preview/"], ids=["download", "preview"])
def test_a_password_alone_does_not_open_evidence(client, agent, photo, two_factor_required, view):
    sign_in(client, "agent")
    url = f"/evidence/{photo.pk}/{view}"
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={url}"
    # The sign-in page sends the half-signed-in person on to their second step.
    followed = client.get(url, follow=True)
    assert followed.redirect_chain[-1][0].startswith("/admin/two-factor/setup/?next=")
    assert not AuditEvent.objects.filter(action__startswith="evidence.").exists()


@pytest.mark.parametrize("view", ["", "preview/"], ids=["download", "preview"])
def test_evidence_opens_after_the_second_step(client, agent, photo, two_factor_required, view):
    enrol(client, agent)
    response = client.get(f"/evidence/{photo.pk}/{view}")
    assert response.status_code == 200
    assert response["Cache-Control"] == "private, no-store"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_enrolment_shows_a_qr_code_and_then_ten_backup_codes_once(client, agent, two_factor_required):
    sign_in(client, "agent")
    setup = client.get("/admin/two-factor/setup/")
    page = setup.content.decode()
    assert setup.status_code == 200
    assert 'src="data:image/svg+xml' in page
    assert "no-store" in setup["Cache-Control"]
    device = TOTPDevice.objects.get(user=agent)
    assert not device.confirmed

    # A stopped clock from now on: the session must not expire on the way.
    with time_machine.travel(datetime.now(tz=UTC), tick=False) as clock:
        wrong = "000000" if current_code(device) != "000000" else "111111"
        refused = client.post("/admin/two-factor/setup/", {"token": wrong})
        assert "That code is not right" in refused.content.decode()
        clock.shift(5)  # django-otp makes a device wait a moment after a wrong code
        done = client.post(
            "/admin/two-factor/setup/", {"token": current_code(device), "next": "/admin/vetting/application/"}
        )
    codes = re.findall(r"<li><code>([a-z2-7]+)</code></li>", done.content.decode())
    assert len(codes) == 10
    assert "no-store" in done["Cache-Control"]
    device.refresh_from_db()
    assert device.confirmed
    assert client.get("/admin/vetting/application/").status_code == 200
    # Enrolled: the setup page no longer hands out a new key.
    assert client.get("/admin/two-factor/setup/").status_code == 302


def test_a_key_shown_to_another_session_before_enrolment_never_opens_the_account(
    client, agent, two_factor_required
):
    """Someone holding only the password opens the set-up page first: the key they copy
    must not be the one the person then enrols, or they could make codes for ever."""
    intruder = Client()
    sign_in(intruder, "agent")
    intruder.get("/admin/two-factor/setup/")
    copied = TOTPDevice.objects.get(user=agent)

    enrol(client, agent)
    enrolled = TOTPDevice.objects.get(user=agent)
    assert enrolled.confirmed
    assert enrolled.bin_key != copied.bin_key
    assert not TOTPDevice.objects.filter(pk=copied.pk).exists()
    refused = intruder.post("/admin/two-factor/", {"token": current_code(copied)})
    assert "That code is not right" in refused.content.decode()
    assert intruder.get("/admin/vetting/application/").status_code == 302


def test_reloading_the_set_up_page_keeps_the_key_being_scanned(client, agent, two_factor_required):
    sign_in(client, "agent")
    client.get("/admin/two-factor/setup/")
    scanned = TOTPDevice.objects.get(user=agent)
    reloaded = client.get("/admin/two-factor/setup/").content.decode()
    assert "The key changed" not in reloaded
    assert TOTPDevice.objects.get(user=agent) == scanned
    done = client.post("/admin/two-factor/setup/", {"token": current_code(scanned)})
    assert len(re.findall(r"<li><code>([a-z2-7]+)</code></li>", done.content.decode())) == 10


def test_a_key_replaced_by_another_set_up_page_is_refused_with_a_new_key_shown(
    client, agent, two_factor_required
):
    sign_in(client, "agent")
    client.get("/admin/two-factor/setup/")
    first = TOTPDevice.objects.get(user=agent)
    other_tab = Client()
    sign_in(other_tab, "agent")
    other_tab.get("/admin/two-factor/setup/")

    page = client.post("/admin/two-factor/setup/", {"token": current_code(first)})
    assert "The key changed" in page.content.decode()
    assert not TOTPDevice.objects.filter(confirmed=True).exists()
    # The key now shown is this session's own, and it enrols.
    shown = TOTPDevice.objects.get(user=agent)
    assert shown.pk != first.pk
    done = client.post("/admin/two-factor/setup/", {"token": current_code(shown)})
    assert len(re.findall(r"<li><code>([a-z2-7]+)</code></li>", done.content.decode())) == 10


def test_next_sign_in_asks_for_the_code_and_accepts_it(client, agent, two_factor_required):
    enrol(client, agent)
    client.logout()
    sign_in(client, "agent")
    prompt = client.get("/admin/", follow=True)
    assert prompt.redirect_chain[-1][0].startswith("/admin/two-factor/?")
    device = TOTPDevice.objects.get(user=agent)
    # Codes are single-use: wait for the next time step by rewinding the device's record of the last one.
    device.last_t = -1
    device.save()
    verified = client.post(
        "/admin/two-factor/?next=/admin/vetting/application/", {"token": current_code(device)}
    )
    assert verified.status_code == 302
    assert verified["Location"] == "/admin/vetting/application/"
    assert client.get("/admin/vetting/application/").status_code == 200


def test_a_backup_code_works_once(client, agent, two_factor_required):
    codes = enrol(client, agent)
    client.logout()
    sign_in(client, "agent")
    assert client.post("/admin/two-factor/", {"token": codes[0]}).status_code == 302
    assert client.get("/admin/").status_code == 200
    assert StaticToken.objects.filter(token=codes[0]).count() == 0
    client.logout()
    sign_in(client, "agent")
    again = client.post("/admin/two-factor/", {"token": codes[0]})
    assert again.status_code == 200
    assert "That code is not right" in again.content.decode()
    trail = list(
        AuditEvent.objects.filter(action__startswith="user.second_factor")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert trail == ["user.second_factor_enrolled", "user.second_factor_passed", "user.second_factor_failed"]
    assert codes[0] not in str(list(AuditEvent.objects.values_list("details", flat=True)))


def test_a_right_code_right_after_a_wrong_one_is_told_to_wait_not_called_wrong(
    client, agent, two_factor_required
):
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False) as clock:
        enrol(client, agent)
        client.logout()
        clock.shift(60)  # past the time step of the code used to enrol
        sign_in(client, "agent")
        device = TOTPDevice.objects.get(user=agent)
        wrong = "000000" if current_code(device) != "000000" else "111111"
        assert (
            "That code is not right" in client.post("/admin/two-factor/", {"token": wrong}).content.decode()
        )

        # django-otp now makes every device wait a second, whatever code comes.
        waiting = client.post("/admin/two-factor/", {"token": current_code(device)})
        assert waiting.status_code == 200
        page = waiting.content.decode()
        assert "Too many wrong codes: wait 1 second, then enter the code your app shows then." in page
        assert "That code is not right" not in page

        clock.shift(1)
        passed = client.post("/admin/two-factor/", {"token": current_code(device)})
    assert passed.status_code == 302
    trail = AuditEvent.objects.filter(action__startswith="user.second_factor").order_by("id")
    # Only the one wrong code counts as a failure: the refused right one was never checked.
    assert list(trail.values_list("action", flat=True)) == [
        "user.second_factor_enrolled",
        "user.second_factor_failed",
        "user.second_factor_passed",
    ]


def test_the_set_up_page_also_says_to_wait_after_a_wrong_code(client, agent, two_factor_required):
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False) as clock:
        sign_in(client, "agent")
        client.get("/admin/two-factor/setup/")
        device = TOTPDevice.objects.get(user=agent)
        wrong = "000000" if current_code(device) != "000000" else "111111"
        client.post("/admin/two-factor/setup/", {"token": wrong})

        page = client.post("/admin/two-factor/setup/", {"token": current_code(device)}).content.decode()
        assert "Too many wrong codes: wait 1 second, then enter the code your app shows then." in page

        clock.shift(1)
        done = client.post("/admin/two-factor/setup/", {"token": current_code(device)}).content.decode()
    assert len(re.findall(r"<li><code>([a-z2-7]+)</code></li>", done)) == 10


def test_code_guessing_is_rate_limited_per_user_from_any_address(
    client, agent, two_factor_required, settings
):
    settings.TRUSTED_PROXY_COUNT = 1
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False):
        enrol(client, agent)  # the first of five codes this minute
        client.logout()
        sign_in(client, "agent")
        statuses = [
            client.post(
                "/admin/two-factor/", {"token": "12345678"}, HTTP_X_FORWARDED_FOR=f"203.0.113.{number}"
            ).status_code
            for number in range(5)
        ]
    assert statuses == [200] * 4 + [429]


def test_half_signed_in_staff_can_sign_out(client, agent, two_factor_required):
    sign_in(client, "agent")
    signed_out = client.post("/admin/two-factor/sign-out/")
    assert signed_out.status_code == 302
    assert client.get("/admin/two-factor/").status_code == 302
    assert "_auth_user_id" not in client.session


def test_opening_the_sign_out_address_signs_nobody_out(client, agent, two_factor_required):
    # Only the page's POST: a link or an image elsewhere must not end the session.
    sign_in(client, "agent")
    assert client.get("/admin/two-factor/sign-out/").status_code == 405
    assert client.session["_auth_user_id"] == str(agent.pk)


def test_two_factor_pages_need_a_signed_in_staff_member(client, django_user_model, two_factor_required):
    assert client.get("/admin/two-factor/setup/")["Location"].startswith("/admin/login/")
    django_user_model.objects.create_user("member", password=PASSWORD)
    client.login(username="member", password=PASSWORD)
    assert client.get("/admin/two-factor/setup/")["Location"].startswith("/admin/login/")
    assert not TOTPDevice.objects.exists()


def test_next_never_leaves_the_site(client, agent, two_factor_required):
    sign_in(client, "agent")
    client.get("/admin/two-factor/setup/")
    device = TOTPDevice.objects.get(user=agent)
    response = client.post(
        "/admin/two-factor/setup/", {"token": current_code(device), "next": "https://evil.example/"}
    )
    assert "evil.example" not in response.content.decode()
    assert 'href="/admin/"' in response.content.decode()


def test_the_production_setting_is_a_boolean_like_every_other(tmp_path):
    result = run_python(
        ["-c", "import django; django.setup()"], tmp_path, **PRODUCTION_ENV, STAFF_REQUIRE_2FA="yes"
    )
    assert result.returncode != 0
    assert "STAFF_REQUIRE_2FA must be 'true' or 'false'" in result.stderr


# Managing others' second factor ----------------------------------------------

STAFF_LIST = "/admin/auth/user/"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/otp_totp/totpdevice/",
        "/admin/otp_totp/totpdevice/add/",
        "/admin/otp_totp/totpdevice/{totp}/change/",
        "/admin/otp_totp/totpdevice/{totp}/config/",
        "/admin/otp_static/staticdevice/",
        "/admin/otp_static/staticdevice/add/",
        "/admin/otp_static/staticdevice/{static}/change/",
    ],
)
def test_nobody_sees_or_edits_someone_elses_keys_and_backup_codes_in_the_admin(
    client, agent, superadmin, two_factor_required, path
):
    codes = enrol(client, agent)
    totp_device = TOTPDevice.objects.get(user=agent)
    static_device = StaticDevice.objects.get(user=agent)
    admin = Client()
    enrol(admin, superadmin)

    response = admin.get(path.format(totp=totp_device.pk, static=static_device.pk))

    assert response.status_code == 404
    index = admin.get("/admin/").content.decode()
    assert "otp_totp" not in index and "otp_static" not in index
    for secret in [totp_device.key, *codes]:
        assert secret not in response.content.decode() + index


def test_a_superadmin_resets_a_lost_second_factor_in_one_audited_step(
    client, agent, superadmin, two_factor_required
):
    codes = enrol(client, agent)
    key = TOTPDevice.objects.get(user=agent).key
    admin = Client()
    enrol(admin, superadmin)
    assert "set up" in admin.get(STAFF_LIST).content.decode()

    done = admin.post(
        STAFF_LIST, {"action": "reset_second_factor", "_selected_action": [agent.pk]}, follow=True
    )

    assert "second factor was reset" in done.content.decode()
    assert not TOTPDevice.objects.filter(user=agent).exists()
    assert not StaticDevice.objects.filter(user=agent).exists()
    assert not StaticToken.objects.filter(token__in=codes).exists()
    assert TOTPDevice.objects.filter(user=superadmin).exists()
    event = AuditEvent.objects.get(action="staff.second_factor_reset")
    assert (event.actor, event.target_type, event.target_id) == (superadmin, "user", str(agent.pk))
    for secret in [key, *codes]:
        assert secret not in str(event.details)
    # The agent's session lost its second step with the device: they enrol again.
    enrolling = client.get("/admin/vetting/application/", follow=True)
    assert enrolling.redirect_chain[-1][0].startswith("/admin/two-factor/setup/")
    client.logout()
    sign_in(client, "agent")
    assert client.get("/admin/", follow=True).redirect_chain[-1][0].startswith("/admin/two-factor/setup/")


def test_only_a_superadmin_may_reset_a_second_factor(client, agent, server_admin, two_factor_required):
    enrol(client, agent)
    admin = Client()
    enrol(admin, server_admin)
    events = AuditEvent.objects.count()

    page = admin.get(STAFF_LIST).content.decode()
    admin.post(STAFF_LIST, {"action": "reset_second_factor", "_selected_action": [agent.pk]})

    assert "reset_second_factor" not in page
    with pytest.raises(workflow.WorkflowError, match="Only a superadmin"):
        workflow.reset_second_factor(agent, server_admin)
    assert TOTPDevice.objects.filter(user=agent).exists() and StaticDevice.objects.filter(user=agent).exists()
    assert AuditEvent.objects.count() == events


def test_the_staff_list_shows_who_has_set_up_a_second_factor(client, agent, second_agent, superadmin):
    TOTPDevice.objects.create(user=agent, name="Authenticator app", confirmed=True)
    TOTPDevice.objects.create(user=second_agent, name="Authenticator app", confirmed=False)
    client.force_login(superadmin)
    rows = re.findall(r"<tr>.*?</tr>", client.get(STAFF_LIST).content.decode(), re.S)
    [agent_row] = [row for row in rows if ">agent<" in row]
    [second_row] = [row for row in rows if ">second_agent<" in row]
    assert "set up" in agent_row and "not set up" not in agent_row
    assert "not set up" in second_row
