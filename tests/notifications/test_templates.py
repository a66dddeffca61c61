"""Every mail under templates/notifications/ is complete and needs nothing from the network."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "notifications"
MAILS = sorted(path.name.removesuffix("-subject.txt") for path in TEMPLATES.glob("*-subject.txt"))
# Attributes through which a mail client would fetch something by itself.
FETCHING = {"src", "srcset", "background", "poster", "data", "lowsrc", "dynsrc"}


class RemoteResources(HTMLParser):
    """Collects what an HTML mail would load on opening: images, CSS, frames, scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            value = (value or "").strip().lower()
            if name in FETCHING and value and not value.startswith(("data:", "cid:")):
                self.found.append(f"<{tag} {name}={value!r}>")
            if name == "style" and "url(" in value:
                self.found.append(f"<{tag} style with url()>")
        if tag == "link":
            self.found.append("<link>")
        if tag in {"script", "iframe", "object", "embed"}:
            self.found.append(f"<{tag}>")

    def handle_data(self, data: str) -> None:
        if "@import" in data or "url(" in data:
            self.found.append("CSS import or url()")


def test_there_are_mail_templates():
    assert "application-received" in MAILS


@pytest.mark.parametrize("name", MAILS)
def test_each_subject_has_its_text_and_html_body(name):
    assert (TEMPLATES / f"{name}-body.txt").is_file()
    assert (TEMPLATES / f"{name}-body.html").is_file()


@pytest.mark.parametrize("path", sorted(TEMPLATES.glob("*.html")), ids=lambda path: path.name)
def test_html_mail_loads_no_remote_resources(path):
    parser = RemoteResources()
    parser.feed(path.read_text())
    assert parser.found == []


def test_the_remote_resource_check_finds_images_css_and_scripts():
    parser = RemoteResources()
    parser.feed(
        '<img src="https://tracker.example/p.gif"><link rel="stylesheet" href="https://cdn.example/a.css">'
        '<td style="background:url(http://x.example/b.png)"><script src="//x.example/s.js"></script>'
        '<a href="https://rvi.example.org/status/">a link is fine</a><img src="data:image/png;base64,AA">'
    )
    assert len(parser.found) == 5
