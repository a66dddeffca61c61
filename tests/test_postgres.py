"""The PostgreSQL connection as production configures it: pooled, time-limited."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]


def test_connections_come_from_the_pool():
    assert connection.pool is not None
    assert connection.pool.max_size >= 1


def test_server_side_statement_timeout_is_set():
    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == "30s"
