"""rawfetch through a real squid: resume with Range at the origin, CONNECT with the
origin's certificate verified, proxy Basic auth (and a wrong password refused once),
no_proxy bypass, and the environment variables. The origin is the in-repo fault server,
so faults happen at exact offsets and the origin's request log shows what reached it."""
from __future__ import annotations

import hashlib
from typing import List

import pytest

from tests.faultserver import FaultServer, actions as A, make_body
from tests.squid.runner import run_rawfetch
from tests.squid.squid import LogLine, Squid

pytestmark = [pytest.mark.squid, pytest.mark.timeout(180)]

SIZE = 4 << 20
BODY = make_body(SIZE, seed=11)
SHA = hashlib.sha256(BODY).hexdigest()
QUICK = ["--retry-delay", "0.05", "--retry-max-delay", "0.2", "--idle-timeout", "5", "-q"]


@pytest.fixture
def origin(make_server) -> FaultServer:
    server = make_server()
    server.add("/img", BODY, etag='"img-v1"')
    return server


@pytest.fixture
def tls_origin(make_server) -> FaultServer:
    server = make_server(tls="ok")
    server.add("/img", BODY)
    return server


def ip_url(server: FaultServer) -> str:
    """The origin by address: squid and the certificate (it names 127.0.0.1) agree."""
    return server.url("/img").replace("localhost", "127.0.0.1")


def lines_for(squid: Squid, expect: int) -> List[LogLine]:
    return squid.access_log(expect=expect)


def quiet_log(squid: Squid, origin: FaultServer) -> List[LogLine]:
    """Squid's log once a barrier request through it has been logged: anything a bypassed
    run sent through squid would be logged before it."""
    before = len(squid.access_log())
    origin.add("/barrier", b"barrier")
    run = run_rawfetch(origin.url("/barrier"), "-o", "/dev/null", "-x", squid.url, "-q")
    assert run.returncode == 0, run.stderr
    lines = squid.access_log(expect=before + 1)
    assert lines[-1].url.endswith("/barrier")
    return lines[:-1]


def test_cut_download_resumes_through_squid_with_range_at_the_origin(squid, origin, tmp_path):
    origin.script([A.rst(at=1 << 20), A.normal()])
    out, log = tmp_path / "img", str(tmp_path / "events")
    run = run_rawfetch(origin.url("/img"), "-o", str(out), "-x", squid.url, *QUICK, log=log)
    assert run.returncode == 0, run.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA
    resumed = run.named("resume")[0]["offset"]
    assert 0 < resumed <= 1 << 20                   # squid passed on what it had, no more
    first, second = origin.requests
    assert first.range is None and "squid" in first.headers.get("via", "")
    assert (second.range, second.if_range) == ("bytes=%d-" % resumed, '"img-v1"')
    assert second.target == "/img"                  # squid rewrote the absolute form
    codes = [(line.method, line.status, line.url) for line in lines_for(squid, 2)]
    assert codes == [("GET", 200, origin.url("/img")), ("GET", 206, origin.url("/img"))]
    assert {e["proxy"] for e in run.named("connect")} == {squid.url}


def test_https_goes_through_connect_and_verifies_the_origin(squid, tls_origin, tmp_path):
    out = tmp_path / "img"
    run = run_rawfetch(ip_url(tls_origin), "-o", str(out), "-x", squid.url,
                       "--cacert", tls_origin.ca_path, *QUICK)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == BODY
    (line,) = lines_for(squid, 1)
    assert (line.method, line.url) == ("CONNECT", "127.0.0.1:%d" % tls_origin.port)
    assert [r.target for r in tls_origin.requests] == ["/img"]


def test_https_origin_with_a_wrong_certificate_is_refused_through_squid(squid, make_server,
                                                                         tmp_path):
    origin = make_server(tls="wrong_host")
    origin.add("/img", BODY)
    run = run_rawfetch(ip_url(origin), "-o", str(tmp_path / "img"), "-x", squid.url,
                       "--cacert", origin.ca_path, "--retries", "3", *QUICK)
    assert run.returncode == 60, run.stderr
    assert [line.method for line in lines_for(squid, 1)] == ["CONNECT"]   # not retried
    assert origin.requests == []


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_basic_auth_is_accepted(auth_squid, origin, tls_origin, tmp_path, scheme):
    server = origin if scheme == "http" else tls_origin
    out = tmp_path / "img"
    run = run_rawfetch(ip_url(server), "-o", str(out), "--cacert", tls_origin.ca_path,
                       "-x", auth_squid.url.replace("://", "://rack:s3cret-rack@"), *QUICK)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == BODY
    (line,) = lines_for(auth_squid, 1)
    assert line.user == "rack" and line.status in (200, 206)
    assert "proxy-authorization" not in server.requests[0].headers


@pytest.mark.parametrize("scheme,code", [("http", 22), ("https", 56)])
def test_wrong_proxy_password_is_refused_with_exactly_one_request(auth_squid, origin,
                                                                  tls_origin, tmp_path,
                                                                  scheme, code):
    server = origin if scheme == "http" else tls_origin
    run = run_rawfetch(ip_url(server), "-o", str(tmp_path / "img"), "--retries", "10",
                       "--cacert", tls_origin.ca_path, "-x", auth_squid.url,
                       "--proxy-user", "rack:wrong-password", *QUICK)
    assert run.returncode == code, run.stderr
    assert "407" in run.stderr and auth_squid.url in run.stderr
    assert "wrong-password" not in run.stderr
    lines = lines_for(auth_squid, 1)
    assert [(line.method, line.status) for line in lines] == [
        ("GET" if scheme == "http" else "CONNECT", 407)]
    assert server.requests == []


def test_no_proxy_bypass_never_touches_squid(squid, origin, tmp_path):
    out = tmp_path / "img"
    run = run_rawfetch(origin.url("/img"), "-o", str(out), "-x", squid.url,
                       "--noproxy", "localhost,127.0.0.0/8", *QUICK)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == BODY
    assert quiet_log(squid, origin) == []
    assert origin.requests[0].target == "/img" and "via" not in origin.requests[0].headers


@pytest.mark.parametrize("env,through", [
    ({"http_proxy": "{squid}"}, True),
    ({"HTTP_PROXY": "{squid}"}, False),                         # httpoxy precaution
    ({"ALL_PROXY": "{squid}"}, True),
    ({"http_proxy": "{squid}", "NO_PROXY": "127.0.0.1"}, False),
    ({"http_proxy": "{squid}", "no_proxy": ".example.org"}, True),
])
def test_environment_variables_select_squid(squid, origin, tmp_path, env, through):
    out = tmp_path / "img"
    env = {k: v.format(squid=squid.url) for k, v in env.items()}
    run = run_rawfetch(origin.url("/img"), "-o", str(out), *QUICK, env=env)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == BODY
    assert len(quiet_log(squid, origin)) == (1 if through else 0)


def test_https_proxy_variable_selects_squid_for_https(squid, tls_origin, tmp_path):
    run = run_rawfetch(ip_url(tls_origin), "-o", str(tmp_path / "img"), "--cacert",
                       tls_origin.ca_path, *QUICK, env={"HTTPS_PROXY": squid.url})
    assert run.returncode == 0, run.stderr
    assert [line.method for line in lines_for(squid, 1)] == ["CONNECT"]


def test_empty_proxy_flag_overrides_the_environment(squid, origin, tmp_path):
    run = run_rawfetch(origin.url("/img"), "-o", str(tmp_path / "img"), "-x", "", *QUICK,
                       env={"http_proxy": squid.url})
    assert run.returncode == 0, run.stderr
    assert quiet_log(squid, origin) == []


def test_object_replaced_during_a_cut_restarts_cleanly_through_squid(squid, origin, tmp_path):
    """The resume rules hold through a proxy: If-Range travels through squid, the origin's
    new version comes back as a 200 and the download restarts from zero."""
    new = make_body(SIZE, seed=12)
    origin.script([A.rst(at=1 << 20), A.replace(new, then=A.normal())])
    out, log = tmp_path / "img", str(tmp_path / "events")
    run = run_rawfetch(origin.url("/img"), "-o", str(out), "-x", squid.url, *QUICK, log=log)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes() == new
    assert len(run.named("restart")) == 1 and run.named("resume") == []
    assert origin.requests[1].if_range == '"img-v1"'


def test_resume_of_an_earlier_run_is_served_from_squids_cache(squid, origin, tmp_path):
    """Node A fetched the image through squid; node B's earlier run was cut at 1 MiB. B's
    resume (Range + If-Range) is answered by squid from its cache, and checked by the same
    rules: the origin sees nothing more and B's file is exact."""
    first = run_rawfetch(origin.url("/img"), "-o", str(tmp_path / "a"), "-x", squid.url, *QUICK)
    assert first.returncode == 0, first.stderr
    origin.script([A.rst(at=1 << 20)])
    cut = run_rawfetch(origin.url("/img"), "-o", str(tmp_path / "b"), "--retries", "0",
                       "--noproxy", "*", *QUICK)
    assert cut.returncode != 0 and (tmp_path / "b.part").stat().st_size > 0
    held = (tmp_path / "b.part").stat().st_size
    seen = len(origin.requests)
    log = str(tmp_path / "events")
    run = run_rawfetch(origin.url("/img"), "-o", str(tmp_path / "b"), "-x", squid.url, *QUICK,
                       log=log)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "b").read_bytes() == BODY
    assert len(origin.requests) == seen                     # squid answered from its cache
    assert run.named("request")[0]["range"] == "bytes=%d-" % held
    assert "HIT" in lines_for(squid, 2)[-1].code
