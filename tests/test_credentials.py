"""Origin credentials as the command takes them (-u, URL userinfo, --netrc, --netrc-file,
-H @FILE), what the origin actually received, and the secrets test: every output channel
(stderr, --log-json, logging records, the .part.json sidecar) grepped for every secret."""
from __future__ import annotations

import base64
import logging
import os
import subprocess
from typing import Dict, List, Optional

import pytest

from rawfetch import cli
from tests.faultserver import actions as A
from tests.inprocess import run_cli
from tests.proxyserver import TestProxy
from tests.timing_options import QUICK_ARGV

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


def run(*args: str, env_extra=None) -> subprocess.CompletedProcess:
    """The command in-process (tests/inprocess.py), no inherited proxy, `env_extra` set."""
    env: Dict[str, Optional[str]] = {name: None for name in PROXY_VARIABLES}
    env.update(env_extra or {})
    return run_cli(*args, env=env)


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def authorization(server) -> List[str]:
    return [r.headers.get("authorization") for r in server.requests]


# ---------------------------------------------------------------- what the origin gets

def test_user_without_password_exits_2_and_sends_nothing(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "-u", "alice")
    assert proc.returncode == 2
    assert b"USER:PASSWORD" in proc.stderr and b"Traceback" not in proc.stderr
    assert server.requests == [] and server.connection_count == 0


@pytest.mark.parametrize("flags,url_userinfo,expected", [
    (["-u", "cli:cli-pw"], "url:url-pw@", "cli:cli-pw"),        # -u over userinfo
    ([], "url:url-pw@", "url:url-pw"),                          # userinfo over netrc
    (["-u", "cli:cli-pw", "--netrc-file", "{rc}"], "", "cli:cli-pw"),
    (["--netrc-file", "{rc}"], "url:url-pw@", "url:url-pw"),
    (["--netrc-file", "{rc}"], "", "rc-user:rc-pw"),            # netrc alone
    (["--netrc-file", "{rc}"], "other@", "other:other-rc-pw"),  # URL login, netrc password
    (["--netrc-file", "{missing}"], "", None),                  # missing file: nothing
    ([], "", None),
])
def test_credential_precedence(server, body, tmp_path, flags, url_userinfo, expected):
    rc = tmp_path / "netrc"
    rc.write_text("machine 127.0.0.1 login rc-user password rc-pw\n"
                  "machine 127.0.0.1 login other password other-rc-pw\n")
    flags = [f.format(rc=rc, missing=tmp_path / "absent") for f in flags]
    url = server.url("/img").replace("://", "://" + url_userinfo)
    proc = run(url, "-o", str(tmp_path / "img"), *flags)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "img").read_bytes() == body
    assert authorization(server) == [None if expected is None else basic(expected)]


def test_explicit_authorization_header_wins(server, tmp_path):
    proc = run(server.url("/img").replace("://", "://url:pw@"), "-o", str(tmp_path / "img"),
               "-u", "cli:pw", "-H", "Authorization: Bearer tok")
    assert proc.returncode == 0, proc.stderr
    assert authorization(server) == ["Bearer tok"]


def test_netrc_flag_reads_the_netrc_variable(server, tmp_path):
    rc = tmp_path / "rc"
    rc.write_text('default login anyone password "p w"\n')
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--netrc",
               env_extra={"NETRC": str(rc)})
    assert proc.returncode == 0, proc.stderr
    assert authorization(server) == [basic("anyone:p w")]
    proc = run(server.url("/img"), "-o", str(tmp_path / "img2"), env_extra={"NETRC": str(rc)})
    assert authorization(server)[-1] is None                    # only with --netrc


def test_header_file_keeps_the_token_out_of_argv(server, tmp_path):
    headers = tmp_path / "headers"
    headers.write_text("# bearer for the image server\nAuthorization: Bearer from-file\n"
                       "X-Image: 1\n")
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "-H", "@" + str(headers))
    assert proc.returncode == 0, proc.stderr
    seen = server.requests[0].headers
    assert (seen["authorization"], seen["x-image"]) == ("Bearer from-file", "1")


def test_missing_header_file_is_exit_3_before_any_request(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "-H", "@" + str(tmp_path / "no"))
    assert proc.returncode == 3 and b"header file" in proc.stderr
    assert server.requests == []


def test_credentials_stay_with_their_origin_on_redirect(server, make_server, body, tmp_path):
    """-u and userinfo never follow a redirect to another origin; that origin's own netrc
    entry does (netrc names the machine it belongs to)."""
    other = make_server()
    other.add("/img", body)
    rc = tmp_path / "rc"
    rc.write_text("machine localhost login other-host password other-pw\n")
    server.script([A.redirect(302, "http://localhost:%d/img" % other.port)])
    proc = run(server.url("/start"), "-o", str(tmp_path / "img"), "-u", "cli:pw",
               "--netrc-file", str(rc))
    assert proc.returncode == 0, proc.stderr
    assert authorization(server) == [basic("cli:pw")]
    assert authorization(other) == [basic("other-host:other-pw")]


# ---------------------------------------------------------------- secrets never leave

SECRETS = {
    "url": "Url-Secret-7f3a",
    "user": "User-Secret-91bd",
    "proxy_url": "ProxyUrl-Secret-5c2e",
    "proxy_user": "ProxyUser-Secret-0d4f",
    "bearer": "Bearer-Secret-a8e1",
    "cookie": "Cookie-Secret-66b0",
}


def forbidden() -> List[str]:
    """Each secret and every encoding it travels in."""
    out = list(SECRETS.values())
    for user, key in (("alice", "url"), ("bob", "user"), ("px", "proxy_url"),
                      ("px", "proxy_user")):
        out.append(basic("%s:%s" % (user, SECRETS[key]))[6:])
    return out


def test_no_output_channel_shows_a_secret(server, tmp_path, caplog, capsys):
    """A failing download through an authenticating proxy with every kind of secret on the
    command line: stderr, --log-json, logging records and the sidecar are clean, and the
    URL still shows, as http://alice:***@host/..."""
    server.script([A.rst(at=100000)])
    log = tmp_path / "events.jsonl"
    out = tmp_path / "img"
    url = server.url("/img").replace("://", "://alice:%s@" % SECRETS["url"])
    with TestProxy(auth="px:" + SECRETS["proxy_user"]) as relay:
        argv = [url, "-o", str(out), "--retries", "1", *QUICK_ARGV, "--log-json", str(log),
                "-u", "bob:" + SECRETS["user"],
                "-x", relay.url("px:" + SECRETS["proxy_url"]),
                "--proxy-user", "px:" + SECRETS["proxy_user"],
                "-H", "Authorization: Bearer " + SECRETS["bearer"],
                "-H", "Cookie: sid=" + SECRETS["cookie"]]
        with caplog.at_level(logging.INFO, logger="rawfetch"):
            code = cli.run(argv)
        assert len(relay.requests) == 2                       # it did go through the proxy
    stderr = capsys.readouterr().err
    assert code == 56 or code == 18, stderr
    assert os.path.exists(str(out) + ".part.json"), "the sidecar was not kept"
    channels = {
        "stderr": stderr,
        "log-json": log.read_text(),
        "logging": "\n".join(r.getMessage() for r in caplog.records),
        "sidecar": open(str(out) + ".part.json").read(),
    }
    for name, text in channels.items():
        assert text, "nothing written to %s" % name
        for secret in forbidden():
            assert secret not in text, "%s leaked in %s" % (secret, name)
    assert "127.0.0.1:%d/img" % server.port in channels["stderr"]   # the URL, no password
    assert "alice:***@127.0.0.1" in channels["sidecar"]
    assert "alice:***@127.0.0.1" in channels["log-json"]
    assert server.requests[0].headers["authorization"] == "Bearer " + SECRETS["bearer"]


@pytest.mark.parametrize("argv", [
    ["-o", "x", "--usr", "alice:{user}", "http://h/img"],
    ["-o", "x", "--password", "{user}", "http://h/img"],
    ["http://alice:{url}@h/img", "-o", "x", "--retries", "many"],
    ["http://h/img", "-o", "x", "-u", "bob:{user}", "--proxy-user", "px:{proxy_user}", "--nope"],
    ["http://h/img", "-o", "x", "-H", "Authorization: Bearer {bearer}", "--nope", "{bearer}"],
])
def test_usage_errors_never_echo_a_secret(argv):
    argv = [a.format(**SECRETS) for a in argv]
    proc = run(*argv)
    assert proc.returncode == 2
    text = proc.stderr.decode()
    assert "error:" in text
    for secret in SECRETS.values():
        assert secret not in text


def test_invalid_credential_header_is_refused_without_echoing_it(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"),
               "-H", "Authorization: Bearer %s\x01" % SECRETS["bearer"])
    assert proc.returncode == 3 and b"control character" in proc.stderr
    assert SECRETS["bearer"].encode() not in proc.stderr
    assert server.requests == []
