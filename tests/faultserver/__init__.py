"""In-repo fault-injecting HTTP/1.1 (+TLS, +DNS) test server for rawfetch.

Typical use::

    from tests.faultserver import FaultServer, make_body, actions as A

    with FaultServer() as srv:
        srv.add("/img", make_body(1 << 20))
        srv.script([A.rst(at=1000), A.normal()])
        ...  # point the client at srv.url("/img")
        assert srv.requests[1].range == "bytes=1000-"

Only the standard library is needed unless a TLS mode is used (trustme).
"""
from __future__ import annotations

from . import actions, clocked
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
