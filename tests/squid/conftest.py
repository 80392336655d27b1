"""Fixtures of the squid tier: the requirement check and squids (stopped by the fixture)."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.realnet.netns import kill_orphans
from tests.squid.squid import Squid, missing_requirements


@pytest.fixture(scope="session")
def squid_ready() -> None:
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    kill_orphans()   # squids and clients of a run that died without cleaning up


@pytest.fixture(autouse=True)
def _squid_guard(squid_ready: None) -> None:
    """Every test of the tier depends on the session check (and skips with its reason)."""


@pytest.fixture
def squid() -> Iterator[Squid]:
    with Squid() as server:
        yield server


@pytest.fixture
def auth_squid() -> Iterator[Squid]:
    with Squid(users={"rack": "s3cret-rack"}) as server:
        yield server
