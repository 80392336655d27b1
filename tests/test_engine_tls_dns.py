"""TLS verification and handshake faults; name resolution through the fault DNS responder.

On the virtual clock (tests/vclock.py): the slow DNS answer and the TLS stall take no
real time, and the elapsed times asserted are virtual."""
from __future__ import annotations

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch import timing
from tests.faultserver import (DNSResponder, actions as A, dns_answer, dns_nxdomain,
                               dns_query, dns_servfail, make_body)

pytestmark = [pytest.mark.timeout(30), pytest.mark.virtual_clock]   # conftest: the virtual clock


BODY = make_body(200000, seed=3)
# Upper time bounds: whatever would end the wait if the bound under test failed is made
# ALTERNATIVE seconds long, and the test asserts an elapsed time under ALTERNATIVE / 2.
ALTERNATIVE = 20.0


def tls(make_server, mode: str):
    srv = make_server(tls=mode)
    srv.add("/img", BODY)
    return srv


def fetch(url: str, **options) -> bytes:
    options.setdefault("idle_timeout", 2.0)
    with rawfetch.request("GET", url, **options) as response:
        return response.read()


def test_verified_tls_download_with_cafile(make_server):
    srv = tls(make_server, "ok")
    assert srv.url("/img").startswith("https://localhost:")
    assert fetch(srv.url("/img"), cafile=srv.ca_path) == BODY


def test_ip_literal_is_checked_against_the_certificate(make_server):
    srv = tls(make_server, "ok")
    assert fetch("https://127.0.0.1:%d/img" % srv.port, cafile=srv.ca_path) == BODY


def test_system_cas_do_not_trust_a_private_ca(make_server):
    srv = tls(make_server, "ok")
    with pytest.raises(E.CertificateError) as info:
        fetch(srv.url("/img"))
    assert info.value.exit_code == 60 and not info.value.retryable


@pytest.mark.parametrize("mode,words", [("expired", "expired"), ("wrong_host", "match"),
                                        ("untrusted", "issuer")])
def test_bad_certificates_are_certificate_errors(make_server, mode, words):
    srv = tls(make_server, mode)
    with pytest.raises(E.CertificateError) as info:
        fetch(srv.url("/img"), cafile=srv.ca_path)
    assert words in str(info.value).lower() and not info.value.retryable


def test_insecure_skips_verification_explicitly(make_server):
    srv = tls(make_server, "wrong_host")
    assert fetch(srv.url("/img"), insecure=True) == BODY


def test_resolve_pin_keeps_the_url_host_for_sni_and_checks(make_server):
    srv = tls(make_server, "ok")
    url = "https://localhost:%d/img" % srv.port
    pin = "localhost:%d:127.0.0.1" % srv.port
    assert fetch(url, cafile=srv.ca_path, resolve=[pin]) == BODY
    assert srv.requests[0].headers["host"] == "localhost:%d" % srv.port


@pytest.mark.parametrize("mode", ["tls1_0", "plaintext"])
def test_handshake_failures_are_tls_errors(make_server, mode):
    srv = tls(make_server, mode)
    with pytest.raises(E.TLSHandshakeError) as info:
        fetch(srv.url("/img"), cafile=srv.ca_path)
    assert info.value.exit_code == 35


def test_handshake_stall_is_bounded_by_idle_timeout(make_server):
    srv = tls(make_server, "ok")
    srv.script([A.tls_stall(ALTERNATIVE)])   # then FIN: a handshake error, not a timeout
    started = timing.now()
    with pytest.raises(E.IdleTimeout) as info:
        fetch(srv.url("/img"), cafile=srv.ca_path, idle_timeout=0.4)
    assert timing.now() - started < ALTERNATIVE / 2
    assert 0.4 <= timing.now() - started < 0.4 + 1e-6   # virtual: the bound, exactly
    assert "TLS handshake" in str(info.value)


def test_default_context_requires_certificates_and_hostnames():
    import ssl
    from rawfetch.net import tls_context
    strict = tls_context(rawfetch.Options())
    assert strict.verify_mode == ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version >= ssl.TLSVersion.TLSv1_2
    loose = tls_context(rawfetch.Options(insecure=True))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname


def test_https_to_http_redirect_refused_unless_allowed(make_server, server):
    srv = tls(make_server, "ok")
    srv.script([A.redirect(302, server.url("/img"))])
    with pytest.raises(E.UnsafeRedirect):
        fetch(srv.url("/img"), cafile=srv.ca_path)
    data = fetch(srv.url("/img"), cafile=srv.ca_path, allow_insecure_redirect=True)
    assert data == server.resource("/img").data


@pytest.fixture
def dns():
    with DNSResponder({"img.test": ["127.0.0.1"]}) as responder:
        yield responder


def resolver_for(responder, timeout: float = 5.0):
    return lambda host, port: dns_query("127.0.0.1", responder.port, host, timeout=timeout)


def test_resolver_answer_is_used_and_host_kept(dns, server, body):
    url = "http://img.test:%d/img" % server.port
    assert fetch(url, resolver=resolver_for(dns)) == body
    assert server.requests[0].headers["host"] == "img.test:%d" % server.port
    assert dns.queries[0][1] == "img.test"


def test_slow_dns_trips_dns_timeout(dns, server):
    dns.script([dns_answer(delay=ALTERNATIVE)])   # else the answer comes and the GET works
    started = timing.now()
    with pytest.raises(E.DNSTimeout) as info:
        fetch("http://img.test:%d/img" % server.port,
              resolver=resolver_for(dns, timeout=ALTERNATIVE), dns_timeout=0.3)
    assert timing.now() - started < ALTERNATIVE / 2
    assert 0.3 <= timing.now() - started < 0.3 + 1e-6   # virtual: the bound, exactly
    assert info.value.retryable and info.value.exit_code == 28


def test_servfail_is_a_retryable_dns_error(dns, server):
    dns.script([dns_servfail()])
    with pytest.raises(E.DNSError) as info:
        fetch("http://img.test:%d/img" % server.port, resolver=resolver_for(dns))
    assert info.value.retryable and info.value.exit_code == 6


def test_nxdomain_is_final(dns, server):
    dns.script([dns_nxdomain()])
    with pytest.raises(E.DNSError) as info:
        fetch("http://img.test:%d/img" % server.port, resolver=resolver_for(dns))
    assert not info.value.retryable and info.value.exit_code == 6


def test_system_resolver_nxdomain_for_invalid_tld():
    with pytest.raises(E.DNSError) as info:
        fetch("http://no-such-host.invalid/x")
    assert info.value.exit_code == 6


def test_bad_resolve_entry_is_invalid_request():
    for entry in ("nohost", "h:notaport:1.2.3.4", "h:80:not-an-ip"):
        with pytest.raises(E.InvalidRequest):
            fetch("http://h/x", resolve=[entry])


def test_resolver_returning_garbage_is_a_dns_error(server):
    with pytest.raises(E.DNSError):
        fetch("http://img.test:%d/img" % server.port, resolver=lambda h, p: ["bogus"])
