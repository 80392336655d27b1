"""Client certificates and TLS options against real TLS servers, directly and through a
CONNECT tunnel: --cert/--key (key inside the cert file or apart), --capath, --tlsv1.3,
and a server that demands a certificate the client lacks (exit 35, never retried)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, Iterator, List, Optional

import pytest

import rawfetch
from rawfetch import errors as E
from tests.faultserver import FaultServer
from tests.proxyserver import TestProxy
from tests.timing_options import quick

# Every test on the virtual clock (tests/vclock.py): stalls, backoffs and timeouts take
# virtual seconds.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]

BODY = bytes(range(256)) * 400


@pytest.fixture
def mtls(make_server) -> FaultServer:
    server = make_server(tls="mtls")
    server.add("/img", BODY)
    return server


@pytest.fixture(params=["direct", "tunnel"])
def route(request) -> Iterator[Dict[str, str]]:
    """Options that reach the origin directly, or through the in-repo CONNECT proxy."""
    if request.param == "direct":
        yield {}
        return
    with TestProxy() as relay:
        yield {"proxy": relay.url()}


def split_pem(combined: str, directory: str) -> List[str]:
    """The combined key+certificate PEM as two files: (cert, key)."""
    with open(combined) as handle:
        text = handle.read()
    end = re.search(r"-----END [A-Z ]*PRIVATE KEY-----\n", text)
    assert end is not None, "no private key in %s" % combined
    key, cert = text[:end.end()], text[end.end():]
    paths = [os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")]
    for path, part in zip(paths, (cert, key)):
        with open(path, "w") as handle:
            handle.write(part)
    return paths


def test_client_certificate_with_the_key_in_the_same_file(mtls, route):
    response = rawfetch.request("GET", mtls.url("/img"), cafile=mtls.ca_path,
                                cert=mtls.client_cert, **route)
    assert response.read() == BODY


def test_client_certificate_and_key_in_separate_files(mtls, route, tmp_path):
    cert, key = split_pem(mtls.client_cert, str(tmp_path))
    response = rawfetch.request("GET", mtls.url("/img"), cafile=mtls.ca_path, cert=cert,
                                key=key, **route)
    assert response.read() == BODY


def test_missing_client_certificate_is_exit_35_and_never_retried(mtls, route, tmp_path):
    """With TLS 1.3 the server's refusal comes after the client's handshake ended, and its
    alert is often lost to a reset: repeated to show the verdict does not depend on it."""
    for attempt in range(8):
        before = mtls.connection_count
        with pytest.raises(E.ClientCertificateError) as caught:
            rawfetch.download(mtls.url("/img"), tmp_path / "img", cafile=mtls.ca_path,
                              retries=5, **quick(**route))
        assert caught.value.exit_code == 35 and not caught.value.retryable
        assert mtls.connection_count == before + 1, "retried"
        assert "client certificate" in str(caught.value)
    assert not (tmp_path / "img").exists()


def test_a_certificate_from_another_ca_is_refused_the_same_way(mtls, make_server, route,
                                                               tmp_path):
    stranger = make_server(tls="mtls")     # its client certificate: another CA
    before = mtls.connection_count
    with pytest.raises(E.ClientCertificateError):
        rawfetch.download(mtls.url("/img"), tmp_path / "img", cafile=mtls.ca_path,
                          cert=stranger.client_cert, retries=5, **quick(**route))
    assert mtls.connection_count == before + 1


def test_unreadable_client_certificate_is_an_invalid_request(mtls, tmp_path):
    (tmp_path / "garbage.pem").write_text("not a certificate")
    for cert in (str(tmp_path / "absent.pem"), str(tmp_path / "garbage.pem")):
        with pytest.raises(E.InvalidRequest, match="client certificate"):
            rawfetch.request("GET", mtls.url("/img"), cafile=mtls.ca_path, cert=cert)
    assert mtls.connection_count == 0


def test_an_optional_certificate_request_does_not_fail_a_client_without_one(make_server):
    """A server that asks but does not require a certificate still serves: the note taken
    during the handshake only explains a failure, it never causes one."""
    server = make_server(tls="ok")
    server.add("/img", BODY)
    import ssl
    server._tls.context.verify_mode = ssl.CERT_OPTIONAL
    server._tls.context.load_verify_locations(server.ca_path)
    assert rawfetch.request("GET", server.url("/img"), cafile=server.ca_path).read() == BODY


def _hashed_ca_dir(ca_path: str, directory: str) -> Optional[str]:
    """A --capath directory: the CA under its OpenSSL subject-hash name."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    digest = subprocess.run([openssl, "x509", "-hash", "-noout", "-in", ca_path],
                            stdout=subprocess.PIPE, check=True, timeout=10).stdout.decode().strip()
    os.makedirs(directory, exist_ok=True)
    shutil.copy(ca_path, os.path.join(directory, digest + ".0"))
    return directory


def test_capath_directory_replaces_the_system_cas(make_server, route, tmp_path):
    server = make_server(tls="ok")
    server.add("/img", BODY)
    capath = _hashed_ca_dir(server.ca_path, str(tmp_path / "cas"))
    if capath is None:
        pytest.skip("openssl is needed to hash the CA for --capath")
    assert rawfetch.request("GET", server.url("/img"), capath=capath, **route).read() == BODY
    (tmp_path / "empty").mkdir()
    with pytest.raises(E.CertificateError):
        rawfetch.request("GET", server.url("/img"), capath=str(tmp_path / "empty"), **route)


def test_tls13_minimum_refuses_a_tls12_server_once(make_server, route, tmp_path):
    server = make_server(tls="tls1_2")
    server.add("/img", BODY)
    assert rawfetch.request("GET", server.url("/img"), cafile=server.ca_path,
                            **route).read() == BODY                 # 1.2 is fine by default
    before = server.connection_count
    with pytest.raises(E.TLSHandshakeError) as caught:
        rawfetch.download(server.url("/img"), tmp_path / "img", cafile=server.ca_path,
                          tls_min="1.3", retries=3, **quick(**route))
    assert caught.value.exit_code == 35 and not caught.value.retryable
    assert server.connection_count == before + 1


def test_tls13_minimum_against_a_modern_server(make_server, route):
    server = make_server(tls="ok")
    server.add("/img", BODY)
    events: List[dict] = []
    response = rawfetch.request("GET", server.url("/img"), cafile=server.ca_path,
                                tls_min="1.3", on_event=events.append, **route)
    assert response.read() == BODY
    assert [e["version"] for e in events if e["event"] == "tls"] == ["TLSv1.3"]


def test_tls_min_must_be_a_known_version():
    with pytest.raises(E.InvalidRequest, match="tls_min"):
        rawfetch.request("GET", "https://localhost/", tls_min="1.1")
