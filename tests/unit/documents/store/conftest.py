"""The PostgreSQL servers the store tests use: one shared by the module's tests, each test with
a database of its own, and a private one for the tests that stop, kill or freeze it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.postgres_server import PostgresServer, running_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """A fresh, empty database: tests never see each other's rows."""
    return postgres_server.dsn(postgres_server.create_database())


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, to stop, kill or freeze."""
    with running_postgres() as server:
        yield server
