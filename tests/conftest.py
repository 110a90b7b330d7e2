"""Suite-wide fixtures: anyio on asyncio, and a development secret for every server."""

from __future__ import annotations

import pytest

from tests.support.server import TEST_SECRET


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def secret() -> str:
    return TEST_SECRET
