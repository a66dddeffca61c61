"""gunicorn started with the rendered deploy/gunicorn.conf.py, as rvi-web.service starts it."""

from __future__ import annotations

import json
import os
import signal
import time

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


# The rendered config plus a hook that runs in the master just before each fork: it records
# which of the project's modules the new worker would inherit rather than import afresh.
FORK_RECORDING_CONFIG = """
import json
import sys
from pathlib import Path

exec(compile(Path({config!r}).read_text(), {config!r}, "exec"))
pidfile = {pidfile!r}


def pre_fork(server, worker):
    inherited = sorted(
        name
        for name, module in list(sys.modules.items())
        if (getattr(module, "__file__", None) or "").startswith({app_dir!r})
        and not (getattr(module, "__file__", None) or "").startswith({venv!r})
    )
    with open({record!r}, "a") as record:
        record.write(json.dumps(inherited) + "\\n")
"""


def test_workers_forked_after_a_reload_inherit_no_module_of_the_app(tmp_path):
    """A module of the app in the master would reach every later worker as the old release's code."""
    app = servers.App(tmp_path / "app")
    app.static_root.mkdir(parents=True)
    port = servers.free_port()
    rendered = app.render_deploy(tmp_path / "rendered", app_port=port)
    record, pidfile = tmp_path / "forks.jsonl", tmp_path / "gunicorn.pid"
    config = tmp_path / "recording.conf.py"
    config.write_text(
        FORK_RECORDING_CONFIG.format(
            config=str(rendered / "gunicorn.conf.py"),
            pidfile=str(pidfile),
            app_dir=f"{servers.BASE_DIR}/",
            venv=f"{servers.VENV}/",
            record=str(record),
        )
    )
    with app.gunicorn(config, port, workers=2) as url:
        os.kill(int(pidfile.read_text()), signal.SIGHUP)
        deadline = time.monotonic() + 30
        while len(record.read_text().splitlines()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert requests.get(url + "/healthz", timeout=10).status_code == 200
    forks = [json.loads(line) for line in record.read_text().splitlines()]
    lines = (app.root / f"gunicorn-{port}.log").read_text().splitlines()

    assert len(forks) == 4, forks
    assert forks == [[]] * 4
    # The reload sets gunicorn's logger up again: its lines after it are still the app's JSON.
    messages = [entry["message"] for entry in map(json.loads, lines) if entry["logger"] == "gunicorn.error"]
    assert "Handling signal: hup" in messages
    assert messages[-1] == "Shutting down: Master"
