"""The applicant's pages in a real browser: phone and desktop widths, with and without
JavaScript, client-side checks, upload progress, data rights, and axe-core on every page."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from playwright.sync_api import expect

from evidence.models import Evidence
from notifications.models import OutboundEmail
from tests.browser.test_vetting_flow import link_in, sign_in
from tests.evidence.test_images import jpeg_with_gps_and_orientation
from tests.factories import HTML_BYTES, PDF_BYTES, make_application
from vetting import links, views, workflow
from vetting.models import Application, AuditEvent

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture
def site(live_server, settings):
    settings.SITE_URL = live_server.url
    # Plain-HTTP live server: let the browser keep the cookies.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    return live_server.url


@pytest.fixture
def files(tmp_path):
    passport = tmp_path / "passport.pdf"
    passport.write_bytes(PDF_BYTES)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg_with_gps_and_orientation())
    return {"passport": passport, "photo": photo}


def intercept(page, path: str, method: str, handle) -> None:
    """Requests for `path` made with `method` go to `handle(route)`; all others go through."""

    def route_by_method(route):
        if route.request.method == method:
            handle(route)
        else:
            route.continue_()

    page.route(f"**{path}", route_by_method)


def new_page(chromium, viewport=DESKTOP, javascript=True):
    # bypass_csp: axe-core is injected as an inline script, which a strict CSP would block.
    context = chromium.new_context(viewport=viewport, java_script_enabled=javascript, bypass_csp=True)
    return context.new_page()


def attach(page, slot: int, path) -> None:
    """Choose a file in slot `slot`, opening the slot with "Add another file" when the script hid it."""
    field = page.locator(f"#id_evidence_{slot}")
    if not field.is_visible():
        page.get_by_role("button", name="Add another file").click()
        expect(field).to_be_focused()
    page.set_input_files(f"#id_evidence_{slot}", str(path))


def fill_form(page, name: str = "Robin Browser") -> None:
    page.fill("#id_full_name", name)
    page.fill("#id_email", "robin@applicant.example")
    page.fill("#id_matrix_username", "robin")
    page.fill("#id_referral", "Sam from the Lisbon meetup")
    page.fill("#id_statement", "I run the local chapter.")
    page.check("#id_consent")


@pytest.mark.parametrize(("width_name", "viewport"), [("360", PHONE), ("1280", DESKTOP)])
def test_apply_with_files_at_phone_and_desktop_width(
    chromium, site, files, width_name, viewport, screenshot, check_accessibility
):
    page = new_page(chromium, viewport)
    page.goto(f"{site}/apply/")
    check_accessibility(page, f"apply form at {width_name} px")
    # Nothing may stick out sideways on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
    fill_form(page)
    attach(page, 1, files["passport"])
    attach(page, 2, files["photo"])
    page.fill("#id_note_2", "My ID card")
    screenshot(page, f"apply-filled-{width_name}")
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    application = Application.objects.get()
    expect(page.get_by_text(application.reference)).to_be_visible()
    check_accessibility(page, f"done page at {width_name} px")
    screenshot(page, f"apply-done-{width_name}")
    assert Evidence.objects.filter(application=application).count() == 2
    page.context.close()


def test_errors_are_listed_focused_and_linked_then_fixed(chromium, site, screenshot, check_accessibility):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    page.fill("#id_full_name", "Robin Browser")
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_visible()
    expect(summary).to_be_focused()
    # The page came back in place: its title says there is an error, as it would without the script.
    expect(page).to_have_title(re.compile(r"^Error: Apply to join"))
    screenshot(page, "apply-errors-360")
    check_accessibility(page, "apply form with errors")
    summary.get_by_role("link", name="Enter your e-mail address.").click()
    expect(page.locator("#id_email")).to_be_in_viewport()
    assert page.get_attribute("#id_email", "aria-invalid") == "true"
    assert "id_email_error" in page.get_attribute("#id_email", "aria-describedby")
    fill_form(page)
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    assert Application.objects.count() == 1
    page.context.close()


def test_after_an_error_the_applicant_is_asked_to_choose_their_files_again(
    chromium, site, files, check_accessibility
):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    page.fill("#id_statement", "")
    attach(page, 1, files["passport"])
    page.fill("#id_note_1", "Front page")
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    summary.get_by_role("link", name="Choose your files again").click()
    expect(page.locator("#id_evidence_1")).to_be_in_viewport()
    expect(page.locator("#choose-files-again")).to_contain_text("You had chosen: passport.pdf.")
    expect(page.locator("#id_note_1")).to_have_value("Front page")
    check_accessibility(page, "apply form asking for the files again")
    page.fill("#id_statement", "I run the local chapter.")
    attach(page, 1, files["passport"])
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    assert Evidence.objects.get().note == "Front page"
    page.context.close()


def test_status_page_opened_at_a_fragment_keeps_the_errors_and_the_typed_answer(chromium, site, tmp_path):
    application = make_application(
        status=Application.Status.INFO_REQUESTED, information_request="Please send a recent photo."
    )
    # Passes the script's checks (name and size); only the server sees it is a web page.
    fake = tmp_path / "photo.pdf"
    fake.write_bytes(HTML_BYTES)
    page = new_page(chromium, PHONE)
    # "Skip to main content" leaves #main in the address bar.
    page.goto(f"{site}/status/{links.status_token(application)}/#main")
    page.fill("#id_message", "Here is my photo.")
    attach(page, 1, fake)
    page.get_by_role("button", name="Send to staff").click()
    expect(page.locator("#error-summary")).to_contain_text("“photo.pdf” does not contain what its name says")
    expect(page.locator("#id_message")).to_have_value("Here is my photo.")
    application.refresh_from_db()
    assert application.status == Application.Status.INFO_REQUESTED
    assert not Evidence.objects.exists()
    page.context.close()


def test_keyboard_only_applicant_can_reach_every_field_and_send(chromium, site):
    page = new_page(chromium, DESKTOP)
    page.goto(f"{site}/apply/")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Skip to main content")).to_be_focused()
    page.keyboard.press("Enter")
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id || document.activeElement.tagName"))
    assert {"id_full_name", "id_email", "id_statement", "id_evidence_1", "id_consent", "BUTTON"} <= reached
    assert "id_website" not in reached  # the honeypot stays out of the way
    page.context.close()


def test_client_side_checks_use_the_server_limits_before_any_upload(chromium, site, tmp_path, settings):
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ" + bytes(100))
    empty = tmp_path / "empty.pdf"
    empty.write_bytes(b"")
    huge = tmp_path / "huge.pdf"
    huge.write_bytes(b"%PDF-1.4\n" + bytes(settings.EVIDENCE_MAX_FILE_SIZE))
    page = new_page(chromium, PHONE)
    posts = []
    page.on("request", lambda request: posts.append(request) if request.method == "POST" else None)
    page.goto(f"{site}/apply/")
    fill_form(page)

    attach(page, 1, program)
    expect(page.locator("#id_evidence_1_client_error")).to_have_text(
        re.compile("“setup.exe” is not an allowed type")
    )
    attach(page, 2, empty)
    expect(page.locator("#id_evidence_2_client_error")).to_have_text("“empty.pdf” is empty.")
    attach(page, 3, huge)
    expect(page.locator("#id_evidence_3_client_error")).to_have_text(
        "“huge.pdf” is too large: each file may be at most 16 MB."
    )
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    expect(summary.get_by_role("link")).to_have_count(3)
    assert posts == []
    assert "id_evidence_1_client_error" in page.get_attribute("#id_evidence_1", "aria-describedby")

    # Choosing an allowed file clears the message.
    page.set_input_files("#id_evidence_1", [])
    page.set_input_files("#id_evidence_2", [])
    page.set_input_files("#id_evidence_3", [])
    expect(page.locator("#id_evidence_1_client_error")).to_be_hidden()
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    page.context.close()


def attach_a_slow_upload(page, tmp_path) -> Path:
    """A file of about 600 KB, sent at about 150 KB/s so the progress can be seen."""
    statement = tmp_path / "statement.txt"
    statement.write_bytes(b"I met Sam at the meetup.\n" * 24_000)
    attach(page, 1, statement)
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 20, "downloadThroughput": -1, "uploadThroughput": 150 * 1024},
    )
    return statement


def test_progress_bar_shows_and_button_is_disabled_while_sending(chromium, site, tmp_path, screenshot):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    statement = attach_a_slow_upload(page, tmp_path)
    page.get_by_role("button", name="Send application").click()
    progress = page.locator(".upload-progress progress")
    expect(progress).to_be_visible()
    expect(page.locator("button[type=submit]")).to_be_disabled()
    page.wait_for_function("document.querySelector('.upload-progress progress').value > 0")
    screenshot(page, "apply-uploading-360")
    page.wait_for_url(re.compile(r"/apply/done/"), timeout=30_000)
    assert Evidence.objects.get().size == statement.stat().st_size
    page.context.close()


def test_form_works_without_javascript(chromium, site, files, screenshot):
    page = new_page(chromium, PHONE, javascript=False)
    page.goto(f"{site}/apply/")
    page.get_by_role("button", name="Send application").click()
    expect(page.locator("#error-summary")).to_be_visible()
    expect(page.locator("#error-summary")).to_be_focused()  # autofocus, no script needed
    screenshot(page, "apply-errors-nojs-360")
    expect(page.locator("#id_evidence_5")).to_be_visible()  # every slot, no "Add another file"
    fill_form(page)
    attach(page, 1, files["photo"])
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    stored = Evidence.objects.get()
    assert stored.content_type == "image/jpeg"
    with stored.file.open("rb") as stored_file:
        assert len(Image.open(stored_file).getexif()) == 0  # the GPS position is gone
    page.context.close()


def test_status_page_walk_download_zip_and_erase(
    chromium, site, files, agent, server_admin, screenshot, check_accessibility
):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    attach(page, 1, files["photo"])
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    received = OutboundEmail.objects.get(template="application-received")
    page.goto(link_in(received, "/confirm/"))
    expect(page.get_by_text("Your application is in the queue.")).to_be_visible()
    check_accessibility(page, "status page")
    screenshot(page, "status-360")

    application = Application.objects.get()
    workflow.claim(application, agent)
    workflow.request_information(application, server_admin, "Please send a recent photo.")
    page.reload()
    expect(page.get_by_text("Please send a recent photo.")).to_be_visible()
    check_accessibility(page, "status page asking for information")
    page.fill("#id_message", "Here it is.")
    attach(page, 1, files["passport"])
    page.get_by_role("button", name="Send to staff").click()
    expect(page.get_by_text("your answer was sent to staff")).to_be_visible()

    with page.expect_download() as download_info:
        page.get_by_role("link", name="Download my data (ZIP file)").click()
    archive = zipfile.ZipFile(download_info.value.path())
    own = json.loads(archive.read("application.json"))
    assert own["full_name"] == "Robin Browser"
    assert sorted(name for name in archive.namelist() if name.startswith("evidence/")) == [
        "evidence/1-photo.jpg",
        "evidence/2-passport.pdf",
    ]
    history = [entry["action"] for entry in json.loads(archive.read("history.json"))]
    assert "application.information_added" in history
    assert "agent" not in archive.read("history.json").decode().replace("Vetting agent", "")

    page.get_by_role("link", name="Erase my application").click()
    check_accessibility(page, "erase confirmation")
    screenshot(page, "erase-360")
    page.get_by_role("button", name="Yes, erase my application").click()
    expect(page.get_by_text("You erased this application")).to_be_visible()
    check_accessibility(page, "erased status page")
    application.refresh_from_db()
    assert application.full_name == "" and application.erased_at is not None
    assert not Evidence.objects.exists()
    page.context.close()


def test_other_public_pages_pass_axe(chromium, site, screenshot, check_accessibility):
    for width_name, viewport in [("360", PHONE), ("1280", DESKTOP)]:
        page = new_page(chromium, viewport)
        for name, path in [("privacy", "/privacy/"), ("not-found", "/status/forged/")]:
            page.goto(f"{site}{path}")
            check_accessibility(page, f"{path} at {width_name} px")
            screenshot(page, f"{name}-{width_name}")
        page.context.close()
    application = Application.objects.create(
        full_name="Alex Example",
        email="alex@applicant.example",
        referral="Sam",
        statement="Hello",
        consent_given_at="2026-11-28T10:00:00Z",
        status=Application.Status.SUBMITTED,
    )
    from vetting import links

    page = new_page(chromium, PHONE)
    page.goto(f"{site}/status/{links.status_token(application)}/withdraw/")
    check_accessibility(page, "withdraw confirmation")
    page.context.close()


def test_main_admin_pages_pass_axe(chromium, site, files, agent, screenshot, check_accessibility):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    attach(page, 1, files["photo"])
    attach(page, 2, files["passport"])
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    page.context.close()
    application = Application.objects.get()
    workflow.confirm_email(application)

    staff = new_page(chromium, DESKTOP)
    staff.goto(f"{site}/admin/login/")
    check_accessibility(staff, "admin login")
    sign_in(staff, site, "agent")
    check_accessibility(staff, "admin index")
    staff.goto(f"{site}/admin/vetting/application/")
    check_accessibility(staff, "application list")
    staff.goto(f"{site}/admin/vetting/application/{application.pk}/change/")
    preview = staff.locator("img.evidence-preview")
    preview.scroll_into_view_if_needed()
    expect(preview).to_be_visible()
    # The thumbnail really loaded through the preview view (lazy loading: wait for it).
    staff.wait_for_function(
        "() => { const img = document.querySelector('img.evidence-preview'); return img.complete && img.naturalWidth > 0; }"
    )
    assert AuditEvent.objects.filter(action="evidence.previewed", actor=agent).exists()
    check_accessibility(staff, "application page")
    screenshot(staff, "admin-application-1280")
    staff.context.close()


@pytest.fixture
def small_file_limit(settings):
    """Files of at most 1 MB, in the checks and in the blank form (rendered once per process)."""
    settings.EVIDENCE_MAX_FILE_SIZE = 1024 * 1024
    views._blank_application_page.cache_clear()
    yield settings.EVIDENCE_MAX_FILE_SIZE
    views._blank_application_page.cache_clear()


def test_client_side_checks_let_through_every_file_the_server_takes(
    chromium, site, files, tmp_path, small_file_limit
):
    # Phones and cameras name photos in capitals; scans often carry a date with dots.
    camera = tmp_path / "IMG_0042.JPG"
    camera.write_bytes(files["photo"].read_bytes())
    dated = tmp_path / "scan.2024.05.01.pdf"
    dated.write_bytes(PDF_BYTES)
    at_the_limit = tmp_path / "at-the-limit.pdf"
    at_the_limit.write_bytes(PDF_BYTES.ljust(small_file_limit, b"\n"))
    one_byte_over = tmp_path / "one-byte-over.pdf"
    one_byte_over.write_bytes(PDF_BYTES.ljust(small_file_limit + 1, b"\n"))
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)

    attach(page, 1, camera)
    attach(page, 2, dated)
    attach(page, 3, at_the_limit)
    attach(page, 4, one_byte_over)
    expect(page.locator("#id_evidence_4_client_error")).to_have_text(
        "“one-byte-over.pdf” is too large: each file may be at most 1 MB."
    )
    for slot in (1, 2, 3):
        expect(page.locator(f"#id_evidence_{slot}_client_error")).to_be_hidden()
    page.set_input_files("#id_evidence_4", [])
    page.get_by_role("button", name="Send application").click()
    page.wait_for_url(re.compile(r"/apply/done/"))
    assert sorted(Evidence.objects.values_list("original_name", flat=True)) == [
        "IMG_0042.JPG",
        "at-the-limit.pdf",
        "scan.2024.05.01.pdf",
    ]
    page.context.close()


def test_a_refused_file_is_shown_announced_and_marked_on_its_input(chromium, site, files, tmp_path):
    program = tmp_path / "setup.exe"
    program.write_bytes(b"MZ" + bytes(100))
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    field = page.locator("#id_evidence_1")
    message = page.locator("#id_evidence_1_client_error")
    expect(field).to_have_attribute("aria-describedby", "evidence-limits")

    page.set_input_files("#id_evidence_1", str(program))
    expect(message).to_be_visible()
    expect(message).to_contain_text("“setup.exe” is not an allowed type")
    expect(message).to_have_attribute("aria-live", "polite")  # read out as it appears
    expect(field).to_have_attribute("aria-invalid", "true")
    # The limits stay in the description, the message is added to them.
    expect(field).to_have_attribute("aria-describedby", "evidence-limits id_evidence_1_client_error")

    page.set_input_files("#id_evidence_1", str(files["passport"]))
    expect(message).to_be_hidden()
    expect(field).not_to_have_attribute("aria-invalid", re.compile(".*"))
    expect(field).to_have_attribute("aria-describedby", "evidence-limits")
    page.context.close()


def test_after_an_error_a_slot_with_a_note_stays_open(chromium, site, files):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    page.fill("#id_statement", "")
    attach(page, 1, files["passport"])
    attach(page, 2, files["photo"])
    page.fill("#id_note_2", "My ID card")
    page.get_by_role("button", name="Send application").click()
    expect(page.locator("#error-summary")).to_be_focused()
    expect(page.locator("#id_note_2")).to_be_visible()
    expect(page.locator("#id_note_2")).to_have_value("My ID card")
    expect(page.locator("#id_evidence_3")).to_be_hidden()
    expect(page.get_by_role("button", name="Add another file")).to_be_visible()
    page.context.close()


def test_after_an_error_a_slot_whose_file_was_refused_stays_open(chromium, site, files, tmp_path):
    # Passes the script's checks (name and size); only the server sees it is a web page.
    fake = tmp_path / "photo.pdf"
    fake.write_bytes(HTML_BYTES)
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    attach(page, 1, files["passport"])
    attach(page, 2, fake)
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    summary.get_by_role("link", name=re.compile("“photo.pdf” does not contain what its name says")).click()
    expect(page.locator("#id_evidence_2")).to_be_focused()
    expect(page.locator("#id_evidence_2_error")).to_be_visible()
    expect(page.locator("#id_evidence_3")).to_be_hidden()
    # Another file chosen: the server's message stays beside the input until the form is sent, and so does its mark.
    page.set_input_files("#id_evidence_2", str(files["photo"]))
    expect(page.locator("#id_evidence_2")).to_have_attribute("aria-invalid", "true")
    page.context.close()


def test_add_another_file_goes_away_once_every_slot_is_open(chromium, site, settings):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    add = page.get_by_role("button", name="Add another file")
    for slot in range(2, settings.EVIDENCE_MAX_FILES + 1):
        expect(page.locator(f"#id_evidence_{slot}")).to_be_hidden()
        add.click()
        expect(page.locator(f"#id_evidence_{slot}")).to_be_focused()
    expect(add).to_have_count(0)
    page.context.close()


def test_progress_is_announced_in_steps_of_ten_and_put_away_after_a_failure(
    chromium, site, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr("vetting.workflow.submit_application", broken)
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    fill_form(page)
    attach_a_slow_upload(page, tmp_path)
    # What the live region says, each time it changes.
    page.evaluate(
        """() => {
            const text = document.querySelector("[data-progress-text]");
            window.announced = [];
            new MutationObserver(() => window.announced.push(text.textContent)).observe(
                text, { childList: true, characterData: true, subtree: true });
        }"""
    )
    page.get_by_role("button", name="Send application").click()
    expect(page.locator("[data-progress-text]")).to_have_attribute("aria-live", "polite")
    expect(page.locator("[data-progress-text]")).to_have_text(re.compile(r"^Sent [1-9]0%$"))
    expect(page.locator("#error-summary")).to_contain_text("Nothing you sent was kept half-way.")
    announced = page.evaluate("window.announced")
    assert announced[0] == "Sent 0%" and announced[-1] == "Sent 100%", announced
    assert len(announced) == len(set(announced)) <= 11, announced  # never the same twice
    assert all(re.fullmatch(r"Sent [1-9]?0%|Sent 100%", said) for said in announced), announced
    assert page.eval_on_selector(".upload-progress progress", "bar => bar.value") == 100
    # Nothing is being sent any more: no progress bar, the button as it was.
    expect(page.locator(".upload-progress")).to_be_hidden()
    expect(page.get_by_role("button", name="Send application")).to_be_enabled()
    page.context.close()


def test_a_second_round_of_errors_moves_the_focus_to_the_summary_again(chromium, site):
    page = new_page(chromium, PHONE)
    page.goto(f"{site}/apply/")
    page.get_by_role("button", name="Send application").click()
    summary = page.locator("#error-summary")
    expect(summary).to_be_focused()
    fill_form(page)
    page.fill("#id_email", "not an address")
    page.get_by_role("button", name="Send application").click()
    expect(summary).to_contain_text("Enter an e-mail address like name@example.org.")
    expect(summary).to_be_focused()
    page.context.close()
