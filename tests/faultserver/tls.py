"""TLS material for FaultServer: a good setup and several realistic bad ones.

`trustme` is imported only here and only when a TLS server is built, so the
plain-HTTP server needs nothing outside the standard library.
"""
from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Optional

MODES = ("ok", "expired", "wrong_host", "untrusted", "tls1_0", "plaintext", "mtls",
         "tls1_2")
IDENTITIES = ("localhost", "127.0.0.1", "::1")
# TLS 1.0 record header + fatal(2) protocol_version(70) alert.
PROTOCOL_VERSION_ALERT = b"\x15\x03\x01\x00\x02\x02\x46"


@dataclass
class TLSSetup:
    """Server-side TLS state for one FaultServer.

    context None means "do not wrap": plain HTTP on the TLS port
    (mode "plaintext"), or, if alert_only, the TLS 1.0 fallback below.
    """

    mode: str
    context: Optional[ssl.SSLContext]
    ca_path: str
    tmpdir: str
    alert_only: bool = False
    client_cert: Optional[str] = None   # "mtls": PEM with a client cert and its key

    def cleanup(self) -> None:
        """Remove the temp dir holding the CA file."""
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _trustme() -> Any:
    """Import trustme on demand with a helpful message if it is missing."""
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on environment
        raise RuntimeError("TLS modes need the 'trustme' package") from exc
    return trustme


def _server_context(cert: Any) -> ssl.SSLContext:
    """A server context presenting `cert` (a trustme LeafCert)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    return ctx


def _expired_cert(ca: Any) -> Any:
    """A cert valid for the right names whose notAfter is in the past.

    trustme >= 1.2 takes not_before; 0.9-1.1 only not_after (their
    notBefore is fixed at 2000-01-01, so that alone suffices).
    """
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    past = now - datetime.timedelta(days=1)
    try:
        return ca.issue_cert(*IDENTITIES, not_after=past,
                             not_before=now - datetime.timedelta(days=30))
    except TypeError:
        pass
    try:
        return ca.issue_cert(*IDENTITIES, not_after=past)
    except TypeError as exc:
        raise RuntimeError("tls='expired' needs trustme >= 0.9") from exc


def _tls10_context(cert: Any) -> Optional[ssl.SSLContext]:
    """A context limited to TLS 1.0, or None if OpenSSL refuses to build it.

    When None, the server answers every ClientHello with a TLS
    protocol_version alert, which is what a modern client sees from a real
    TLS-1.0-only server anyway.
    """
    try:
        ctx = _server_context(cert)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
            ctx.maximum_version = ssl.TLSVersion.TLSv1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        return ctx
    except (ValueError, ssl.SSLError, AttributeError):
        return None


def build(mode: str) -> TLSSetup:
    """Create CA(s), certificate and context for `mode` (see MODES)."""
    if mode not in MODES:
        raise ValueError("tls must be one of %s or None" % (MODES,))
    trustme = _trustme()
    ca = trustme.CA()
    tmpdir = tempfile.mkdtemp(prefix="faultserver-tls-")
    ca_path = os.path.join(tmpdir, "ca.pem")
    ca.cert_pem.write_to_path(ca_path)
    ctx: Optional[ssl.SSLContext] = None
    alert_only = False
    if mode == "ok":
        ctx = _server_context(ca.issue_cert(*IDENTITIES))
    elif mode == "expired":
        ctx = _server_context(_expired_cert(ca))
    elif mode == "wrong_host":
        ctx = _server_context(ca.issue_cert("wrong.example"))
    elif mode == "untrusted":
        ctx = _server_context(trustme.CA().issue_cert(*IDENTITIES))
    elif mode == "tls1_0":
        ctx = _tls10_context(ca.issue_cert(*IDENTITIES))
        alert_only = ctx is None
    elif mode == "tls1_2":  # a server that stops at TLS 1.2 (for clients demanding 1.3)
        ctx = _server_context(ca.issue_cert(*IDENTITIES))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client_cert = None
    if mode == "mtls":  # mutual TLS: a client certificate from the same CA is required
        ctx = _server_context(ca.issue_cert(*IDENTITIES))
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(ca_path)
        client_cert = os.path.join(tmpdir, "client.pem")
        ca.issue_cert("rawfetch-client@example.org").private_key_and_cert_chain_pem \
            .write_to_path(client_cert)
    return TLSSetup(mode, ctx, ca_path, tmpdir, alert_only, client_cert)
