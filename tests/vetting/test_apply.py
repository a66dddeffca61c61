from __future__ import annotations

import hashlib
import re
import threading
from base64 import urlsafe_b64decode
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import time_machine
from django.core import mail, signing
from django.db import OperationalError, connections
from django.db.backends.utils import CursorWrapper

from evidence.models import Evidence
from evidence.storage import EvidenceStorage
from notifications.models import OutboundEmail
from tests.evidence.test_storage import S3_ERROR_IDS, S3_ERRORS, FailingS3Storage
from tests.evidence.test_validation import ole_bytes
from tests.factories import HTML_BYTES, PDF_BYTES, TEXT_BYTES, png_bytes, upload
from vetting.models import Application
from vetting.views import DONE_SALT

pytestmark = pytest.mark.django_db


def form_data(**overrides) -> dict:
    data = {
        "full_name": "Alex Example",
        "email": "alex@applicant.example",
        "matrix_username": "alex.example",
        "phone": "+351 900 000 000",
        "referral": "Sam from the Lisbon meetup",
        "statement": "I organise the local chapter and want to coordinate here.",
        "consent": "on",
        "website": "",
    }
    data.update(overrides)
    return data


def files_on_disk(settings) -> list[Path]:
    root = Path(settings.EVIDENCE_ROOT)
    return [path for path in root.rglob("*") if path.is_file()] if root.exists() else []


def test_form_is_served_at_root_and_apply_with_every_field(client):
    for url in ["/", "/apply/"]:
        response = client.get(url)
        assert response.status_code == 200
        page = response.content.decode()
        for name in [
            "full_name",
            "email",
            "matrix_username",
            "phone",
            "referral",
            "statement",
            "consent",
            "website",
        ]:
            assert f'name="{name}"' in page
        for slot in range(1, 6):
            assert f'name="evidence_{slot}"' in page
            assert f'name="note_{slot}"' in page
        assert 'name="csrfmiddlewaretoken"' in page
        assert 'enctype="multipart/form-data"' in page


def test_valid_application_with_evidence_is_stored_and_shows_reference(client, settings):
    pdf = upload("passport scan.pdf", PDF_BYTES)
    response = client.post(
        "/apply/", form_data(evidence_1=pdf, note_1="front page", evidence_2=upload("me.png", png_bytes()))
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/apply/done/?r=")

    application = Application.objects.get()
    assert application.status == Application.Status.UNCONFIRMED
    assert application.source == Application.Source.PUBLIC
    assert application.consent_given_at is not None
    assert application.matrix_username == "alex.example"
    evidence = list(application.evidence.order_by("original_name"))
    assert [item.original_name for item in evidence] == ["me.png", "passport scan.pdf"]
    stored_pdf = evidence[1]
    assert stored_pdf.note == "front page"
    assert stored_pdf.content_type == "application/pdf"
    assert stored_pdf.sha256 == hashlib.sha256(PDF_BYTES).hexdigest()
    assert stored_pdf.file.name == f"{stored_pdf.pk.hex[:2]}/{stored_pdf.pk}.pdf"
    assert (Path(settings.EVIDENCE_ROOT) / stored_pdf.file.name).read_bytes() == PDF_BYTES

    done = client.get(response["Location"])
    assert application.reference in done.content.decode()


def test_application_queues_received_mail_with_confirm_and_status_links(client, settings):
    client.post("/apply/", form_data(evidence_1=upload("a.pdf", PDF_BYTES)))
    application = Application.objects.get()
    received = OutboundEmail.objects.get()
    assert received.template == "application-received"
    assert received.to == "alex@applicant.example"
    assert application.reference in received.subject
    assert application.reference in received.body_text
    assert "http://testserver/confirm/" not in received.body_text
    assert f"{settings.SITE_URL}/confirm/" in received.body_text
    assert f"{settings.SITE_URL}/status/" in received.body_text
    # No mail carries the statement or the evidence (every mail: tests/notifications/test_mail_privacy.py).
    assert "local chapter" not in received.body_text + received.body_html
    assert "a.pdf" not in received.body_text + received.body_html
    # Staff hear of it only once the applicant confirms.
    assert not OutboundEmail.objects.filter(template="staff-new-application").exists()
    # Queued, not sent: delivery is the outbox's job.
    assert mail.outbox == []


def test_done_page_with_tampered_reference_shows_no_reference(client):
    response = client.get("/apply/done/?r=ABCDEFGH:forged")
    assert response.status_code == 200
    assert "ABCDEFGH" not in response.content.decode()


def test_the_done_page_shows_the_address_masked_and_the_link_never_carries_it_whole(client):
    response = client.post("/apply/", form_data(email="robin.mistyped@applicant.example"))
    signed = parse_qs(urlsplit(response["Location"]).query)["r"][0]
    # The signed value is readable by anyone who has the URL (browser history).
    payload = urlsafe_b64decode(signed.split(":")[0] + "==").decode()
    assert "@applicant.example" in payload and "robin" not in payload
    page = client.get(response["Location"]).content.decode()
    assert "We sent it to <strong>r…@applicant.example</strong>" in page
    assert "robin.mistyped" not in page
    assert "If you mistyped your address" in page


def test_a_done_link_signed_before_it_carried_the_address_shows_no_reference(client):
    # Signed with the reference alone (links up to an hour old when this changed).
    signed = signing.dumps("ABCDEFGH", salt=DONE_SALT)
    response = client.get(f"/apply/done/?r={signed}")
    assert response.status_code == 200
    page = response.content.decode()
    assert "ABCDEFGH" not in page and "We sent it to" not in page
    assert "We have sent your reference to you by e-mail." in page


def test_a_done_link_older_than_an_hour_shows_neither_reference_nor_address(client):
    with time_machine.travel(datetime(2026, 3, 2, 9, 0, tzinfo=UTC), tick=False) as clock:
        response = client.post("/apply/", form_data(email="robin@applicant.example"))
        reference = Application.objects.get().reference
        assert reference in client.get(response["Location"]).content.decode()
        # The link stays in the browser's history: after an hour it shows nothing of the application.
        clock.shift(timedelta(hours=1, seconds=1))
        page = client.get(response["Location"])
    assert page.status_code == 200
    assert reference not in page.content.decode()
    assert "r…@applicant.example" not in page.content.decode()


def test_a_bot_s_long_address_is_cut_before_it_goes_into_the_url(client):
    response = client.post("/apply/", form_data(website="spam", email="x" * 10_000 + "@spam.example"))
    assert response.status_code == 302
    assert len(response["Location"]) < 1000


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("full_name", "Enter your full name."),
        ("email", "Enter your e-mail address."),
        ("referral", "Tell us who referred you, or how you know the community."),
        ("statement", "Tell us why you want to join."),
    ],
)
def test_missing_required_field_shows_error_and_stores_nothing(client, settings, missing, message):
    response = client.post("/apply/", form_data(**{missing: "", "evidence_1": upload("a.pdf", PDF_BYTES)}))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Application.objects.exists()
    assert not OutboundEmail.objects.exists()
    assert files_on_disk(settings) == []


def test_missing_consent_is_refused_with_a_clear_message(client):
    data = form_data()
    del data["consent"]
    response = client.post("/apply/", data)
    assert response.status_code == 200
    assert "You must accept the privacy notice to apply." in response.content.decode()
    assert not Application.objects.exists()


def test_invalid_email_is_refused(client):
    response = client.post("/apply/", form_data(email="not-an-address"))
    assert "Enter an e-mail address like name@example.org." in response.content.decode()
    assert not Application.objects.exists()


@pytest.mark.parametrize(
    "email",
    [
        "alex@ex\ufffdample.org",  # a character IDNA refuses
        "alex@x\u05de.example",  # one label mixing Hebrew and Latin letters
        "alex@" + "\u00e4" * 63 + ".de",  # 63 characters, too long once encoded
    ],
    ids=["replacement-character", "hebrew-and-latin-label", "63-char-non-ascii-label"],
)
def test_an_address_django_accepts_but_mail_cannot_carry_is_refused_and_nothing_is_kept(
    client, settings, email
):
    response = client.post("/apply/", form_data(email=email, evidence_1=upload("a.pdf", PDF_BYTES)))
    assert response.status_code == 200
    assert "Enter an e-mail address like name@example.org." in response.content.decode()
    assert not Application.objects.exists()
    assert not OutboundEmail.objects.exists()
    assert files_on_disk(settings) == []


@pytest.mark.parametrize("mark", ["\u200e", "\u200f", "\u200d"], ids=["lrm", "rlm", "zwj"])
def test_an_invisible_mark_pasted_with_the_address_is_dropped(client, mark):
    response = client.post("/apply/", form_data(email=f"{mark}alex@applicant.exa{mark}mple{mark}"))
    assert response.status_code == 302
    assert Application.objects.get().email == "alex@applicant.example"
    assert OutboundEmail.objects.get(template="application-received").to == "alex@applicant.example"


def test_a_statement_the_browser_allowed_with_its_line_breaks_as_crlf_is_kept_with_lf(client):
    # What a browser sends for a textarea with maxlength="5000" holding 5000
    # characters, 50 of them line breaks: it counts each as one, and sends CRLF.
    typed = "\n".join(["x" * 97] * 50 + ["x" * 100])
    assert (len(typed), typed.count("\n")) == (5000, 50)
    response = client.post("/apply/", form_data(statement=typed.replace("\n", "\r\n")))
    assert response.status_code == 302
    assert Application.objects.get().statement == typed


def test_a_referral_with_lone_carriage_returns_is_kept_with_lf(client):
    typed = "\n".join(["y" * 199] * 10)
    assert len(typed) == 1999
    response = client.post("/apply/", form_data(referral=typed.replace("\n", "\r")))
    assert response.status_code == 302
    assert Application.objects.get().referral == typed


def test_a_statement_over_the_limit_after_normalising_is_still_refused(client):
    response = client.post("/apply/", form_data(statement="x" * 4999 + "\r\n" + "x"))
    assert response.status_code == 200
    assert "at most 5000 characters (it has 5001)" in response.content.decode()
    assert not Application.objects.exists()


@pytest.mark.parametrize(
    "username", ["has space", "Ünïcode", "alex:example.org", "_reserved", "a" * 65, "semi;colon"]
)
def test_matrix_username_outside_localpart_grammar_is_refused(client, username):
    response = client.post("/apply/", form_data(matrix_username=username))
    assert response.status_code == 200
    assert 'id="id_matrix_username_error"' in response.content.decode()
    assert not Application.objects.exists()


@pytest.mark.parametrize(
    ("typed", "stored"), [("@Alex.Example", "alex.example"), ("sam=1/2+x_y-z", "sam=1/2+x_y-z"), ("", "")]
)
def test_matrix_username_is_normalised_to_a_localpart(client, typed, stored):
    client.post("/apply/", form_data(matrix_username=typed))
    assert Application.objects.get().matrix_username == stored


@pytest.mark.parametrize(
    "typed", ["@Alex.Smith:example.org", "@alex.smith:Example.ORG", " alex.smith:example.org "]
)
def test_a_user_id_on_this_community_s_server_is_kept_as_its_username(client, settings, typed):
    settings.MATRIX_SERVER_NAME = "example.org"
    response = client.post("/apply/", form_data(matrix_username=typed))
    assert response.status_code == 302
    assert Application.objects.get().matrix_username == "alex.smith"


def test_the_server_name_defaults_to_the_homeserver_s_host_for_the_username_too(client, settings):
    settings.MATRIX_SERVER_NAME = ""
    settings.MATRIX_HOMESERVER_URL = "https://example.org"
    client.post("/apply/", form_data(matrix_username="@alex.smith:example.org"))
    assert Application.objects.get().matrix_username == "alex.smith"


@pytest.mark.parametrize(
    ("server_name", "message"),
    [
        (
            "example.org",
            "“matrix.org” is another server: type the username you would like on this community&#x27;s "
            "server, example.org, e.g. alex.smith.",
        ),
        ("", "Type only the username you would like, without “:matrix.org”, e.g. alex.smith."),
    ],
    ids=["server-known", "server-not-configured"],
)
def test_a_user_id_on_another_server_is_refused_saying_so(client, settings, server_name, message):
    settings.MATRIX_SERVER_NAME = server_name
    settings.MATRIX_HOMESERVER_URL = ""
    response = client.post("/apply/", form_data(matrix_username="@alex.smith:matrix.org"))
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Application.objects.exists()


@pytest.mark.parametrize("typed", ["Alex Smith", "alex@example.org", "@", "@:example.org"])
def test_a_username_outside_the_grammar_is_refused_in_words_true_for_this_field(client, settings, typed):
    settings.MATRIX_SERVER_NAME = "example.org"
    response = client.post("/apply/", form_data(matrix_username=typed))
    page = response.content.decode()
    assert "Use only letters a–z, digits 0–9 and the characters . _ = - / + (no spaces)." in page
    # The field takes "@" and ":example.org" off, and capitals down: it says none of them is refused.
    assert "no @" not in page and ":server part" not in page
    assert not Application.objects.exists()


def test_the_username_hint_does_not_ask_for_lowercase_letters_it_makes_itself(client):
    page = client.get("/apply/").content.decode()
    assert "Letters a–z, digits 0–9 and . _ = - / +, e.g. alex.smith" in page
    assert "Lowercase" not in page


def test_filled_honeypot_looks_like_success_and_stores_nothing(client, settings):
    response = client.post(
        "/apply/", form_data(website="http://spam.example", evidence_1=upload("a.pdf", PDF_BYTES))
    )
    assert response.status_code == 302
    assert response["Location"].startswith("/apply/done/?r=")
    done = client.get(response["Location"])
    assert "Your reference" in done.content.decode()
    assert "We sent it to <strong>a…@applicant.example</strong>" in done.content.decode()
    assert not Application.objects.exists()
    assert not OutboundEmail.objects.exists()
    assert files_on_disk(settings) == []


def test_spoofed_evidence_is_refused_naming_the_file_and_stores_nothing(client, settings):
    response = client.post(
        "/apply/",
        form_data(evidence_1=upload("good.pdf", PDF_BYTES), evidence_2=upload("cv.pdf", HTML_BYTES)),
    )
    assert response.status_code == 200
    assert "“cv.pdf” does not contain what its name says" in response.content.decode()
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []


def test_sixth_file_is_refused_with_a_clear_message(client, settings):
    files = {f"evidence_{slot}": upload(f"f{slot}.txt", TEXT_BYTES) for slot in range(1, 6)}
    files["evidence_6"] = upload("f6.txt", TEXT_BYTES)
    response = client.post("/apply/", form_data(**files))
    assert response.status_code == 200
    assert "You can attach at most 5 files at a time; you sent 6." in response.content.decode()
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []


def test_far_more_files_than_the_form_takes_are_refused_outright(client):
    # Beyond DATA_UPLOAD_MAX_NUMBER_FILES Django stops reading: no temporary file for every part.
    files = {f"evidence_{slot}": upload(f"f{slot}.txt", TEXT_BYTES) for slot in range(1, 12)}
    response = client.post("/apply/", form_data(**files))
    assert response.status_code == 400
    assert not Application.objects.exists()


def test_five_files_are_accepted(client):
    files = {f"evidence_{slot}": upload(f"f{slot}.txt", TEXT_BYTES) for slot in range(1, 6)}
    assert client.post("/apply/", form_data(**files)).status_code == 302
    assert Evidence.objects.count() == 5


def test_16_mb_plus_one_byte_gets_the_form_with_a_message_not_413(client, settings):
    big = TEXT_BYTES + b"a" * (16 * 1024 * 1024 + 1 - len(TEXT_BYTES))
    response = client.post("/apply/", form_data(evidence_1=upload("big.txt", big)))
    assert response.status_code == 200
    assert "“big.txt” is too large: each file may be at most 16 MB." in response.content.decode()
    assert not Application.objects.exists()


@pytest.mark.parametrize(
    ("uploaded_name", "shown"),
    [
        ("../../x.pdf", "x.pdf"),
        ("a" * 300 + ".pdf", "a" * 251 + ".pdf"),
        ("Ωmega paßport – 身分証.pdf", "Ωmega paßport – 身分証.pdf"),
        ('"><img src=x onerror=alert(1)>.pdf', '"><img src=x onerror=alert(1)>.pdf'),
        ("<b>x</b>.pdf", "b>.pdf"),
    ],
)
def test_odd_file_names_never_become_paths(client, settings, uploaded_name, shown):
    assert client.post("/apply/", form_data(evidence_1=upload(uploaded_name, PDF_BYTES))).status_code == 302
    evidence = Evidence.objects.get()
    assert evidence.original_name == shown
    assert evidence.file.name == f"{evidence.pk.hex[:2]}/{evidence.pk}.pdf"
    [stored] = files_on_disk(settings)
    assert stored.resolve().is_relative_to(Path(settings.EVIDENCE_ROOT).resolve())


def test_nothing_is_left_behind_when_storing_the_second_of_three_files_fails(client, settings):
    real_save = EvidenceStorage._save
    calls = []

    def fail_on_second(storage, name, content):
        calls.append(name)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_save(storage, name, content)

    files = {f"evidence_{slot}": upload(f"f{slot}.pdf", PDF_BYTES) for slot in range(1, 4)}
    with mock.patch.object(EvidenceStorage, "_save", fail_on_second):
        response = client.post("/apply/", form_data(**files))
    assert response.status_code == 503
    assert "We could not store your files just now, so nothing was kept." in response.content.decode()
    assert len(calls) == 2
    assert not Application.objects.exists()
    assert not Evidence.objects.exists()
    assert not OutboundEmail.objects.exists()
    assert files_on_disk(settings) == []


def test_a_word_document_whose_directory_lies_past_64_kb_is_accepted(client):
    letter = ole_bytes("WordDocument", 100_000)
    assert client.post("/apply/", form_data(evidence_1=upload("letter.doc", letter))).status_code == 302
    evidence = Evidence.objects.get()
    assert evidence.content_type == "application/msword"
    assert evidence.size == len(letter)


@pytest.mark.parametrize("error", S3_ERRORS, ids=S3_ERROR_IDS)
def test_an_s3_failure_gets_the_friendly_message_and_keeps_nothing(client, monkeypatch, error):
    monkeypatch.setattr(Evidence._meta.get_field("file"), "storage", FailingS3Storage(error))
    response = client.post("/apply/", form_data(evidence_1=upload("id.pdf", PDF_BYTES)))
    assert response.status_code == 503
    page = response.content.decode()
    assert "We could not store your files just now, so nothing was kept." in page
    assert "Choose your files again" in page
    assert not Application.objects.exists()
    assert not OutboundEmail.objects.exists()


def test_a_note_without_its_file_is_an_error_on_that_note_and_stores_nothing(client):
    response = client.post("/apply/", form_data(note_1="My passport", note_3=" "))
    assert response.status_code == 200
    page = response.content.decode()
    assert page.count("Note 1 has no file: choose the file it describes, or clear the note.") == 2
    assert '<a href="#id_note_1">' in page
    assert 'id="id_note_1_error"' in page
    assert "Note 3" not in page  # a blank note is no note
    assert not Application.objects.exists()


def test_a_note_longer_than_the_500_characters_kept_is_refused_and_stores_nothing(client, settings):
    response = client.post("/apply/", form_data(evidence_1=upload("id.pdf", PDF_BYTES), note_1="x" * 501))
    assert response.status_code == 200
    assert "at most 500 characters (it has 501)" in response.content.decode()
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []


def test_after_an_error_the_form_asks_to_choose_the_chosen_files_again_naming_them(client, settings):
    response = client.post(
        "/apply/",
        form_data(
            statement="",
            evidence_1=upload("passport.pdf", PDF_BYTES),
            note_1="front page",
            evidence_2=upload("<img src=x>.txt", TEXT_BYTES),
        ),
    )
    assert response.status_code == 200
    page = response.content.decode()
    assert (
        '<a href="#id_evidence_1">Choose your files again: they are not kept when the form has a problem.</a>'
        in page
    )
    assert "You had chosen: passport.pdf, &lt;img src=x&gt;.txt." in page
    assert "<img src=x>" not in page
    assert 'value="front page"' in page  # the note is kept, beside the file to choose again
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []


def test_an_error_without_chosen_files_does_not_ask_for_files(client):
    page = client.post("/apply/", form_data(statement="")).content.decode()
    assert "Tell us why you want to join." in page
    assert "Choose your files again" not in page


def test_nothing_is_left_behind_when_the_transaction_fails_after_all_files(client, settings):
    files = {f"evidence_{slot}": upload(f"f{slot}.pdf", PDF_BYTES) for slot in range(1, 4)}
    client.raise_request_exception = False
    with mock.patch("vetting.workflow.queue_email", side_effect=RuntimeError("template broke")):
        response = client.post("/apply/", form_data(**files))
    assert response.status_code == 500
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []


def _post_three_files_with_commit(client, commit):
    files = {f"evidence_{slot}": upload(f"f{slot}.pdf", PDF_BYTES) for slot in range(1, 4)}
    client.raise_request_exception = False
    with mock.patch.object(type(connections["default"]), "commit", commit):
        return client.post("/apply/", form_data(**files))


@pytest.mark.django_db(transaction=True)
def test_a_commit_whose_answer_is_lost_is_a_stored_application_not_an_error(client, settings):
    # The connection breaks after PostgreSQL committed. Telling the applicant to send it
    # again would make a duplicate: the application and all its evidence are there.
    real_commit = type(connections["default"]).commit

    def commit_then_lose_the_answer(wrapper):
        real_commit(wrapper)
        raise OperationalError("server closed the connection unexpectedly")

    response = _post_three_files_with_commit(client, commit_then_lose_the_answer)
    assert response.status_code == 302
    assert response["Location"].startswith("/apply/done/")
    application = Application.objects.get()
    stored = sorted(
        Path(settings.EVIDENCE_ROOT, evidence.file.name) for evidence in application.evidence.all()
    )
    assert len(stored) == 3
    assert sorted(files_on_disk(settings)) == stored
    assert OutboundEmail.objects.filter(to=application.email, template="application-received").count() == 1


@pytest.mark.django_db(transaction=True)
def test_while_the_database_cannot_say_whether_it_committed_the_files_stay_for_the_purge(
    client, settings, caplog
):
    # Deleting them could leave a stored application without its evidence; purge_evidence
    # removes files without a row once they are an hour old.
    real_commit = type(connections["default"]).commit
    real_execute = CursorWrapper.execute
    lost = threading.Event()

    def commit_then_lose_the_database(wrapper):
        real_commit(wrapper)
        lost.set()
        raise OperationalError("server closed the connection unexpectedly")

    def execute_unless_lost(cursor, *args, **kwargs):
        if lost.is_set():
            raise OperationalError("connection refused")
        return real_execute(cursor, *args, **kwargs)

    with mock.patch.object(CursorWrapper, "execute", execute_unless_lost):
        response = _post_three_files_with_commit(client, commit_then_lose_the_database)
    assert response.status_code == 503
    assert len(files_on_disk(settings)) == 3
    assert "its evidence files stay until purge_evidence finds them without a row" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_commit_refused_by_the_database_leaves_no_file(client, settings):
    def refuse_the_commit(wrapper):
        raise OperationalError("could not serialize access")

    response = _post_three_files_with_commit(client, refuse_the_commit)
    assert response.status_code == 503
    assert not Application.objects.exists()
    assert files_on_disk(settings) == []


def test_the_blank_form_touches_no_database_and_no_session(client, django_assert_num_queries):
    client.get("/apply/")  # warm the per-process page
    with django_assert_num_queries(0):
        response = client.get("/apply/")
    assert "sessionid" not in response.cookies
    assert not hasattr(response.wsgi_request, "session")
    assert "csrftoken" in response.cookies


def test_each_visitor_gets_a_working_csrf_token_in_the_cached_page(settings):
    from django.test import Client

    for _visitor in range(2):
        browser = Client(enforce_csrf_checks=True)
        page = browser.get("/apply/").content.decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
        assert "placeholder" not in token
        assert browser.post("/apply/", {**form_data(), "csrfmiddlewaretoken": token}).status_code == 302
    assert Application.objects.count() == 2
