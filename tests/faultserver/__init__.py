"""In-repo fault-injecting HTTP/1.1 (+TLS, +DNS) test server for rawfetch.

Typical use::

    from tests.faultserver import FaultServer, make_body, actions as A

    with FaultServer() as srv:
        srv.add("/img", make_body(1 << 20))
        srv.script([A.rst(at=1000), A.normal()])
        ...  # point the client at srv.url("/img")
        assert srv.requests[1].range == "bytes=1000-"

Only the standard library is needed unless a TLS mode is used (trustme).

Every wait of the servers (delays, stalls, trickle gaps, holds, lingers, request and
handshake timeouts) goes through rawfetch.timing (clocked.py), and records are stamped
with timing.now(): under the suite's virtual clock (tests/vclock.py) they cost no real
time; otherwise (the standalone server, demo.py, the real-clock tiers) they are real.
"""
from __future__ import annotations

from . import actions
from .body import make_body
from .dns import (DNSResponder, DnsAction, dns_answer, dns_drop, dns_nxdomain,
                  dns_query, dns_servfail)
from .model import Disconnect, Request, Resource
from .server import FaultServer

__all__ = [
    "FaultServer", "actions", "DNSResponder", "DnsAction", "dns_query",
    "dns_answer", "dns_servfail", "dns_nxdomain", "dns_drop", "make_body",
    "Request", "Disconnect", "Resource",
]
