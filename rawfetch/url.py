"""Strict URL parsing: only http/https, no controls anywhere, IDNA hosts, default ports.

Written by hand (not urllib.parse) so that every byte that can reach the request line
is checked once, here, before any connection is made (CVE-2019-9740, CVE-2019-11236).
"""
from __future__ import annotations

import socket
from typing import NamedTuple, Optional, Tuple

from .errors import InvalidRequest

DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 3986 unreserved + sub-delims + ":@/?%" may appear in a target as they are; other
# printable ASCII (e.g. '"', '<', '>', '\\', '^', '`', '{', '|', '}') is percent-encoded
# like browsers and requests do.
_TARGET_SAFE = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%")
_HOST_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
# RFC 6874 ZoneID: unreserved / pct-encoded; anything else would reach the Host header raw.
_ZONE_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%")
MAX_URL_LENGTH = 65536  # longer than any real image URL; bounds work on hostile input


class URL(NamedTuple):
    scheme: str
    host: str            # lowercase ASCII; IPv6 without brackets
    port: int
    target: str          # path + query, percent-encoded ASCII, never empty
    userinfo: Optional[str] = None

    @property
    def origin(self) -> Tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        host = "[%s]" % self.host if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return host
        return "%s:%d" % (host, self.port)

    def __str__(self) -> str:
        return "%s://%s%s" % (self.scheme, self.host_header, self.target)


def _reject_controls(text: str, what: str) -> None:
    for index, char in enumerate(text):
        if char <= " " or char == "\x7f":
            raise InvalidRequest("%s contains %r at position %d" % (what, char, index))


def parse_url(text: str) -> URL:
    """Parse an absolute http(s) URL; raise InvalidRequest for anything else."""
    if not isinstance(text, str):
        raise InvalidRequest("URL must be a str, not %s" % type(text).__name__)
    if len(text) > MAX_URL_LENGTH:
        raise InvalidRequest("URL longer than %d characters" % MAX_URL_LENGTH)
    _reject_controls(text, "URL")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        shown = scheme if sep else text.partition(":")[0]
        raise InvalidRequest("unsupported URL scheme %r (only http and https)" % shown, url=text)
    rest = rest.partition("#")[0]
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, target = rest[:cut], rest[cut:]
    userinfo, at, hostport = authority.rpartition("@")
    host, port = _split_hostport(hostport, scheme, text)
    if target.startswith("?") or not target:
        target = "/" + target
    return URL(scheme, host, port, _encode_target(target), userinfo if at else None)


def _split_hostport(hostport: str, scheme: str, text: str) -> Tuple[str, int]:
    if hostport.startswith("["):
        host, bracket, port_text = hostport[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise InvalidRequest("malformed IPv6 literal in URL", url=text)
        address, percent, zone = host.partition("%")
        try:
            socket.inet_pton(socket.AF_INET6, address)
        except OSError:  # not I/O: inet_pton's way of saying "not an address"
            raise InvalidRequest("invalid IPv6 address %r" % host, url=text) from None
        if percent and (not zone or set(zone) - _ZONE_SAFE):
            raise InvalidRequest("invalid IPv6 zone identifier %r" % zone, url=text)
        port_text = port_text[1:]
    else:
        host, _, port_text = hostport.partition(":")
        host = _encode_host(host, text)
    if not host:
        raise InvalidRequest("URL has no host", url=text)
    if not port_text:
        return host.lower(), DEFAULT_PORTS[scheme]
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidRequest("invalid port %r" % port_text, url=text)
    return host.lower(), int(port_text)


def _encode_host(host: str, text: str) -> str:
    """Lowercase ASCII host; non-ASCII names go through IDNA (Python's IDNA 2003 codec)."""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidRequest("host %r is not a valid IDNA name" % host, url=text) from None
    host = host.lower()
    bad = set(host) - _HOST_SAFE
    if bad:
        raise InvalidRequest("host contains %r" % "".join(sorted(bad)), url=text)
    return host


def _encode_target(target: str) -> str:
    if all(char in _TARGET_SAFE for char in target):
        return target
    out = []
    for char in target:
        if char in _TARGET_SAFE:
            out.append(char)
        else:
            out.extend("%%%02X" % byte for byte in char.encode("utf-8"))
    return "".join(out)


def join_url(base: URL, location: str) -> URL:
    """Resolve a redirect's Location against the current URL (RFC 3986 section 5)."""
    _reject_controls(location, "redirect Location")
    _reject_empty_authority(location)
    from urllib.parse import urljoin  # only when a redirect happens: keeps import light
    try:
        joined = urljoin(str(base), location)
    except ValueError as exc:  # e.g. unbalanced IPv6 brackets
        raise InvalidRequest("malformed redirect Location %r: %s" % (location[:200], exc)) from None
    return parse_url(joined)


_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.")


def _reject_empty_authority(reference: str) -> None:
    """An http(s) reference with an empty host (`http:///h/p`, `http:p`, `///p`) MUST be
    rejected (RFC 9110 s4.2.1); urljoin would quietly keep the current host instead.
    A scheme ends at the first ':' before any '/', '?' or '#' (RFC 3986 s3.1, s4.2)."""
    scheme, colon, rest = reference.partition(":")
    if not colon or not scheme or set(scheme) - _SCHEME_CHARS or not scheme[0].isalpha():
        scheme, rest = "", reference
    if scheme and scheme.lower() not in DEFAULT_PORTS:
        return                       # another scheme: parse_url refuses it by name
    if scheme and not rest.startswith("//"):
        raise InvalidRequest("redirect Location %r is an %s URI without a host (RFC 9110 "
                             "s4.2.1)" % (reference[:200], scheme.lower()))
    if rest.startswith("//"):
        authority = rest[2:]
        for end in "/?#":
            authority = authority.partition(end)[0]
        host = authority.rpartition("@")[2]
        if not host or host.startswith(":"):
            raise InvalidRequest("redirect Location %r has an empty host (RFC 9110 "
                                 "s4.2.1)" % reference[:200])
