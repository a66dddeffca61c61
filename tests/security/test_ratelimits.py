"""Tiered rate limits: 429 with Retry-After, the client IP through trusted proxies only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from unittest import mock

import pytest
import time_machine
from django.test import Client

from evidence.models import Evidence
from evidence.validation import validate_upload
from iama_vetting import ratelimits
from iama_vetting.cache import FallbackCache
from tests.factories import JPEG_BYTES, PDF_BYTES, make_application, upload
from vetting import links

pytestmark = pytest.mark.django_db

# A fixed, minute-aligned start, so tiers are crossed on purpose, never by the clock.
START = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def clock():
    """Counting windows start at a per-key offset: a stopped clock keeps a test inside one."""
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def assert_rate_limited(response, *, within: int = 60):
    assert response.status_code == 429
    retry_after = int(response["Retry-After"])
    assert 1 <= retry_after <= within
    return retry_after


def test_application_post_is_limited_at_five_a_minute_with_our_429_page(client):
    for _ in range(5):
        assert client.post("/apply/", {}).status_code == 200
    refused = client.post("/apply/", {})
    assert_rate_limited(refused)
    assert "Too many requests" in refused.content.decode()
    assert refused["Content-Type"].startswith("text/html")


def test_hour_and_day_tiers_hold_after_the_minute_is_over(client, clock):
    for _minute in range(4):
        for _ in range(5):
            assert client.post("/apply/", {}).status_code == 200
        clock.shift(timedelta(minutes=1))
    # 20 in this hour: the minute is fresh, the hour is not.
    retry_after = assert_rate_limited(client.post("/apply/", {}), within=3600)
    assert retry_after > 60
    clock.move_to(START + timedelta(hours=1, minutes=1))
    for _hour in range(2):
        for _minute in range(4):
            for _ in range(5):
                client.post("/apply/", {})
            clock.shift(timedelta(minutes=1))
        clock.shift(timedelta(hours=1))
    # 50 today: only tomorrow's window lets this client in again.
    retry_after = assert_rate_limited(client.post("/apply/", {}), within=86400)
    assert retry_after > 3600


def test_a_client_over_the_minute_and_the_hour_at_once_is_told_the_hours_wait(client, clock):
    for _minute in range(3):
        for _ in range(5):
            assert client.post("/apply/", {}).status_code == 200
        clock.shift(timedelta(minutes=1))
    for _ in range(5):
        assert client.post("/apply/", {}).status_code == 200
    # Waiting out the minute would only meet the hour's refusal.
    assert assert_rate_limited(client.post("/apply/", {}), within=3600) > 60


def test_each_limit_is_the_one_the_readme_documents(settings):
    # The hour and day tiers of every view are too long to cross here one by one; operators read the table.
    section = (settings.BASE_DIR / "README.md").read_text().split("### Rate limits")[1].split("\n\n**")[0]
    documented = re.findall(r"^\|[^|]+\|[^|]+\| (\d+) / (\d+) / (\d+) \|", section, re.MULTILINE)
    assert [tuple(map(int, tiers)) for tiers in documented] == [
        (limit.per_minute, limit.per_hour, limit.per_day) for limit in ratelimits.ALL_LIMITS
    ]


def test_a_spoofed_forwarded_for_does_not_make_a_new_bucket(client, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for number in range(5):
        # nginx appends the address it saw; everything before it came from the client.
        response = client.post("/apply/", {}, HTTP_X_FORWARDED_FOR=f"10.9.9.{number}, 203.0.113.7")
        assert response.status_code == 200
    assert_rate_limited(client.post("/apply/", {}, HTTP_X_FORWARDED_FOR="10.9.9.200, 203.0.113.7"))
    # Another real client (another address seen by nginx) has its own bucket.
    assert client.post("/apply/", {}, HTTP_X_FORWARDED_FOR="203.0.113.8").status_code == 200


def test_without_trusted_proxies_forwarded_for_is_ignored(client, settings):
    settings.TRUSTED_PROXY_COUNT = 0
    for number in range(5):
        client.post("/apply/", {}, HTTP_X_FORWARDED_FOR=f"198.51.100.{number}")
    assert_rate_limited(client.post("/apply/", {}, HTTP_X_FORWARDED_FOR="198.51.100.99"))


@pytest.mark.parametrize(
    ("trusted", "forwarded", "remote", "client_ip"),
    [
        (0, "1.1.1.1", "127.0.0.1", "127.0.0.1"),
        (1, "1.1.1.1, 203.0.113.7", "127.0.0.1", "203.0.113.7"),
        (2, "1.1.1.1, 203.0.113.7, 10.0.0.2", "10.0.0.3", "203.0.113.7"),
        (1, "not-an-ip", "127.0.0.1", "127.0.0.1"),
        (1, "", "127.0.0.1", "127.0.0.1"),
        # A Unix-socket peer has no address: one shared bucket, not django-ratelimit's ValueError (a 500).
        (0, "", "", "0.0.0.0"),  # noqa: S104
        (1, "2001:db8::1", "::1", "2001:db8::1"),
        # A dual-stack listener shows IPv4 peers as IPv4-mapped IPv6 addresses.
        (0, "", "::ffff:203.0.113.5", "203.0.113.5"),
        (1, "::ffff:203.0.113.7", "::1", "203.0.113.7"),
        (1, "", "::ffff:127.0.0.1", "127.0.0.1"),
    ],
)
def test_client_ip_comes_through_trusted_hops_only(rf, settings, trusted, forwarded, remote, client_ip):
    settings.TRUSTED_PROXY_COUNT = trusted
    request = rf.get("/", HTTP_X_FORWARDED_FOR=forwarded, REMOTE_ADDR=remote)
    assert ratelimits.client_ip(request) == client_ip


@pytest.mark.parametrize(
    ("page", "per_minute"),
    [
        # The status page of a real application (a signed link).
        (lambda: f"/status/{links.status_token(make_application())}/", 30),
        # Guessing confirmation links: each guess counts, valid or not.
        (lambda: "/confirm/not-a-link-we-signed/", 10),
    ],
    ids=["status", "confirm"],
)
def test_the_applicant_link_pages_have_their_own_per_minute_limit(client, page, per_minute):
    path = page()
    for _ in range(per_minute):
        assert client.get(path).status_code != 429
    assert_rate_limited(client.get(path))
    # Another client is not held back.
    assert client.get(path, REMOTE_ADDR="198.51.100.9").status_code != 429


@pytest.mark.parametrize(
    ("suffix", "method"),
    [("withdraw/", "GET"), ("withdraw/", "POST"), ("my-data/", "GET"), ("erase/", "GET"), ("erase/", "POST")],
)
def test_the_pages_behind_a_status_link_share_its_per_minute_limit(client, suffix, method):
    status_path = f"/status/{links.status_token(make_application())}/"
    for _ in range(30):
        assert client.get(status_path).status_code != 429
    assert_rate_limited(client.generic(method, status_path + suffix))


def test_admin_login_is_limited_per_address(client, agent):
    for number in range(10):
        response = client.post("/admin/login/", {"username": f"someone{number}", "password": "wrong"})
        assert response.status_code == 200
    assert_rate_limited(
        client.post("/admin/login/", {"username": "agent", "password": "a-long-test-password"})
    )


def test_opening_the_sign_in_page_uses_up_no_sign_in_attempts(client, agent):
    for _ in range(ratelimits.ADMIN_LOGIN_PER_IP.per_minute + 1):
        assert client.get("/admin/login/").status_code == 200
    signed_in = client.post("/admin/login/", {"username": "agent", "password": "a-long-test-password"})
    assert signed_in.wsgi_request.user == agent


def fail_sign_ins_from_many_addresses(client, usernames: list[str]) -> None:
    for number, username in enumerate(usernames):
        client.post(
            "/admin/login/",
            {"username": username, "password": "wrong"},
            HTTP_X_FORWARDED_FOR=f"203.0.113.{number}",
        )


def assert_the_right_password_is_refused_from_a_new_address(client) -> None:
    refused = client.post(
        "/admin/login/",
        {"username": "agent", "password": "a-long-test-password"},
        HTTP_X_FORWARDED_FOR="203.0.113.99",
    )
    assert_rate_limited(refused)


def test_admin_login_is_limited_per_username_across_addresses(client, agent, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    fail_sign_ins_from_many_addresses(client, ["Agent"] * 5)
    assert_the_right_password_is_refused_from_a_new_address(client)
    # The sign-in page itself stays reachable.
    assert client.get("/admin/login/").status_code == 200


def test_look_alike_usernames_share_the_per_username_bucket(client, agent, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # Django's UsernameField NFKC-normalises before authenticating: full-width letters reach "agent".
    signed_in = client.post("/admin/login/", {"username": "ａｇｅｎｔ", "password": "a-long-test-password"})
    assert signed_in.wsgi_request.user == agent
    client.logout()
    fail_sign_ins_from_many_addresses(client, ["ａgent", "AGENT", "Ａｇｅｎｔ", " agent "])
    assert_the_right_password_is_refused_from_a_new_address(client)


def test_password_reset_is_limited_per_address_across_addresses(client, agent, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    for number, spelling in enumerate(["agent@staff.example", "AGENT@Staff.Example"]):
        response = client.post(
            "/admin/password_reset/", {"email": spelling}, HTTP_X_FORWARDED_FOR=f"203.0.113.{number}"
        )
        assert response.status_code == 302
    # Full-width letters are the same address to Django's reset form, and to the limit.
    assert_rate_limited(
        client.post(
            "/admin/password_reset/",
            {"email": "ａｇｅｎｔ@staff.example"},
            HTTP_X_FORWARDED_FOR="203.0.113.50",
        )
    )
    other = client.post(
        "/admin/password_reset/", {"email": "other@staff.example"}, HTTP_X_FORWARDED_FOR="203.0.113.51"
    )
    assert other.status_code == 302


@pytest.mark.parametrize(
    ("retry_after", "wait"),
    [(30, "wait a minute and"), (61, "wait 2 minutes and"), (3600, "wait 60 minutes and")],
)
def test_the_429_page_rounds_the_wait_up_to_whole_minutes_and_is_never_cached(rf, retry_after, wait):
    response = ratelimits.too_many_requests(rf.get("/apply/"), retry_after, limit_name="apply")
    assert wait in response.content.decode()
    assert response["Cache-Control"] == "no-store"


def test_a_refusal_in_the_last_second_of_its_window_still_asks_for_a_wait(rf):
    limit = ratelimits.Limit("new-view", per_minute=2, per_hour=None, per_day=None)
    view = ratelimits.rate_limited(limit)(lambda request: None)
    # django-ratelimit's time_left is 0 when the request falls on the window's end.
    refused = {"should_limit": True, "time_left": 0, "count": 3, "limit": 2}
    with mock.patch("iama_vetting.ratelimits.get_usage", return_value=refused):
        assert view(rf.get("/"))["Retry-After"] == "1"


def test_csp_report_endpoint_answers_json_429(client):
    for _ in range(60):
        client.post("/csp-report/", "{}", content_type="application/json")
    refused = client.post("/csp-report/", "{}", content_type="application/json")
    assert_rate_limited(refused)
    assert refused.json()["error"] == "rate_limited"
    assert refused.json()["retry_after"] == int(refused["Retry-After"])


def test_evidence_download_is_limited_per_user_not_per_address(agent, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    # As behind nginx: the app answers with X-Accel-Redirect, no file is held open.
    settings.EVIDENCE_X_ACCEL_PREFIX = "/_protected_evidence/"
    application = make_application()
    evidence = Evidence.objects.store(application, validate_upload(upload("id.pdf", PDF_BYTES)))
    browser = Client()
    browser.force_login(agent)
    for number in range(60):
        response = browser.get(f"/evidence/{evidence.pk}/", HTTP_X_FORWARDED_FOR=f"203.0.113.{number}")
        assert response.status_code == 200
    assert_rate_limited(browser.get(f"/evidence/{evidence.pk}/", HTTP_X_FORWARDED_FOR="203.0.113.250"))


def test_evidence_previews_are_limited_like_downloads(agent):
    # A 480-pixel thumbnail of an ID card is readable: a stolen session cannot page through them all.
    evidence = Evidence.objects.store(make_application(), validate_upload(upload("id.jpg", JPEG_BYTES)))
    browser = Client()
    browser.force_login(agent)
    for _ in range(60):
        assert browser.get(f"/evidence/{evidence.pk}/preview/").status_code == 200
    assert_rate_limited(browser.get(f"/evidence/{evidence.pk}/preview/"))


def test_every_other_anonymous_view_has_a_default_tier(client, settings):
    assert settings.RATELIMIT_DEFAULT_PER_MINUTE == 120
    for _ in range(120):
        assert client.get("/apply/done/").status_code == 200
    assert_rate_limited(client.get("/apply/done/"))
    assert_rate_limited(client.get("/apply/"))
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 1000
    assert client.get("/apply/").status_code == 200


def test_an_ipv6_client_cannot_leave_the_default_tier_by_changing_address_within_its_64(client, settings):
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 10
    for number in range(10):
        assert client.get("/apply/done/", REMOTE_ADDR=f"2001:db8:1:2::{number + 1:x}").status_code == 200
    # One /64 is one client, as in django-ratelimit's own tiers (RATELIMIT_IPV6_MASK).
    assert_rate_limited(client.get("/apply/done/", REMOTE_ADDR="2001:db8:1:2:ffff:ffff:ffff:fffe"))
    assert client.get("/apply/done/", REMOTE_ADDR="2001:db8:1:3::1").status_code == 200


def test_ipv4_clients_behind_a_dual_stack_listener_are_counted_apart(client, settings):
    # A listener on [::] shows each IPv4 client as ::ffff:a.b.c.d, and all of those lie in one /64.
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 10
    for _ in range(10):
        assert client.get("/apply/done/", REMOTE_ADDR="::ffff:203.0.113.5").status_code == 200
        assert (
            client.get("/confirm/not-a-link-we-signed/", REMOTE_ADDR="::ffff:203.0.113.5").status_code != 429
        )
    assert_rate_limited(client.get("/apply/done/", REMOTE_ADDR="::ffff:203.0.113.5"))
    assert_rate_limited(client.get("/confirm/not-a-link-we-signed/", REMOTE_ADDR="::ffff:203.0.113.5"))
    assert client.get("/apply/done/", REMOTE_ADDR="::ffff:198.51.100.9").status_code == 200
    assert client.get("/confirm/not-a-link-we-signed/", REMOTE_ADDR="::ffff:198.51.100.9").status_code != 429
    # The mapped address is the IPv4 client itself, however it reached us.
    assert_rate_limited(client.get("/apply/done/", REMOTE_ADDR="203.0.113.5"))


def test_paths_that_match_no_page_are_counted_in_the_default_tier(client):
    for number in range(60):
        assert client.get(f"/no-such-page-{number}/").status_code == 404
    for _ in range(60):
        # APPEND_SLASH's redirect, after Django has looked for the page without the slash.
        assert client.get("/apply").status_code == 301
    refused = client.get("/no-such-page/")
    assert_rate_limited(refused)
    assert refused["X-Frame-Options"] == "SAMEORIGIN"
    assert "Content-Security-Policy" in refused
    assert_rate_limited(client.get("/apply/"))


def test_the_default_tier_counts_every_method_not_only_get(client, settings):
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 3
    requests = [client.post, client.head, client.put, client.get]
    assert [send("/no-such-page/").status_code for send in requests] == [404, 404, 404, 429]


def test_the_admin_static_files_and_exempt_views_stay_out_of_the_default_tier(client, settings):
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 3
    # WhiteNoise reads the static root when the client's first request loads the middleware.
    (settings.STATIC_ROOT / "site.css").write_text("body {}")
    for _ in range(5):
        assert client.get("/static/site.css").status_code == 200
        assert client.get("/admin/login/").status_code == 200
        assert client.get("/admin/no-such-page/").status_code == 302
        assert client.get("/healthz").status_code == 200
    assert [client.get("/no-such-page/").status_code for _ in range(4)] == [404, 404, 404, 429]


def test_public_form_get_touches_no_session_no_database_and_counts_in_batches(
    client, django_assert_num_queries
):
    batch = ratelimits.default_tier_batch(120)
    assert batch == 7
    with (
        mock.patch("iama_vetting.ratelimits.get_usage") as per_view_tiers,
        mock.patch.object(
            FallbackCache, "hit_many_later", autospec=True, side_effect=FallbackCache.hit_many_later
        ) as sends,
        django_assert_num_queries(0),
    ):
        responses = [client.get("/apply/") for _ in range(batch - 1)]
        assert sends.call_count == 0
        responses.append(client.get("/apply/"))
    assert {response.status_code for response in responses} == {200}
    # One send for the whole batch, with the client's seven requests in it.
    assert sends.call_count == 1
    (_cache, counts, _timeout, _on_totals), _ = sends.call_args
    assert list(counts.values()) == [batch]
    assert per_view_tiers.call_count == 0
    # The public pages skip the session middleware altogether.
    assert not hasattr(responses[-1].wsgi_request, "session")
    assert "sessionid" not in responses[-1].cookies


def test_limits_are_per_client(client):
    for _ in range(5):
        client.post("/apply/", {})
    assert client.post("/apply/", {}).status_code == 429
    assert client.post("/apply/", {}, REMOTE_ADDR="198.51.100.4").status_code == 200


def test_the_decorator_line_for_new_views_counts_and_refuses(rf):
    limit = ratelimits.Limit("new-view", per_minute=2, per_hour=10, per_day=20)

    @ratelimits.rate_limited(limit)
    def view(request):
        from django.http import HttpResponse

        return HttpResponse("ok")

    assert [view(rf.get("/")).status_code for _ in range(3)] == [200, 200, 429]


def test_load_tests_can_switch_limits_off(client, settings):
    settings.RATELIMIT_ENABLE = False
    assert {client.post("/apply/", {}).status_code for _ in range(8)} == {200}
    # The default tier too.
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 3
    assert {client.get("/apply/done/").status_code for _ in range(5)} == {200}


def test_a_count_that_fails_after_the_response_is_logged_and_still_counted_in_the_process(
    client, settings, caplog
):
    settings.RATELIMIT_DEFAULT_PER_MINUTE = 3  # a batch of one: every request is sent
    with mock.patch.object(FallbackCache, "hit_many_later", side_effect=RuntimeError("store bug")):
        statuses = [client.get("/apply/").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert "Counting requests in the default rate-limit tier failed." in caplog.text
