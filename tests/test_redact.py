"""redact.py, the bottom of the stack, and the two request serializers that share
http11's checks (GET and CONNECT). The wire behaviour through real proxies is in
test_proxy.py; where secrets may show through the command, in test_credentials.py."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rawfetch import errors as E
from rawfetch.http11 import build_connect, build_request
from rawfetch.options import Options
from rawfetch.redact import (MASK, SECRET_HEADERS, mask_pair, redact_header, redact_options,
                             userinfo_of)


def test_importing_redact_loads_only_the_error_hierarchy_and_no_network_module():
    """An error message can be masked before anything else loads: importing redact brings
    in rawfetch's package (errors, the hierarchy) and nothing more, and no socket/ssl."""
    code = ("import sys, rawfetch.redact; print(sorted(m for m in sys.modules "
            "if m.startswith('rawfetch') or m in ('ssl', 'socket', 'logging')))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shown = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, cwd=root,
                           text=True, check=True).stdout.strip()
    assert shown == "['rawfetch', 'rawfetch.errors', 'rawfetch.redact']"


def test_an_error_message_never_shows_a_url_password():
    error = E.ReceiveError("reset", url="http://alice:s3cret@mirror/img")
    assert str(error) == "reset (http://alice:***@mirror/img)"
    assert "s3cret" not in str(error) and error.url.endswith("@mirror/img")


@pytest.mark.parametrize("name", ["Authorization", "proxy-authorization", "COOKIE"])
def test_credential_headers_are_masked_whatever_their_case(name):
    assert redact_header(name, "Bearer tok-123456") == MASK
    assert name.lower() in SECRET_HEADERS


def test_other_headers_are_shown_as_they_are():
    assert redact_header("X-Node", "rack 7") == "rack 7"


def test_redact_options_masks_pairs_proxy_userinfo_and_credential_headers():
    shown = redact_options({"user": "alice:pa55word", "proxy_user": None,
                            "proxy": "px:pr0xypw@proxy:3128",
                            "headers": (("Cookie", "sid=abcdef"), ("X-A", "1")),
                            "retries": 3})
    assert shown == {"user": "alice:" + MASK, "proxy_user": None,
                     "proxy": "http://px:%s@proxy:3128" % MASK,
                     "headers": (("Cookie", MASK), ("X-A", "1")), "retries": 3}


def test_options_repr_goes_through_redact_options():
    text = repr(Options(user="alice:pa55word", headers={"Authorization": "Bearer tok-123456"},
                        retries=3))
    assert "pa55word" not in text and "tok-123456" not in text
    assert "user='alice:***'" in text and "retries=3" in text


@pytest.mark.parametrize("pair, shown", [
    ("alice:pa55word", "alice:***"), ("alice:", "alice:***"), ("token", "token"),
    (":pw", ":***"), ("a:b:c", "a:***"),
])
def test_mask_pair(pair, shown):
    assert mask_pair(pair) == shown


@pytest.mark.parametrize("text, userinfo", [
    ("http://u:p@h/a", "u:p"), ("u:p@proxy:3128", "u:p"), ("http://h/a@b", None),
    ("http://@h/", None), ("https://tok@h:1?x=@y", "tok"), ("proxy", None),
])
def test_userinfo_of(text, userinfo):
    assert userinfo_of(text) == userinfo


# ---------------------------------------------------------------- GET and CONNECT on the wire

def test_build_connect_names_the_origin_and_only_the_proxy_credential():
    wire = build_connect("origin.example", 443, "rawfetch/0.1", "Basic cHg6cHc=")
    assert wire == (b"CONNECT origin.example:443 HTTP/1.1\r\nHost: origin.example:443\r\n"
                    b"User-Agent: rawfetch/0.1\r\nProxy-Connection: Keep-Alive\r\n"
                    b"Proxy-Authorization: Basic cHg6cHc=\r\n\r\n")
    assert b"Proxy-Authorization" not in build_connect("h", 443, "rawfetch/0.1")


def test_build_connect_brackets_an_ipv6_origin():
    assert build_connect("::1", 8443, "ua").startswith(b"CONNECT [::1]:8443 HTTP/1.1\r\n"
                                                       b"Host: [::1]:8443\r\n")


@pytest.mark.parametrize("host, agent, auth", [
    ("evil\r\nX: 1", "ua", None), ("h", "ua\r\nX: 1", None), ("h", "ua", "Basic x\r\nX: 1"),
    ("h h", "ua", None), ("", "ua", None),
])
def test_build_connect_refuses_controls_and_never_echoes_a_credential(host, agent, auth):
    with pytest.raises(E.InvalidRequest) as info:
        build_connect(host, 443, agent, auth)
    assert "Basic x" not in str(info.value)


def test_get_and_connect_share_one_head_format():
    """Both heads: request line, one field a line, CRLF everywhere, one blank line."""
    for wire in (build_request("GET", "/img", "h", [("X-A", "1")]),
                 build_connect("h", 443, "ua")):
        head, blank, rest = wire.partition(b"\r\n\r\n")
        assert blank and rest == b"" and b"\n" not in head.replace(b"\r\n", b"")
        assert head.split(b"\r\n")[0].endswith(b" HTTP/1.1")


def test_a_credential_header_value_is_never_echoed_by_build_request():
    for name in sorted(SECRET_HEADERS):
        with pytest.raises(E.InvalidRequest) as info:
            build_request("GET", "/", "h", [(name, "Bearer s3cret\n")])
        assert "s3cret" not in str(info.value) and repr(MASK) in str(info.value)
