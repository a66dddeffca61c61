"""The mail and homeserver fixtures of tests/notifications and tests/vetting, for verify_deployment's tests."""

from tests.notifications.conftest import (  # noqa: F401 - fixtures, found by name
    certificates,
    closed_port,
    relay_password,
    smtp_server,
    start_smtp_server,
    use_relay,
)
from tests.vetting.conftest import (  # noqa: F401 - fixtures, found by name
    fake_synapse,
    fast_retries,
    synapse,
    synapse_homeserver,
)
