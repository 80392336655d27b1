"""Fixtures of the real-servers tier: one running server per name for the session (its
document root shared, each test in its own directory), one fault relay per test."""
from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from typing import Iterator

import pytest

from tests.servers.daemons import SERVERS, Daemon
from tests.servers.relay import Relay

_cells = itertools.count(1)


@pytest.fixture(scope="session", params=sorted(SERVERS))
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    root = tempfile.mkdtemp(prefix="servers-root-")
    os.chmod(root, 0o755)    # Apache's children run as www-data
    server = SERVERS[request.param](root)
    reason = server.available()
    if reason:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(reason)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def relay(daemon: Daemon) -> Iterator[Relay]:
    forwarder = Relay(daemon.port).start()
    try:
        yield forwarder
    finally:
        forwarder.stop()


@pytest.fixture
def cell() -> str:
    """A directory name no other test uses (the servers are shared by the session)."""
    return "c%d" % next(_cells)
