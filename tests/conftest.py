"""Shared fixtures: fault servers on loopback, started and stopped per test."""
from __future__ import annotations

import socket
import threading
from typing import Iterator, List

import pytest

from rawfetch import timing
from tests.faultserver import FaultServer, clocked, make_body
from tests.vclock import VirtualClock

BODY_SIZE = 1 << 20


@pytest.fixture
def vclock() -> Iterator[VirtualClock]:
    """rawfetch and every fault server on a fresh virtual clock for this test (see
    tests/vclock.py); the real clock is back afterwards. Assert virtual elapsed time:
    `watch = vclock.stopwatch(); ...; assert 2.0 <= watch.elapsed < 2.0 + step`."""
    clock = VirtualClock()
    previous = timing.use_clock(clock)
    # The test's own thread takes part from the start, so time never moves while it sets
    # things up (a plain thread.join() from it would freeze time: use vclock.join); and
    # shared servers' acceptors, which may still sit in a real-clock wait.
    clock.adopt([threading.current_thread(), *clocked.long_lived()])
    try:
        yield clock
    finally:
        timing.use_clock(previous)
        clock.close()


@pytest.fixture(autouse=True)
def _marked_virtual_clock(request) -> None:
    """A module marked `virtual_clock` runs every test on the vclock, except a test
    parametrized with clock="real" (its real-clock twin, in the slow tier)."""
    if request.node.get_closest_marker("virtual_clock") is None:
        return
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("clock", "virtual") == "virtual":
        request.getfixturevalue("vclock")


@pytest.fixture(params=["virtual", pytest.param("real", marks=pytest.mark.slow)])
def clock(request) -> str:
    """A test and its real-clock twin: "virtual" (default tier, under the vclock
    fixture) or "real" (the slow tier, rawfetch.timing's real clock)."""
    if request.param == "virtual":
        request.getfixturevalue("vclock")
    return request.param


@pytest.fixture
def body() -> bytes:
    return make_body(BODY_SIZE, seed=1)


@pytest.fixture
def server(body: bytes) -> Iterator[FaultServer]:
    """A plain-HTTP fault server with `body` at /img."""
    with FaultServer() as srv:
        srv.add("/img", body, etag='"v1"')
        yield srv


@pytest.fixture
def make_server() -> Iterator:
    """Factory for extra servers (other origins, TLS modes); all stopped at the end."""
    started: List[FaultServer] = []

    def factory(**kwargs) -> FaultServer:
        srv = FaultServer(**kwargs).start()
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture
def blackhole() -> Iterator:
    """Factory for (host, port) endpoints whose SYNs are never answered: a listener
    with a full accept queue (the kernel drops further SYNs)."""
    held: List[socket.socket] = []

    def factory(host: str = "127.0.0.2", port: int = 0) -> int:
        listener = socket.socket()
        listener.bind((host, port))
        listener.listen(0)
        held.append(listener)
        bound = listener.getsockname()[1]
        for _ in range(4):  # fill the queue; later SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((host, bound))
            held.append(filler)
        return bound

    yield factory
    for sock in held:
        sock.close()
