"""gunicorn started with the rendered deploy/gunicorn.conf.py, as rvi-web.service starts it."""

from __future__ import annotations

import json

import requests

from tests.deploy import servers

# The keys of every line the app writes (iama_vetting.logs.JSONFormatter).
APP_LOG_KEYS = {"time", "level", "logger", "message", "request_id", "user_id", "client_ip", "method", "path"}


def test_gunicorns_own_lines_are_json_lines_like_the_apps(tmp_path):
    """Boot, worker start and exit, shutdown: the journal gets one JSON object per line."""
    app = servers.App(tmp_path / "app")
    app.static_root.mkdir(parents=True)
    port = servers.free_port()
    rendered = app.render_deploy(tmp_path / "rendered", app_port=port)
    with app.gunicorn(rendered / "gunicorn.conf.py", port, workers=2):
        pass
    lines = (app.root / f"gunicorn-{port}.log").read_text().splitlines()

    entries = [json.loads(line) for line in lines]
    gunicorn = [entry for entry in entries if entry["logger"].startswith("gunicorn")]
    assert all(set(entry) == APP_LOG_KEYS for entry in gunicorn), gunicorn
    assert {entry["logger"] for entry in gunicorn} == {"gunicorn.error"}
    messages = [entry["message"] for entry in gunicorn]
    assert any(message.startswith(f"Listening at: http://127.0.0.1:{port} ") for message in messages)
    assert sum(message.startswith("Booting worker with pid: ") for message in messages) == 2
    assert sum(message.startswith("Worker exiting (pid: ") for message in messages) == 2
    assert messages[-1] == "Shutting down: Master"
    assert all(entry["level"] == "INFO" for entry in gunicorn)


def test_a_wrong_method_gets_the_whole_error_page_through_gunicorn(tmp_path):
    # gunicorn sends no more than Content-Length says: a page filled in after it was counted is cut.
    app = servers.App(tmp_path / "app").install()
    port = servers.free_port()
    rendered = app.render_deploy(tmp_path / "rendered", app_port=port)
    with app.gunicorn(rendered / "gunicorn.conf.py", port, workers=1) as url:
        response = requests.get(url + "/csp-report/", timeout=10)

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert "This page does not accept that kind of request" in response.text
    assert response.text.rstrip().endswith("</html>")
