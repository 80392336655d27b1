"""Fixtures of the real-world tier: requirement check, payloads, namespaces, servers.

Why fixtures with finalizers: a failing or timed-out test must still remove its
namespaces, veths, iptables rules, /etc/netns dirs and servers; stale ones left by a
killed run (its pid gone) are swept once per session.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterator, Tuple

import pytest

from tests.realnet.harness import MiB
from tests.realnet.netns import PORT, Topology, cleanup_stale, missing_requirements
from tests.realnet.servers import Nginx, start_loopback_nginx, write_payload

PAYLOADS = {"img64": (64 * MiB, 1), "img128": (128 * MiB, 2)}


@pytest.fixture(scope="session")
def realnet_ready() -> None:
    """Checked once: skip the whole tier with the reason when it cannot run here."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    cleanup_stale()


@pytest.fixture(autouse=True)
def _realnet_guard(realnet_ready: None, tmp_path) -> Iterator[None]:
    """Every realnet test depends on the session check (and so skips with its reason);
    its big files are dropped after it (verified by digest; pytest keeps 3 runs)."""
    yield
    prune(str(tmp_path))


def prune(directory: str) -> None:
    """Remove regular files over 1 MiB under `directory` (not what symlinks point to)."""
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            try:
                if not os.path.islink(path) and os.path.getsize(path) > MiB:
                    os.unlink(path)
            except OSError:
                pass


@dataclass
class Payloads:
    """Session-wide files served by every server: path and sha256 by name."""

    directory: str
    sha: Dict[str, str]

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def size(self, name: str) -> int:
        return PAYLOADS[name][0]


@pytest.fixture(scope="session")
def payloads(tmp_path_factory: pytest.TempPathFactory, realnet_ready: None
             ) -> Iterator[Payloads]:
    directory = str(tmp_path_factory.mktemp("realnet-payloads"))
    sha = {name: write_payload(os.path.join(directory, name), size, seed)
           for name, (size, seed) in PAYLOADS.items()}
    yield Payloads(directory, sha)
    prune(directory)


@pytest.fixture
def docroot(tmp_path, payloads: Payloads) -> str:
    """A per-test document root: symlinks to the payloads, room for files a test replaces."""
    root = tmp_path / "www"
    root.mkdir()
    for name in PAYLOADS:
        os.symlink(payloads.path(name), str(root / name))
    return str(root)


@pytest.fixture
def topo() -> Iterator[Topology]:
    """Server + client namespaces joined by a veth; deleted even when the test fails."""
    with Topology() as topology:
        yield topology


@pytest.fixture
def ns_nginx(topo: Topology, docroot: str, tmp_path) -> Iterator[Nginx]:
    """nginx inside the server namespace on PORT of every server address."""
    server = Nginx(str(tmp_path / "nginx"), docroot, str(PORT), topo.exec_prefix(topo.server))
    try:
        server.start()
        server.wait_ready(topo.is_listening)
        yield server
    finally:
        server.stop()


@pytest.fixture
def lo_nginx(docroot: str, tmp_path) -> Iterator[Tuple[Nginx, str]]:
    """nginx on 127.0.0.1 at an ephemeral port: (server, base URL)."""
    server, port = start_loopback_nginx(str(tmp_path / "nginx"), docroot)
    try:
        yield server, "http://127.0.0.1:%d" % port
    finally:
        server.stop()

