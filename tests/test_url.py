"""Tests for rawfetch.url: strict http(s) URL parsing and redirect resolution (table-driven)."""
from __future__ import annotations

import pytest

from rawfetch.errors import FetchError, InvalidRequest
from rawfetch.url import MAX_URL_LENGTH, URL, join_url, parse_url

pytestmark = pytest.mark.timeout(30)


def url_case(id: str, text: str, scheme: str, host: str, port: int, target: str,
             host_header: str, userinfo: str | None = None):
    return pytest.param(text, URL(scheme, host, port, target, userinfo), host_header, id=id)


VALID = [
    url_case("http-default-port", "http://example.com/", "http", "example.com", 80, "/",
             "example.com"),
    url_case("https-default-port", "https://example.com/a", "https", "example.com", 443, "/a",
             "example.com"),
    url_case("http-explicit-default-port", "http://example.com:80/", "http", "example.com", 80,
             "/", "example.com"),
    url_case("https-explicit-default-port", "https://example.com:443/", "https", "example.com",
             443, "/", "example.com"),
    url_case("http-other-port", "http://example.com:8080/a", "http", "example.com", 8080, "/a",
             "example.com:8080"),
    url_case("https-port-80", "https://example.com:80/", "https", "example.com", 80, "/",
             "example.com:80"),
    url_case("http-port-443", "http://example.com:443/", "http", "example.com", 443, "/",
             "example.com:443"),
    url_case("port-leading-zero", "http://example.com:080/", "http", "example.com", 80, "/",
             "example.com"),
    url_case("port-max", "http://1.2.3.4:65535/", "http", "1.2.3.4", 65535, "/", "1.2.3.4:65535"),
    url_case("empty-port-is-default", "http://host:/p", "http", "host", 80, "/p", "host"),
    url_case("uppercase-scheme-host", "HTTP://EXAMPLE.COM/Path", "http", "example.com", 80,
             "/Path", "example.com"),
    url_case("mixed-case-https", "HtTpS://Ex.Com", "https", "ex.com", 443, "/", "ex.com"),
    url_case("ipv6-loopback", "http://[::1]/", "http", "::1", 80, "/", "[::1]"),
    url_case("ipv6-with-port", "http://[::1]:8080/x", "http", "::1", 8080, "/x", "[::1]:8080"),
    url_case("ipv6-default-port-https", "https://[::1]:443/", "https", "::1", 443, "/", "[::1]"),
    url_case("ipv6-uppercase", "https://[2001:DB8::A]/", "https", "2001:db8::a", 443, "/",
             "[2001:db8::a]"),
    url_case("ipv6-mapped-ipv4", "http://[::ffff:1.2.3.4]/", "http", "::ffff:1.2.3.4", 80, "/",
             "[::ffff:1.2.3.4]"),
    url_case("ipv6-zone-id", "http://[fe80::1%25eth0]:81/", "http", "fe80::1%25eth0", 81, "/",
             "[fe80::1%25eth0]:81"),
    url_case("idna", "http://b\u00fccher.de/", "http", "xn--bcher-kva.de", 80, "/",
             "xn--bcher-kva.de"),
    url_case("idna-uppercase", "http://B\u00dcCHER.de/", "http", "xn--bcher-kva.de", 80, "/",
             "xn--bcher-kva.de"),
    url_case("idna-japanese", "https://\u4f8b\u3048.\u30c6\u30b9\u30c8/", "https",
             "xn--r8jz45g.xn--zckzah", 443, "/", "xn--r8jz45g.xn--zckzah"),
    url_case("punycode-ascii-kept", "http://XN--bcher-kva.de/", "http", "xn--bcher-kva.de", 80,
             "/", "xn--bcher-kva.de"),
    url_case("underscore-and-trailing-dot", "http://my_host.example./", "http",
             "my_host.example.", 80, "/", "my_host.example."),
    url_case("userinfo", "http://user:pw@host/p", "http", "host", 80, "/p", "host", "user:pw"),
    url_case("userinfo-user-only", "http://user@host:81/", "http", "host", 81, "/", "host:81",
             "user"),
    url_case("userinfo-with-at", "http://a@b@host/", "http", "host", 80, "/", "host", "a@b"),
    url_case("userinfo-empty", "http://@host/", "http", "host", 80, "/", "host", ""),
    url_case("userinfo-percent", "http://us%40er:p%3Aw@host/", "http", "host", 80, "/", "host",
             "us%40er:p%3Aw"),
    url_case("fragment-dropped", "http://host/p?q=1#frag", "http", "host", 80, "/p?q=1", "host"),
    url_case("fragment-only", "http://host#frag", "http", "host", 80, "/", "host"),
    url_case("fragment-with-slash-and-at", "http://host#a/b@evil", "http", "host", 80, "/",
             "host"),
    url_case("empty-path", "http://host", "http", "host", 80, "/", "host"),
    url_case("query-only", "http://host?q", "http", "host", 80, "/?q", "host"),
    url_case("query-only-with-port", "http://host:81?a=1&b=2", "http", "host", 81, "/?a=1&b=2",
             "host:81"),
    url_case("query-with-slash-and-at", "http://host?u=http://a@b/", "http", "host", 80,
             "/?u=http://a@b/", "host"),
    url_case("non-ascii-path", "http://host/\u00fc/\u2603", "http", "host", 80,
             "/%C3%BC/%E2%98%83", "host"),
    url_case("non-ascii-query", "http://host/?q=\u00fc", "http", "host", 80, "/?q=%C3%BC", "host"),
    url_case("unicode-space-encoded", "http://host/\u3000\u2028", "http", "host", 80,
             "/%E3%80%80%E2%80%A8", "host"),
    url_case("unsafe-ascii-encoded", 'http://host/"<>\\^`{|}[]', "http", "host", 80,
             "/%22%3C%3E%5C%5E%60%7B%7C%7D%5B%5D", "host"),
    url_case("existing-escapes-kept", "http://host/a%20b%2Fc?x=%C3%BC", "http", "host", 80,
             "/a%20b%2Fc?x=%C3%BC", "host"),
    url_case("safe-chars-kept", "http://host/-._~!$&'()*+,;=:@/?%", "http", "host", 80,
             "/-._~!$&'()*+,;=:@/?%", "host"),
    # RFC 3986 reading (the last '@' ends userinfo), not the WHATWG one ('\\' as '/'):
    url_case("backslash-in-userinfo", "http://evil.com\\@good.com/", "http", "good.com", 80, "/",
             "good.com", "evil.com\\"),
    url_case("double-slash-path", "http://host//a//b", "http", "host", 80, "//a//b", "host"),
]


@pytest.mark.parametrize("text, expected, host_header", VALID)
def test_parse_url(text, expected, host_header):
    url = parse_url(text)
    assert url == expected
    assert url.host_header == host_header
    assert str(url) == "%s://%s%s" % (url.scheme, host_header, url.target)
    assert url.origin == (url.scheme, url.host, url.port)
    assert parse_url(str(url))._replace(userinfo=url.userinfo) == url  # canonical form is stable
    assert url.target.isascii() and url.host.isascii()


def test_str_never_contains_userinfo():
    url = parse_url("https://user:secret@host:8443/p?q")
    assert str(url) == "https://host:8443/p?q" and "secret" not in str(url)


def test_url_at_max_length_accepted():
    text = "http://h/" + "a" * (MAX_URL_LENGTH - len("http://h/"))
    assert len(text) == MAX_URL_LENGTH
    assert parse_url(text).target == text[len("http://h"):]


# ---------------------------------------------------------------- invalid URLs

def bad(id: str, text, message: str | None = None):
    return pytest.param(text, message, id=id)


INVALID = [
    bad("ftp", "ftp://host/file", "scheme"),
    bad("file", "file:///etc/passwd", "scheme"),
    bad("data", "data:text/plain,hi", "scheme"),
    bad("javascript", "javascript:alert(1)", "scheme"),
    bad("javascript-with-slashes", "javascript://host/%0aalert(1)", "scheme"),
    bad("mailto", "mailto:a@b.example", "scheme"),
    bad("ws", "ws://host/", "scheme"),
    bad("https-typo", "httpx://host/", "scheme"),
    bad("one-slash", "http:/host/p", "scheme"),
    bad("no-slashes", "http:host", "scheme"),
    bad("scheme-relative", "//host/p", "scheme"),
    bad("no-scheme", "host/p", "scheme"),
    bad("empty", "", "scheme"),
    bad("no-host", "http:///path", "no host"),
    bad("no-host-at-all", "http://", "no host"),
    bad("port-without-host", "http://:80/", "no host"),
    bad("userinfo-without-host", "http://user@/", "no host"),
    bad("query-without-host", "http://?q=1", "no host"),
    bad("fragment-without-host", "https://#f", "no host"),
    bad("unbracketed-ipv6", "http://::1/", "no host"),
    bad("port-zero", "http://h:0/", "port"),
    bad("port-too-large", "http://h:65536/", "port"),
    bad("port-huge", "http://h:99999999999999999999999/", "port"),
    bad("port-letters", "http://h:http/", "port"),
    bad("port-negative", "http://h:-1/", "port"),
    bad("port-plus", "http://h:+80/", "port"),
    bad("port-hex", "http://h:0x50/", "port"),
    bad("port-twice", "http://h:80:80/", "port"),
    bad("port-superscript", "http://h:8\u00b2/", "port"),
    bad("port-fullwidth", "http://h:\uff18\uff10/", "port"),
    bad("port-arabic-indic", "http://h:\u0668\u0660/", "port"),
    bad("ipv6-port-zero", "http://[::1]:0/", "port"),
    bad("ipv6-port-letters", "http://[::1]:x/", "port"),
    bad("ipv6-invalid", "http://[::g]/", "IPv6"),
    bad("ipv6-too-many-groups", "http://[1:2:3:4:5:6:7:8:9]/", "IPv6"),
    bad("ipv6-empty", "http://[]/", "IPv6"),
    bad("ipv6-is-ipv4", "http://[1.2.3.4]/", "IPv6"),
    bad("ipv6-unclosed", "http://[::1/", "IPv6"),
    bad("ipv6-junk-after", "http://[::1]x/", "IPv6"),
    bad("ipv6-double-bracket", "http://[::1]]/", "IPv6"),
    bad("idna-label-too-long", "http://" + "\u00fc" * 64 + ".de/", "IDNA"),
    bad("idna-empty-label", "http://a..b\u00fc/", "IDNA"),
    bad("idna-bad-ace-prefix", "http://xn--\u00fc.de/", "IDNA"),
    bad("fullwidth-solidus-in-host", "http://example.com\uff0fevil/", "host contains"),
    bad("fullwidth-at-in-host", "http://trusted.com\uff20evil.com/", "host contains"),
    bad("percent-in-host", "http://ex%41mple.com/", "host contains"),
    bad("backslash-in-host", "http://evil.com\\x/", "host contains"),
    bad("bang-in-host", "http://a!b/", "host contains"),
    bad("too-long", "http://h/" + "a" * MAX_URL_LENGTH, "longer than %d" % MAX_URL_LENGTH),
    bad("bytes", b"http://h/", "must be a str"),
    bad("none", None, "must be a str"),
]


@pytest.mark.parametrize("text, message", INVALID)
def test_invalid_url(text, message):
    with pytest.raises(InvalidRequest) as info:
        parse_url(text)
    if message:
        assert message in str(info.value)
    assert info.value.exit_code == 3 and not info.value.retryable


CONTROLS = [("CR", "\r"), ("LF", "\n"), ("CRLF", "\r\n"), ("NUL", "\x00"), ("SP", " "),
            ("TAB", "\t"), ("DEL", "\x7f"), ("VT", "\x0b"), ("FF", "\x0c"), ("ESC", "\x1b"),
            ("US", "\x1f")]
PLACES = [("path", "http://host/a{}b"), ("query", "http://host/p?q=1{}&r=2"),
          ("host", "http://ho{}st/"), ("host-end", "http://host{}/"),
          ("userinfo", "http://us{}er:pw@host/"), ("port", "http://host:8{}0/"),
          ("ipv6", "http://[::1{}]/"), ("fragment", "http://host/#fr{}ag"),
          ("scheme", "ht{}tp://host/"), ("leading", "{}http://host/"),
          ("trailing", "http://host/{}")]


@pytest.mark.parametrize("template, char", [
    pytest.param(template, char, id="%s-%s" % (place, name))
    for place, template in PLACES for name, char in CONTROLS])
def test_controls_rejected_anywhere(template, char):
    with pytest.raises(InvalidRequest, match="contains"):
        parse_url(template.format(char))


# ---------------------------------------------------------------- join_url (redirects)

BASE = parse_url("http://h:8080/a/b/c?x=1")


@pytest.mark.parametrize("base, location, expected", [
    (BASE, "https://other.example/x?y", "https://other.example/x?y"),
    (BASE, "HTTP://Other.Example/Y", "http://other.example/Y"),
    (BASE, "//other/x", "http://other/x"),
    (BASE, "//other:81/x", "http://other:81/x"),
    (parse_url("https://h/a"), "//other/x", "https://other/x"),
    (BASE, "/abs?q", "http://h:8080/abs?q"),
    (BASE, "/", "http://h:8080/"),
    (BASE, "../d", "http://h:8080/a/d"),
    (BASE, "d", "http://h:8080/a/b/d"),
    (BASE, "./d/", "http://h:8080/a/b/d/"),
    (BASE, "../../../../d", "http://h:8080/d"),
    (BASE, "?q=2", "http://h:8080/a/b/c?q=2"),
    (BASE, "#frag", "http://h:8080/a/b/c?x=1"),
    (BASE, "", "http://h:8080/a/b/c?x=1"),
    (BASE, "/\u00fc?q=\u2603", "http://h:8080/%C3%BC?q=%E2%98%83"),
    (BASE, "/a%20b", "http://h:8080/a%20b"),
    (BASE, "/\\evil.example", "http://h:8080/%5Cevil.example"),
    (BASE, "http://b\u00fccher.de/x", "http://xn--bcher-kva.de/x"),
    (BASE, "https://[::1]:8443/z", "https://[::1]:8443/z"),
    (parse_url("http://[::1]:8080/a/b"), "c", "http://[::1]:8080/a/c"),
    (parse_url("http://user:pw@h/a"), "b", "http://h/b"),
    (BASE, "//u@other/x", "http://other/x"),
], ids=["absolute", "absolute-uppercase", "scheme-relative", "scheme-relative-port",
        "scheme-relative-keeps-https", "absolute-path", "root", "dot-dot", "relative",
        "dot-slash", "dot-dot-above-root", "query-only", "fragment-only", "empty",
        "non-ascii", "escapes-kept", "backslash-path", "idna", "ipv6-absolute",
        "ipv6-base-relative", "userinfo-not-carried", "scheme-relative-userinfo"])
def test_join_url(base, location, expected):
    joined = join_url(base, location)
    assert isinstance(joined, URL)
    assert str(joined) == expected


@pytest.mark.parametrize("location", [
    "/a\r\nSet-Cookie: x=1", "/a\nb", "/a\rb", "/a b", "/a\tb", "/\x00", "/\x7f", " /lead",
    "/trail\n", "//evil\x0b.com/", "\x1bhttp://x/"],
    ids=["crlf-injection", "lf", "cr", "space", "tab", "nul", "del", "leading-space",
         "trailing-lf", "vt-in-host", "esc"])
def test_join_url_refuses_controls_in_location(location):
    with pytest.raises(InvalidRequest, match="redirect Location"):
        join_url(BASE, location)


@pytest.mark.parametrize("location", [
    "ftp://host/f", "file:///etc/passwd", "data:,x", "javascript:alert(1)", "mailto:a@b",
    "https://", "http://h:0/", "http://[::1]x/", "http://ex%41mple/"],
    ids=["ftp", "file", "data", "javascript", "mailto", "no-host", "port-zero", "ipv6-junk",
         "percent-host"])
def test_join_url_refuses_bad_targets(location):
    with pytest.raises(InvalidRequest):
        join_url(BASE, location)


@pytest.mark.parametrize("location", [
    "http:///foo.example.com/want", "http://", "http:///", "HTTPS:///x", "http:want",
    "https:/x", "http:?q", "///x", "//", "//:80/x", "//u@/x", "http://@/x", "http://:8080/x"])
def test_join_url_refuses_an_empty_host(location):
    """RFC 9110 s4.2.1: an http(s) URI with an empty host MUST be rejected; urljoin alone
    resolved these against the current host (the request went to h:8080 instead)."""
    with pytest.raises(InvalidRequest, match="host"):
        join_url(BASE, location)


@pytest.mark.parametrize("location", ["http://[::1/", "http://a]/", "//[::1/x"],
                         ids=["unclosed-bracket", "stray-close-bracket", "scheme-relative"])
def test_join_url_malformed_ipv6_location_is_invalid_request(location):
    with pytest.raises(InvalidRequest):
        join_url(BASE, location)


def test_invalid_request_is_a_fetch_error_with_the_url():
    with pytest.raises(FetchError) as info:
        parse_url("ftp://host/file")
    assert isinstance(info.value, InvalidRequest) and info.value.url == "ftp://host/file"
    assert "ftp://host/file" in str(info.value)
