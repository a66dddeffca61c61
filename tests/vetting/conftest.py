"""Homeserver fixtures: local fakes that tests control, and the real Synapse (marker `synapse`)."""

from __future__ import annotations

import time

import pytest

from tests.synapse import server as synapse_server
from tests.vetting.homeservers import FakeMas, FakeSynapse
from vetting import matrix

_synapse_setup_seconds: list[float] = []


@pytest.fixture
def approved(agent, server_admin):
    """An application approved by a server admin, verified by the agent, asking for @alex; no mail queued."""
    from notifications.models import OutboundEmail
    from tests.vetting.test_workflow import recommended_by
    from vetting import workflow

    application = recommended_by(agent)
    application.matrix_username = "alex"
    application.save(update_fields=["matrix_username"])
    workflow.approve(application, server_admin)
    OutboundEmail.objects.all().delete()
    return application


@pytest.fixture
def fast_retries(monkeypatch):
    """Retries without the real waits, so failure tests take milliseconds.

    The read timeout stays the real one: on a busy machine a slow answer must
    not turn into a timeout. Tests that simulate a hang add `short_read_timeout`.
    """
    monkeypatch.setattr(matrix, "RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.fixture
def short_read_timeout(monkeypatch):
    """Only for tests whose homeserver never answers (HANG): the client gives up after half a second."""
    monkeypatch.setattr(matrix, "READ_TIMEOUT", 0.5)


@pytest.fixture
def fake_synapse(settings, fast_retries):
    """The settings point at a FakeSynapse that knows our admin token."""
    homeserver = FakeSynapse()
    settings.MATRIX_BACKEND = "synapse"
    settings.MATRIX_HOMESERVER_URL = homeserver.url
    settings.MATRIX_ADMIN_TOKEN = homeserver.admin_token
    settings.MATRIX_SERVER_NAME = "localhost"
    yield homeserver
    homeserver.close()


@pytest.fixture
def fake_mas(settings, fast_retries):
    """The settings point at a FakeMas (MATRIX_BACKEND=mas) with our client credentials."""
    service = FakeMas()
    settings.MATRIX_BACKEND = "mas"
    settings.MATRIX_HOMESERVER_URL = "https://matrix.localhost"
    settings.MATRIX_MAS_URL = service.url
    settings.MATRIX_MAS_CLIENT_ID = service.client_id
    settings.MATRIX_MAS_CLIENT_SECRET = service.client_secret
    settings.MATRIX_SERVER_NAME = "localhost"
    settings.MATRIX_ADMIN_TOKEN = ""
    yield service
    service.close()


@pytest.fixture(scope="session")
def synapse_homeserver(tmp_path_factory):
    """One real Synapse for the whole run, started on first use and stopped at the end."""
    began = time.monotonic()
    try:
        homeserver = synapse_server.start(tmp_path_factory.mktemp("synapse"))
    except synapse_server.SynapseUnavailable as error:
        pytest.skip(f"needs a Synapse homeserver: {error}")
    _synapse_setup_seconds.append(time.monotonic() - began)
    yield homeserver
    homeserver.stop()


@pytest.fixture
def synapse(synapse_homeserver, settings):
    """The settings point at the real Synapse with its admin's access token."""
    settings.MATRIX_BACKEND = "synapse"
    settings.MATRIX_HOMESERVER_URL = synapse_homeserver.url
    settings.MATRIX_ADMIN_TOKEN = synapse_homeserver.admin_token
    settings.MATRIX_SERVER_NAME = synapse_homeserver.server_name
    return synapse_homeserver


def pytest_terminal_summary(terminalreporter):
    if _synapse_setup_seconds:
        terminalreporter.write_line(
            f"Synapse {synapse_server.SYNAPSE_VERSION} fixture: ready in {_synapse_setup_seconds[0]:.1f} s "
            f"(venv {synapse_server.venv_path()})."
        )
