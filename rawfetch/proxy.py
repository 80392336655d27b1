"""Proxies as curl does them: which proxy (if any) serves a URL, and the CONNECT tunnel.

Selection (per URL, so every redirect hop and every mirror gets its own decision):
`proxy` ("" disables; None = not given), else with `trust_env` the environment --
`http_proxy` for http (lowercase only: a CGI-set HTTP_PROXY is attacker input, httpoxy
CVE-2016-5385), `https_proxy`/`HTTPS_PROXY` for https, then `all_proxy`/`ALL_PROXY`.
`no_proxy` (else `no_proxy`/`NO_PROXY` with trust_env) exempts hosts, also from an
explicit proxy, as in curl. Plain http goes to the proxy in absolute form; https goes
through `CONNECT host:port`, and TLS (SNI, certificate, hostname) is then done with the
origin inside the tunnel. Proxy credentials only ever go to the proxy.
"""
from __future__ import annotations

import os
import socket
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from .credentials import basic, percent_decoded, split_user
from .errors import (ConnectError, DNSError, FetchError, HTTPStatusError, InvalidRequest,
                     ProtocolError, ProxyConnectError, ProxyResolveError, ProxyTunnelClosed,
                     ProxyTunnelError)
from .http11 import HeadParser, build_connect
from .url import URL, parse_url

DEFAULT_PROXY_PORT = 1080   # curl's port for a proxy URL that names none
CONNECT_RECV_SIZE = 16384   # CONNECT answers are a few hundred bytes; HeadParser bounds the rest
PROXY_ENV = {"http": ("http_proxy",), "https": ("https_proxy", "HTTPS_PROXY")}
ALL_PROXY_ENV = ("all_proxy", "ALL_PROXY")
NO_PROXY_ENV = ("no_proxy", "NO_PROXY")
_SEPARATORS = ", \t\r\n"    # curl splits no_proxy on commas and spaces


class Proxy(NamedTuple):
    """An http:// proxy: where to connect, and its Basic credential (never shown)."""
    host: str
    port: int
    authorization: Optional[str] = None

    @property
    def url(self) -> URL:
        return URL("http", self.host, self.port, "/")

    @property
    def shown(self) -> str:
        """How the proxy appears in events and messages: no credentials, ever."""
        return "http://%s:%d" % ("[%s]" % self.host if ":" in self.host else self.host,
                                 self.port)


def parse_proxy(text: str, proxy_user: Optional[str] = None) -> Proxy:
    """`[http://][user:pass@]host[:port]` (curl's -x); proxy_user overrides the userinfo."""
    if not isinstance(text, str):
        raise InvalidRequest("option proxy must be a URL string")
    if "://" not in text:
        text = "http://" + text
    scheme = text.partition("://")[0].lower()
    if scheme != "http":
        raise InvalidRequest("proxy scheme %r is not supported (http:// proxies only)"
                             % scheme[:20])
    parsed = parse_url(text)
    port = parsed.port if _names_port(text) else DEFAULT_PROXY_PORT
    pair = proxy_user
    if pair is None and parsed.userinfo is not None:
        user, colon, password = parsed.userinfo.partition(":")
        pair = "%s:%s" % (percent_decoded(user), percent_decoded(password))
    auth = basic(*split_user(pair, "proxy_user")) if pair is not None else None
    return Proxy(parsed.host, port, auth)


def _names_port(text: str) -> bool:
    authority = text.partition("://")[2]
    for stop in "/?#":
        authority = authority.partition(stop)[0]
    hostport = authority.rpartition("@")[2]
    tail = hostport.rpartition("]")[2] if hostport.startswith("[") else hostport
    return ":" in tail


def _first_set(environ: Mapping[str, str], names: Sequence[str]) -> Optional[str]:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def select_proxy(url: URL, options: Any,
                 environ: Optional[Mapping[str, str]] = None) -> Optional[Proxy]:
    """The proxy for this URL, or None to connect directly."""
    env = os.environ if environ is None else environ
    text = options.proxy
    if text is None and options.trust_env:
        text = _first_set(env, PROXY_ENV.get(url.scheme, ()) + ALL_PROXY_ENV)
    if not text:
        return None
    exempt = options.no_proxy
    if exempt is None and options.trust_env:
        exempt = next((env[name] for name in NO_PROXY_ENV if name in env), None)
    if exempt and NoProxy(exempt).matches(url.host):
        return None
    return parse_proxy(text, options.proxy_user)


# ---------------------------------------------------------------- no_proxy

Network = Tuple[int, int, int]   # (family, address as int, prefix length)


class NoProxy:
    """curl's no-proxy matcher: `*`; names match themselves and their subdomains (a
    leading dot is optional); IPv4/IPv6 literals and CIDR ranges match hosts given as
    literals; an entry's `:port` is ignored; non-ASCII names compare in IDNA form."""

    def __init__(self, spec: Union[str, Sequence[str]]) -> None:
        items = spec.replace(",", " ").split() if isinstance(spec, str) else [
            part for item in spec for part in str(item).replace(",", " ").split()]
        self.everything = "*" in items
        self.names: List[str] = []
        self.networks: List[Network] = []
        for item in items:
            self._add(item)

    def _add(self, item: str) -> None:
        entry, slash, bits = item.partition("/")
        if entry.startswith("["):
            entry = entry[1:].partition("]")[0]
        elif entry.count(":") == 1:
            entry = entry.partition(":")[0]      # host:port -> host (any port)
        network = _network(entry, bits if slash else None)
        if network is not None:
            self.networks.append(network)
        elif not slash and entry not in ("", "*"):
            name = _idna(entry.strip(".").lower())
            if name:
                self.names.append(name)

    def matches(self, host: str) -> bool:
        if self.everything:
            return True
        address = _address(host.partition("%")[0])
        if address is not None:
            return any(family == address[0] and _same_prefix(address[1], net, bits, family)
                       for family, net, bits in self.networks)
        host = host.rstrip(".").lower()
        return any(host == name or host.endswith("." + name) for name in self.names)


def _address(text: str) -> Optional[Tuple[int, int]]:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            return family, int.from_bytes(socket.inet_pton(family, text), "big")
        except (OSError, ValueError):  # not I/O: inet_pton saying "not an address"
            continue
    return None


def _network(entry: str, bits: Optional[str]) -> Optional[Network]:
    address = _address(entry)
    if address is None:
        return None
    width = 32 if address[0] == socket.AF_INET else 128
    if bits is None:
        return address[0], address[1], width
    if not bits.isdigit() or not 0 <= int(bits) <= width:
        return None
    return address[0], address[1], int(bits)


def _same_prefix(address: int, network: int, bits: int, family: int) -> bool:
    shift = (32 if family == socket.AF_INET else 128) - bits
    return address >> shift == network >> shift


def _idna(name: str) -> str:
    if name.isascii():
        return name
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


# ---------------------------------------------------------------- connecting

def proxy_failure(exc: FetchError, proxy: Proxy) -> FetchError:
    """Name the proxy in a resolve/connect failure; curl's 5 for its unresolvable host."""
    if isinstance(exc, DNSError):
        return ProxyResolveError("cannot resolve proxy %s: %s" % (proxy.shown, exc.message),
                                 retryable=exc.retryable)
    if isinstance(exc, ConnectError):
        return ProxyConnectError("cannot connect to proxy %s: %s"
                                 % (proxy.shown, exc.message.replace("cannot connect: ", "")))
    exc.message = "proxy %s: %s" % (proxy.shown, exc.message)
    return exc


def with_proxy_auth(headers: List[Tuple[str, str]], proxy: Proxy) -> List[Tuple[str, str]]:
    """Plain http through the proxy: its credential rides along (an explicit
    Proxy-Authorization header from the caller wins)."""
    if proxy.authorization is None or any(k.lower() == "proxy-authorization"
                                          for k, _ in headers):
        return headers
    return headers + [("Proxy-Authorization", proxy.authorization)]


def proxy_refused(proxy: Proxy, head: Any) -> HTTPStatusError:
    """A 407 to a plain-http request names the proxy; it is never retried."""
    return HTTPStatusError("proxy %s refused the request: HTTP %d %s (check the proxy "
                           "credentials)" % (proxy.shown, head.status, head.reason),
                           status=head.status, reason=head.reason, retryable=False)


def open_tunnel(conn: Any, url: URL, proxy: Proxy, user_agent: str) -> None:
    """Ask the proxy for a tunnel to url's host:port; return once it is open.

    Bounded like any exchange (the Connection enforces idle_timeout, the low-speed rule
    and max_time); the answer's head is parsed by HeadParser, so every head limit holds.
    A 2xx opens the tunnel (RFC 9110 s9.3.6: its framing headers are ignored); anything
    else is ProxyTunnelError (curl 56), retried only for 408, 429 and 5xx. A close before
    the head ends is ProxyTunnelClosed (curl 56 too, whether or not a byte came; not
    curl's 52 or 18, which it keeps for an origin's answer)."""
    conn.send_all(build_connect(url.host, url.port, user_agent, proxy.authorization))
    conn.phase = "the proxy's CONNECT answer"
    parser = HeadParser()
    view = memoryview(bytearray(CONNECT_RECV_SIZE))
    received = 0
    try:
        while True:
            size = conn.recv_into(view)
            if not size:
                raise ProxyTunnelClosed("the connection closed %s" % (
                    "in the middle of the CONNECT answer (%d bytes)" % received if received
                    else "before any byte of the CONNECT answer"))
            received += size
            head, leftover = parser.feed(bytes(view[:size]))
            if head is not None:
                break
    except FetchError as exc:
        exc.message = "proxy %s: %s" % (proxy.shown, exc.message)
        raise
    if not 200 <= head.status < 300:
        raise ProxyTunnelError("proxy %s answered CONNECT %s:%d with %d %s"
                               % (proxy.shown, url.host, url.port, head.status, head.reason),
                               status=head.status)
    if leftover:
        raise ProtocolError("proxy %s sent %d bytes after its CONNECT answer, before TLS"
                            % (proxy.shown, len(leftover)))
    conn.phase = "recv"
