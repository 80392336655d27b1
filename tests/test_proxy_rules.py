"""Tables for the pure rules of issue 11: the no-proxy matcher, proxy selection from
options and the environment, proxy URLs, netrc parsing and lookup, credential precedence
and the redaction helpers. (The wire behaviour is in test_proxy.py and test_credentials.py.)
"""
from __future__ import annotations

import base64
from typing import Dict, Optional

import pytest

from rawfetch import errors as E
from rawfetch.credentials import (NetrcEntry, lookup_netrc, netrc_entry, origin_authorization,
                                  parse_netrc, read_header_file, secrets_of)
from rawfetch.redact import MASK, redact_argv, redact_text, redact_url
from rawfetch.options import Options
from rawfetch.proxy import DEFAULT_PROXY_PORT, NoProxy, parse_proxy, select_proxy
from rawfetch.url import parse_url

# ---------------------------------------------------------------- no_proxy matcher

NO_PROXY_TABLE = [
    # (no_proxy, host, bypass?)
    ("example.com", "example.com", True),
    ("example.com", "www.example.com", True),           # subdomains
    ("example.com", "a.b.example.com", True),
    ("example.com", "notexample.com", False),           # a suffix is not a subdomain
    ("example.com", "example.com.evil.net", False),
    (".example.com", "example.com", True),              # leading dot optional
    (".example.com", "www.example.com", True),
    ("www.example.com", "example.com", False),          # never upwards
    ("EXAMPLE.com", "example.com", True),               # case-insensitive
    ("example.com.", "www.example.com", True),          # trailing dot of the entry
    ("example.com", "example.com.", True),              # and of the host (FQDN form)
    ("example.com:8080", "example.com", True),          # :port ignored: any port
    ("a.test, b.test", "b.test", True),                 # commas and spaces separate
    ("a.test b.test", "x.b.test", True),
    ("a.test,,  ,b.test", "a.test", True),
    ("*", "anything.example", True),
    ("*", "10.1.2.3", True),
    ("a.test,*", "other.test", True),                   # '*' as any entry (see docs)
    ("", "example.com", False),
    ("10.1.2.3", "10.1.2.3", True),                     # IPv4 literal
    ("10.1.2.3", "10.1.2.4", False),
    ("10.1.2.3:3128", "10.1.2.3", True),
    ("10.0.0.0/8", "10.200.3.4", True),                 # CIDR v4
    ("10.0.0.0/8", "11.0.0.1", False),
    ("192.168.1.0/24", "192.168.1.255", True),
    ("192.168.1.0/24", "192.168.2.1", False),
    ("0.0.0.0/0", "8.8.8.8", True),
    ("10.0.0.0/33", "10.0.0.1", False),                 # invalid prefix: ignored
    ("10.0.0.0/8", "ten.example", False),               # CIDR never matches names
    ("127.0.0.1", "localhost", False),                  # literals match literals only
    ("localhost", "127.0.0.1", False),
    ("::1", "::1", True),                               # IPv6 literal
    ("[::1]", "::1", True),
    ("[::1]:8080", "::1", True),
    ("::1", "::2", False),
    ("fd00::/8", "fd12:3456::1", True),                 # CIDR v6
    ("fd00::/8", "fe80::1", False),
    ("[fe80::]/10", "fe80::abcd", True),
    ("2001:db8::/32", "2001:db8:ffff::1", True),
    ("2001:db8::/32", "2001:db9::1", False),
    ("10.0.0.0/8", "::ffff:10.0.0.1", False),           # families never mix
    ("fe80::/10", "fe80::1%eth0", True),                # zone id ignored
    ("bücher.example", "xn--bcher-kva.example", True),  # IDNA entry vs punycode host
    ("bücher.example", "www.xn--bcher-kva.example", True),
]


@pytest.mark.parametrize("spec,host,bypass", NO_PROXY_TABLE)
def test_no_proxy_matcher(spec: str, host: str, bypass: bool) -> None:
    assert NoProxy(spec).matches(host) is bypass


def test_no_proxy_accepts_a_list() -> None:
    matcher = NoProxy(["a.test", "10.0.0.0/8, b.test"])
    assert matcher.matches("x.a.test") and matcher.matches("10.9.9.9")
    assert matcher.matches("b.test") and not matcher.matches("c.test")


# ---------------------------------------------------------------- proxy URLs

@pytest.mark.parametrize("text,host,port", [
    ("proxy.lan", "proxy.lan", DEFAULT_PROXY_PORT),      # curl: 1080 when none is named
    ("http://proxy.lan", "proxy.lan", DEFAULT_PROXY_PORT),
    ("http://proxy.lan:3128", "proxy.lan", 3128),
    ("proxy.lan:3128/ignored/path", "proxy.lan", 3128),
    ("HTTP://Proxy.LAN:80", "proxy.lan", 80),
    ("http://[::1]:3128", "::1", 3128),
    ("http://[::1]", "::1", DEFAULT_PROXY_PORT),
    ("http://u:p@10.0.0.1:8080", "10.0.0.1", 8080),
])
def test_proxy_url_forms(text: str, host: str, port: int) -> None:
    proxy = parse_proxy(text)
    assert (proxy.host, proxy.port) == (host, port)
    assert "@" not in proxy.shown and str(port) in proxy.shown


def _basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def test_proxy_credentials_from_userinfo_or_proxy_user() -> None:
    assert parse_proxy("http://alice:s%40cret@p:3128").authorization == _basic("alice:s@cret")
    assert parse_proxy("http://p:3128").authorization is None
    assert parse_proxy("http://alice:x@p:3128", "bob:pw").authorization == _basic("bob:pw")
    assert parse_proxy("p:3128", "bob:").authorization == _basic("bob:")


@pytest.mark.parametrize("text", ["https://p:443", "socks5://p:1080", "http://p:99999",
                                  "http://p q:1", "http://p\r\n:1"])
def test_unsupported_or_malformed_proxy_is_an_invalid_request(text: str) -> None:
    with pytest.raises(E.InvalidRequest):
        parse_proxy(text)


# ---------------------------------------------------------------- selection

HTTP = parse_url("http://img.example/a")
HTTPS = parse_url("https://img.example/a")
P1, P2, P3 = "http://p1:1", "http://p2:2", "http://p3:3"


def chosen(url, env: Dict[str, str], **options) -> Optional[str]:
    proxy = select_proxy(url, Options(**options), environ=env)
    return None if proxy is None else proxy.shown


@pytest.mark.parametrize("url,env,expected", [
    (HTTP, {"http_proxy": P1}, P1),
    (HTTP, {"HTTP_PROXY": P1}, None),                    # httpoxy: never the uppercase
    (HTTP, {"HTTP_PROXY": P1, "all_proxy": P3}, P3),
    (HTTPS, {"https_proxy": P2}, P2),
    (HTTPS, {"HTTPS_PROXY": P2}, P2),
    (HTTPS, {"https_proxy": P1, "HTTPS_PROXY": P2}, P1),  # lowercase first
    (HTTPS, {"http_proxy": P1}, None),                   # the scheme's own variable only
    (HTTP, {"https_proxy": P2}, None),
    (HTTP, {"all_proxy": P3}, P3),
    (HTTPS, {"ALL_PROXY": P3}, P3),
    (HTTPS, {"https_proxy": P2, "all_proxy": P3}, P2),
    (HTTP, {"http_proxy": ""}, None),                    # empty = unset
    (HTTP, {"http_proxy": "", "all_proxy": P3}, P3),
    (HTTP, {"http_proxy": P1, "no_proxy": "example"}, None),
    (HTTP, {"http_proxy": P1, "NO_PROXY": ".img.example"}, None),
    (HTTP, {"http_proxy": P1, "no_proxy": "other", "NO_PROXY": "img.example"}, P1),
    (HTTP, {"http_proxy": P1, "no_proxy": "*"}, None),
    (HTTP, {}, None),
])
def test_environment_selection(url, env, expected) -> None:
    assert chosen(url, env) == expected


def test_options_over_environment() -> None:
    env = {"http_proxy": P1, "https_proxy": P1, "no_proxy": "img.example"}
    assert chosen(HTTP, env, proxy=P2) is None            # env no_proxy applies (curl)
    assert chosen(HTTP, env, proxy=P2, no_proxy="") == P2  # --noproxy "" overrides it
    assert chosen(HTTPS, env, no_proxy="other") == P1
    assert chosen(HTTP, env, proxy="") is None            # --proxy "" disables
    assert chosen(HTTP, {"http_proxy": P1}, proxy="") is None
    assert chosen(HTTP, {"http_proxy": P1}, trust_env=False) is None
    assert chosen(HTTP, {"no_proxy": "img.example"}, proxy=P2, trust_env=False) == P2
    assert chosen(HTTP, {}, proxy=P2, no_proxy=["a", "img.example"]) is None


# ---------------------------------------------------------------- netrc

NETRC = r'''
# a comment line
machine img.example login alice password s3cret
machine other.example
    login bob
    password "with space \" and quote"   # trailing comment
machine img.example login carol password second
macdef init
machine fake.example login mallory password macro-body

machine tok.example login "" password "tab\there"
default login anon password anon-pw
machine after-default.example login late password late-pw
'''


@pytest.mark.parametrize("host,login,expected", [
    ("img.example", None, ("alice", "s3cret")),          # first match wins
    ("IMG.EXAMPLE", None, ("alice", "s3cret")),
    ("img.example", "carol", ("carol", "second")),       # the URL named the login
    ("other.example", None, ("bob", 'with space " and quote')),
    ("tok.example", None, ("", "tab\there")),
    ("fake.example", None, ("anon", "anon-pw")),         # a macdef body is not an entry
    ("unknown.example", None, ("anon", "anon-pw")),      # default
    ("after-default.example", None, ("late", "late-pw")),
    ("unknown.example", "nobody", None),
])
def test_netrc_lookup(host: str, login: Optional[str], expected) -> None:
    entry = lookup_netrc(parse_netrc(NETRC), host, login)
    assert (None if entry is None else (entry.login, entry.password)) == expected


@pytest.mark.parametrize("text,expected", [
    ("", []),
    ("# only a comment\n", []),
    ("machine", []),                                       # truncated: no name
    ("machine a login", [NetrcEntry("a", None, None)]),    # truncated: no value
    ('machine a password "unterminated', [NetrcEntry("a", None, "unterminated")]),
    ("machine a account x login y", [NetrcEntry("a", "y", None)]),
    ("default\nlogin d password e", [NetrcEntry(None, "d", "e")]),
])
def test_netrc_parser_never_raises(text: str, expected) -> None:
    assert parse_netrc(text) == expected


def test_netrc_missing_file_means_no_credentials(tmp_path) -> None:
    opts = Options(netrc_file=str(tmp_path / "absent"))
    assert netrc_entry("img.example", opts) is None
    opts = Options(netrc_file=str(tmp_path))               # a directory: unreadable
    assert netrc_entry("img.example", opts) is None


def test_netrc_from_environment_variable(tmp_path, monkeypatch) -> None:
    path = tmp_path / "rc"
    path.write_text("machine img.example login env password from-env\n")
    monkeypatch.setenv("NETRC", str(path))
    assert netrc_entry("img.example", Options(netrc=True)).password == "from-env"
    assert netrc_entry("img.example", Options(netrc=False)) is None   # only when asked


# ---------------------------------------------------------------- precedence

def test_origin_credential_precedence(tmp_path) -> None:
    rc = tmp_path / "rc"
    rc.write_text("machine img.example login netrc-user password netrc-pw\n"
                  "machine img.example login urluser password url-netrc-pw\n")
    with_rc = dict(netrc_file=str(rc))
    plain, userinfo = parse_url("http://img.example/a"), parse_url("http://urluser:urlpw@img.example/a")
    login_only = parse_url("http://urluser@img.example/a")
    assert origin_authorization(userinfo, Options(user="cli:pw", **with_rc)) == _basic("cli:pw")
    assert origin_authorization(userinfo, Options(**with_rc)) == _basic("urluser:urlpw")
    assert origin_authorization(plain, Options(**with_rc)) == _basic("netrc-user:netrc-pw")
    assert origin_authorization(login_only, Options(**with_rc)) == _basic("urluser:url-netrc-pw")
    assert origin_authorization(login_only, Options()) == _basic("urluser:")
    assert origin_authorization(plain, Options()) is None


@pytest.mark.parametrize("name", ["user", "proxy_user"])
def test_user_without_password_is_refused(name: str) -> None:
    with pytest.raises(E.InvalidRequest, match="never prompts"):
        Options(**{name: "alice"})


# ---------------------------------------------------------------- redaction

@pytest.mark.parametrize("text,shown", [
    ("http://alice:s3cret@host/a", "http://alice:***@host/a"),
    ("https://tok3n@host:8443/a?b", "https://***@host:8443/a?b"),
    ("see http://a:b@h/x and https://c:d@[::1]:1/y.", "see http://a:***@h/x and https://c:***@[::1]:1/y."),
    ("http://host/a@b", "http://host/a@b"),                # an @ in the path is not userinfo
    ("no url here user:pw@host", "no url here user:pw@host"),
    ("'http://u:p@h'", "'http://u:***@h'"),
])
def test_redact_url(text: str, shown: str) -> None:
    assert redact_url(text) == shown


def test_secrets_of_options_and_redact_text() -> None:
    opts = Options(user="alice:pa55word", proxy="http://px:pr0xypw@p:1", proxy_user=None,
                   headers={"Authorization": "Bearer tok-123456", "Cookie": "sid=abcdef",
                            "X-Other": "visible"})
    secrets = secrets_of(opts, ["http://u:url-secret@h/a"])
    text = ("pa55word pr0xypw url-secret tok-123456 sid=abcdef visible "
            + _basic("alice:pa55word")[6:])
    shown = redact_text(text, secrets)
    for secret in ("pa55word", "pr0xypw", "url-secret", "tok-123456", "sid=abcdef",
                   _basic("alice:pa55word")[6:]):
        assert secret not in shown
    assert "visible" in shown
    assert "pa55word" not in repr(opts) and "pr0xypw" not in repr(opts)
    assert "tok-123456" not in repr(opts)


@pytest.mark.parametrize("argv,secret", [
    (["-u", "alice:pa55word", "--bogus"], "pa55word"),
    (["--user=alice:pa55word", "--bogus"], "pa55word"),
    (["-ualice:pa55word", "--bogus"], "pa55word"),
    (["--proxy-user", "bob:pa55word", "--bogus"], "pa55word"),
    (["-H", "Authorization: Bearer pa55word", "--bogus"], "pa55word"),
    (["http://a:pa55word@h/x", "--bogus"], "pa55word"),
    (["--usr", "alice:pa55word"], "pa55word"),            # the typo: the secret is an extra
    (["--password", "pa55word"], "pa55word"),
])
def test_redact_argv_masks_echoed_secrets(argv, secret) -> None:
    message = "unrecognized arguments: " + " ".join(argv) + " ('%s')" % "' '".join(argv)
    shown = redact_argv(message, argv)
    assert secret not in shown and MASK in shown


def test_header_file(tmp_path) -> None:
    path = tmp_path / "headers"
    path.write_bytes(b"Authorization: Bearer abc\r\n\r\n# a comment\nX-A: 1\n")
    assert read_header_file(str(path)) == ["Authorization: Bearer abc", "X-A: 1"]
    with pytest.raises(E.InvalidRequest, match="cannot read header file"):
        read_header_file(str(tmp_path / "absent"))
