"""rawfetch.compat.ironic: the ironic agent's image download on rawfetch (issue 12 item 6;
the agent's contract, issue 19). The agent itself is not installed here: rawfetch's own
errors reach these tests; tests/agents/ drives the real agent.

Real sockets only: fault-server origins (plain and TLS) and the in-repo proxy. Each test
asserts what the agent's caller cares about: the exact image bytes, the error class, what
each server or proxy saw (Range, credentials, CONNECT), or the options an agent setting
became.
"""
from __future__ import annotations

import base64
import hashlib
import os
from typing import Any, Dict, Iterator, List

import pytest

from rawfetch import errors as E, timing
from rawfetch.compat import ironic_contract
from rawfetch.compat.ironic import (IPA_DEFAULTS, RETRY_CEILING_FACTOR, ImageDownload,
                                    agent_options, image_plan, stream_to_device)
from tests.faultserver import FaultServer, actions as A, make_body
from tests.ironic_origin import image_origin
from tests.proxyserver import TestProxy
from tests.timing_options import STEP, TICK

# Every test on the virtual clock (tests/vclock.py): stalls, backoffs and max_time
# bounds take virtual seconds.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]

BODY = make_body((3 << 20) + 17, seed=12)
SHA256 = hashlib.sha256(BODY).hexdigest()
STALE = bytes(255 - b for b in BODY[:1 << 16]) * 56   # longer than BODY, differs everywhere
TIMEOUT = 1          # image_download_connection_timeout here: a stall costs this much
# The agent's settings, shortened for tests (its interval is 10 s; its timeout 60 s).
QUICK: Dict[str, Any] = dict(image_download_connection_timeout=TIMEOUT,
                             image_download_connection_retries=8,
                             image_download_connection_retry_interval=0.01,
                             trust_env=False)   # an inherited http_proxy must not interfere
# A storm on one image: every failing response is cheaper than one retry (an attempt
# that brought >= 1 MiB is not charged), so 8 retries always see it through.
STORM = [A.rst(at=1000003), A.status(503, {"Retry-After": "0"}), A.fin(at=700001),
         A.stall(at=900007), A.fin(at=500009, ignore_range=True), A.normal()]


def image_info(urls: List[str], **extra: Any) -> Dict[str, Any]:
    """What ironic sends, with keys the adapter ignores (id, disk_format...)."""
    info: Dict[str, Any] = dict(id="c0ffee", disk_format="raw", stream_raw_images=True,
                                urls=urls, os_hash_algo="sha256", os_hash_value=SHA256)
    info.update(extra)
    return info


def served_bytes(srv: FaultServer, path: str, requests: int) -> int:
    """Body bytes the server sent for `path` over its first `requests` connections."""
    conns = {r.conn for r in srv.requests if r.path == path}
    srv.wait_disconnects(requests, timeout=10)
    return sum(d.body_bytes_sent for d in srv.disconnects if d.conn in conns)


@pytest.fixture
def origin() -> Iterator[FaultServer]:
    with image_origin(BODY) as srv:
        yield srv


@pytest.fixture
def tls_origin() -> Iterator[FaultServer]:
    with image_origin(BODY, tls="ok") as srv:
        yield srv


# ------------------------------------------------------------------ faults, byte-exact
def test_storm_iterated_byte_exact_and_bytes_transferred(origin, tmp_path):
    """The agent's loop (`for chunk in download: f.write(chunk)`) through a storm: every
    cut resumed, the image exact; bytes_transferred counts each image byte once although
    the server sent more (a prefix re-sent by the 200 that ignored Range)."""
    origin.script(STORM, path="/images/disk.raw")
    path = tmp_path / "image"
    download = ImageDownload(image_info([origin.url("/images/disk.raw")]), **QUICK)
    assert download.content_length == len(BODY)
    with open(path, "wb") as handle:
        chunks = [len(chunk) for chunk in download if handle.write(chunk)]
    assert path.read_bytes() == BODY
    assert max(chunks) == 1 << 20 and sum(chunks) == len(BODY)
    assert download.bytes_transferred == len(BODY)
    ranges = [r.range for r in origin.requests]
    assert len(ranges) == len(STORM) and ranges[0] is None   # then resumed, every time:
    assert all(r is not None and r.startswith("bytes=") and r != "bytes=0-" for r in ranges[1:])
    assert served_bytes(origin, "/images/disk.raw", len(STORM)) > len(BODY)
    download.verify_image(str(path))
    assert download.stream.digest == "sha256:" + SHA256


def test_storm_streamed_onto_an_in_place_file(origin, tmp_path):
    """stream_to_device onto an existing, longer, different file: the same storm, the
    file ends as the image exactly (written in place, cut to size), no .part."""
    origin.script(STORM, path="/images/disk.raw")
    target = tmp_path / "disk"
    target.write_bytes(STALE)
    result = stream_to_device(image_info([origin.url("/images/disk.raw")]), str(target),
                              **QUICK)
    assert target.read_bytes() == BODY
    assert (result.bytes, result.written) == (len(BODY), len(BODY))
    assert result.attempts == len(STORM) and result.digest == "sha256:" + SHA256
    assert sorted(os.listdir(tmp_path)) == ["disk"]


def sums(digest: str, name: str = "disk.raw") -> bytes:
    """A GNU coreutils SHA256SUMS listing other files too."""
    return ("# release 42\n%s  other.raw\n%s *%s\n%s  disk.qcow2\n"
            % ("1" * 64, digest, name, "2" * 64)).encode()


def test_checksum_url_through_faults(origin, tmp_path):
    """checksum is the URL of a SHA256SUMS: fetched first (through its own 503 and a cut,
    inside the same budget), the entry for urls[0]'s file name verifies the image, which
    comes through the storm exact; stream_to_device does the same onto a file."""
    origin.add("/images/SHA256SUMS", sums(SHA256))
    origin.script([A.status(503, {"Retry-After": "0"}), A.fin(at=40), A.normal()],
                  path="/images/SHA256SUMS")
    origin.script(STORM, path="/images/disk.raw")
    info = dict(image_info([origin.url("/images/disk.raw")], checksum=origin.url(
        "/images/SHA256SUMS")), os_hash_algo=None, os_hash_value=None)
    download = ImageDownload(info, **QUICK)
    assert b"".join(download) == BODY
    assert download.stream.digest == "sha256:" + SHA256
    asked = [r.path for r in origin.requests]
    assert asked[:3] == ["/images/SHA256SUMS"] * 3 and asked.count("/images/disk.raw") == 6
    origin.script([A.fin(at=10), A.normal()], path="/images/SHA256SUMS")
    origin.script([A.rst(at=1500001), A.normal()], path="/images/disk.raw")
    target = tmp_path / "disk"
    target.write_bytes(STALE)
    result = stream_to_device(info, str(target), **QUICK)
    assert target.read_bytes() == BODY and result.digest == "sha256:" + SHA256


def write_image(download: ImageDownload, path: Any) -> None:
    """What the agent's _download_image() does with a download: write every chunk."""
    with open(path, "wb") as image:
        for chunk in download:
            image.write(chunk)


def test_checksum_url_with_a_wrong_entry_fails_the_image(origin, tmp_path):
    """The mismatch is the verdict of verify_image(), as in the agent (every chunk is
    handed out first), and the failed file is removed."""
    origin.add("/images/SHA256SUMS", sums("3" * 64))
    info = dict(image_info([origin.url("/images/disk.raw")],
                           checksum=origin.url("/images/SHA256SUMS")), os_hash_algo=None)
    info.pop("os_hash_value")
    download = ImageDownload(info, **QUICK)
    path = tmp_path / "image"
    write_image(download, path)
    assert download.bytes_transferred == len(BODY)
    with pytest.raises(E.ChecksumMismatch) as caught:
        download.verify_image(str(path))
    assert caught.value.exit_code == 90 and "3" * 64 in str(caught.value)
    assert not path.exists()


# ------------------------------------------------------------------ checksums
def test_os_hash_sha512_verified(origin, tmp_path):
    sha512 = hashlib.sha512(BODY).hexdigest()
    info = image_info([origin.url("/images/disk.raw")], os_hash_algo="sha512",
                      os_hash_value=sha512, checksum="0" * 32)   # os_hash wins, as in IPA
    download = ImageDownload(info, **QUICK)
    assert b"".join(download) == BODY
    assert download.stream.digest == "sha512:" + sha512
    wrong = ImageDownload(dict(info, os_hash_value="f" * 128), **QUICK)
    write_image(wrong, tmp_path / "image")
    with pytest.raises(E.ChecksumMismatch):
        wrong.verify_image(str(tmp_path / "image"))


def test_legacy_md5_checksum(origin):
    """No os_hash: `checksum` alone, a 32-digit value, is the agent's legacy MD5, refused
    unless md5_enabled (off by default, as in IPA 13)."""
    md5 = hashlib.md5(BODY).hexdigest()
    info = dict(image_info([origin.url("/images/disk.raw")], checksum=md5),
                os_hash_algo=None, os_hash_value=None)
    download = ImageDownload(info, md5_enabled=True, **QUICK)
    assert b"".join(download) == BODY and download.stream.digest == "md5:" + md5
    with pytest.raises(E.InvalidRequest, match="md5_enabled"):
        ImageDownload(info, **QUICK)
    assert len(origin.requests) == 1          # refused before any connection


def test_unsupported_os_hash_algo_falls_back_to_checksum(origin):
    info = image_info([origin.url("/images/disk.raw")], os_hash_algo="sha3_999",
                      os_hash_value="ab" * 32, checksum=SHA256)
    assert image_plan(info).options.checksum == "sha256:" + SHA256
    with pytest.raises(E.InvalidRequest, match="sha3_999"):
        image_plan(dict(info, checksum=None))


def test_verify_image_reads_the_file_back(origin, tmp_path):
    path = tmp_path / "image"
    download = ImageDownload(image_info([origin.url("/images/disk.raw")]), **QUICK)
    first = next(download)
    with pytest.raises(E.ChecksumMismatch, match="not read to its end"):
        download.verify_image(str(path))      # half-read: cannot be verified
    path.write_bytes(first + b"".join(download))
    download.verify_image(str(path))
    device = tmp_path / "device"               # longer than the image: its head is checked
    device.write_bytes(BODY + b"\0" * 4096)
    download.verify_image(str(device))
    flipped = bytearray(BODY)
    flipped[len(BODY) - 5] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(E.ChecksumMismatch) as caught:
        download.verify_image(str(path))
    assert caught.value.exit_code == 90 and SHA256 in str(caught.value)
    path.write_bytes(BODY[:-1])
    with pytest.raises(E.ChecksumMismatch, match="fewer than"):
        download.verify_image(str(path))
    with pytest.raises(E.LocalWriteError):
        download.verify_image(str(tmp_path / "missing"))


# ------------------------------------------------------------------ credentials
def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def test_http_basic_reaches_the_origin_never_the_proxy(tls_origin):
    """image_info's http_basic credentials go to the https origin inside the CONNECT
    tunnel; the proxy sees neither Authorization nor Proxy-Authorization."""
    with TestProxy() as proxy:
        info = image_info([tls_origin.url("/images/disk.raw")],
                          proxies={"https": proxy.url()}, image_server_auth_strategy=
                          "http_basic", image_server_user="ironic",
                          image_server_password="s3cr:et")
        tls_origin.script([A.rst(at=1200007), A.normal()], path="/images/disk.raw")
        assert b"".join(ImageDownload(info, cafile=tls_origin.ca_path, **QUICK)) == BODY
        assert [r.method for r in proxy.requests] == ["CONNECT", "CONNECT"]
        for request in proxy.requests:
            assert not {"authorization", "proxy-authorization"} & set(request.headers)
    assert [r.headers["authorization"] for r in tls_origin.requests] == \
        [basic("ironic:s3cr:et")] * 2


def test_http_basic_from_the_agent_config(origin):
    """No strategy in image_info: the agent's config names the credentials."""
    info = image_info([origin.url("/images/disk.raw")])
    list(ImageDownload(info, image_server_auth_strategy="http_basic",
                       image_server_user="cfg", image_server_password="pw", **QUICK))
    assert origin.requests[0].headers["authorization"] == basic("cfg:pw")
    with pytest.raises(E.InvalidRequest, match="image_server_password"):
        ImageDownload(info, image_server_auth_strategy="http_basic",
                      image_server_user="cfg", **QUICK)
    assert len(origin.requests) == 1


def test_image_request_authorization_is_sent_as_is(origin):
    """ironic sends the header value base64-encoded; it goes out decoded, and wins over
    http_basic (the agent's order)."""
    token = base64.standard_b64encode(b"Bearer f00.bar").decode()
    info = image_info([origin.url("/images/disk.raw")], image_request_authorization=token,
                      image_server_auth_strategy="http_basic", image_server_user="u",
                      image_server_password="p")
    assert b"".join(ImageDownload(info, **QUICK)) == BODY
    assert origin.requests[0].headers["authorization"] == "Bearer f00.bar"
    for bad in ("Bearer f00", "QmVhcmVy\nIGYw", "//79"):   # not base64; a newline; not text
        with pytest.raises(E.InvalidRequest) as caught:
            image_plan(dict(info, image_request_authorization=bad))
        assert bad not in str(caught.value)    # a secret is never echoed


# ------------------------------------------------------------------ proxies
def test_proxies_chosen_by_url_scheme_and_no_proxy_bypasses(origin, tls_origin):
    """proxies={'http': P1, 'https': P2}: an http image goes through P1 (absolute-form),
    an https one through P2 (CONNECT); no_proxy sends both direct; os.environ unchanged."""
    environ = dict(os.environ)
    with TestProxy() as p1, TestProxy() as p2:
        proxies = {"http": p1.url(), "https": p2.url()}
        plain = image_info([origin.url("/images/disk.raw")], proxies=proxies)
        secure = image_info([tls_origin.url("/images/disk.raw")], proxies=proxies)
        assert b"".join(ImageDownload(plain, **QUICK)) == BODY
        assert b"".join(ImageDownload(secure, cafile=tls_origin.ca_path, **QUICK)) == BODY
        assert [(r.method, r.target) for r in p1.requests] == \
            [("GET", origin.url("/images/disk.raw"))]
        assert [(r.method, r.target) for r in p2.requests] == \
            [("CONNECT", "localhost:%d" % tls_origin.port)]
        for info in (dict(plain, no_proxy="127.0.0.1"),
                     dict(secure, no_proxy="example.org,localhost")):
            assert b"".join(ImageDownload(info, cafile=tls_origin.ca_path, **QUICK)) == BODY
        assert (len(p1.requests), len(p2.requests)) == (1, 1)
    assert (len(origin.requests), len(tls_origin.requests)) == (2, 2)
    assert dict(os.environ) == environ


def test_mixed_scheme_mirrors_need_one_proxy(origin, tls_origin):
    urls = [tls_origin.url("/images/disk.raw"), origin.url("/images/disk.raw")]
    with pytest.raises(E.InvalidRequest, match="one proxy per download"):
        image_plan(image_info(urls, proxies={"http": "http://p1:3128"}))
    same = image_plan(image_info(urls, proxies={"http": "http://p:1", "https": "http://p:1"}))
    assert same.options.proxy == "http://p:1" and same.urls == tuple(urls)
    assert image_plan(image_info(urls)).options.proxy is None           # environment
    assert image_plan(image_info(urls, proxies={"http": None, "https": ""})).options.proxy == ""


# ------------------------------------------------------------------ the agent's settings
def test_config_names_mapped_onto_options(tmp_path):
    info = image_info(["https://master/images/disk.raw"])
    options = image_plan(info, image_download_connection_timeout=7,
                         image_download_connection_retries=3,
                         image_download_connection_retry_interval=4,
                         image_download_max_duration=1800, insecure=True,
                         cafile="/ca.pem", certfile="/c.pem", keyfile="/k.pem",
                         tls_min_version="1.3", api_url="http://ironic:6385",
                         lookup_timeout=600).options    # the agent's other settings: ignored
    assert (options.dns_timeout, options.connect_timeout, options.idle_timeout) == (7, 7, 7)
    assert (options.retries, options.retry_delay, options.max_time) == (3, 4, 1800)
    assert options.retry_max_delay == 4 * RETRY_CEILING_FACTOR
    assert (options.insecure, options.cafile, options.cert, options.key) == \
        (True, "/ca.pem", "/c.pem", "/k.pem")
    assert options.tls_min == "1.3" and options.checksum == "sha256:" + SHA256
    defaults = image_plan(info).options      # unconfigured: the agent's own defaults
    assert (defaults.idle_timeout, defaults.retries, defaults.retry_delay) == (
        IPA_DEFAULTS["image_download_connection_timeout"],
        IPA_DEFAULTS["image_download_connection_retries"],
        IPA_DEFAULTS["image_download_connection_retry_interval"])
    assert defaults.max_time is None and defaults.cert is None and defaults.tls_min == "1.2"
    lone = image_plan(info, certfile="/c.pem").options  # the agent needs both, or neither
    assert lone.cert is None
    own = image_plan(info, image_download_connection_timeout=7, idle_timeout=2.5,
                     retry_jitter=False).options   # rawfetch's own names win
    assert (own.idle_timeout, own.connect_timeout, own.retry_jitter) == (2.5, 7, False)


@pytest.mark.parametrize("info, config, words", [
    ({"urls": "http://a/x"}, {}, "urls"),
    ({"urls": []}, {}, "urls"),
    ({"urls": ["ftp://a/x"]}, {}, "http"),
    ({"urls": [b"http://a/x"]}, {}, "urls"),
    ({"checksum": 12345}, {}, "checksum"),
    ({"checksum": "abc", "os_hash_algo": None, "os_hash_value": None}, {}, "length"),
    ({"os_hash_value": None}, {}, "os_hash_algo and os_hash_value"),
    ({"os_hash_value": "zz" * 32}, {}, "checksum"),
    ({"proxies": ["http://p:1"]}, {}, "proxies"),
    ({"proxies": {"all": "http://p:1"}}, {}, "'all'"),
    ({"proxies": {"http": 3128}}, {}, "proxies"),
    ({"proxies": {"http": "socks5://p:1"}}, {}, "socks5"),
    ({"no_proxy": 7}, {}, "no_proxy"),
    ({"image_server_auth_strategy": "http-basic"}, {}, "http_basic"),
    ({"image_server_auth_strategy": "http_basic", "image_server_user": "a:b",
      "image_server_password": "p"}, {}, "RFC 7617"),
    ({"image_request_authorization": 5}, {}, "image_request_authorization"),
    ({}, {"image_download_connection_timeout": "60"}, "timeout"),
    ({}, {"image_download_connection_timeout": 0}, "timeout"),
    ({}, {"image_download_connection_retries": True}, "retries"),
    ({}, {"image_download_connection_retries": 2.5}, "whole"),
    ({}, {"image_download_connection_retry_interval": -1}, "interval"),
    ({}, {"image_download_max_duration": float("nan")}, "max_duration"),
    ({}, {"insecure": "yes"}, "insecure"),
    ({}, {"cafile": 1}, "cafile"),
    ({}, {"tls_min_version": "1.1"}, "tls_min_version"),
    ({}, {"image_server_auth_strategy": "kerberos"}, "auth_strategy"),
    ({}, {"idle_timeout": "fast"}, "idle_timeout"),      # a rawfetch name: checked too
])
def test_wrong_types_refused_before_any_request(origin, info, config, words):
    full = image_info([origin.url("/images/disk.raw")])
    full.update(info)
    with pytest.raises(E.InvalidRequest) as caught:
        ImageDownload(full, **config)
    assert words in str(caught.value) and caught.value.exit_code == 3
    assert origin.requests == []


def test_image_info_not_a_dict():
    with pytest.raises(E.InvalidRequest, match="dict"):
        image_plan([("urls", ["http://a/x"])])   # type: ignore[arg-type]


# ------------------------------------------------------------------ bounds and finality
def test_max_duration_bounds_a_stalled_server(vclock, origin):
    """The server stalls mid-body for ever; the idle timeout (60 s, the agent's default)
    would take a minute: image_download_max_duration ends the whole download (virtual
    seconds)."""
    origin.script([A.stall(at=1100000)], path="/images/disk.raw")
    watch = vclock.stopwatch()
    download = ImageDownload(image_info([origin.url("/images/disk.raw")]),
                             image_download_max_duration=1, trust_env=False)
    got = bytearray()
    with pytest.raises(E.DeadlineExceeded) as caught:
        for chunk in download:
            got += chunk
    elapsed = watch.stop()
    assert 1 - TICK <= elapsed < 1 + STEP < IPA_DEFAULTS["image_download_connection_timeout"]
    assert caught.value.exit_code == 28 and BODY.startswith(bytes(got))
    assert len(origin.requests) == 1


def test_max_duration_counts_from_time_obj(origin):
    """time_obj is when the agent's first try began: a budget already spent is refused
    at once, without a request."""
    with pytest.raises(E.DeadlineExceeded, match="before this download started"):
        ImageDownload(image_info([origin.url("/images/disk.raw")]), time_obj=timing.wall() - 5,
                      image_download_max_duration=2, **QUICK)
    assert origin.requests == []
    download = ImageDownload(image_info([origin.url("/images/disk.raw")]),
                             time_obj=timing.wall() - 5, image_download_max_duration=600,
                             **QUICK)
    assert download.options.max_time <= 595 and download.elapsed >= 5
    download.close()


def test_404_is_not_retried(origin):
    """The agent means not to retry 4xx (its guard is broken): here one request, the
    error at construction, exit 22."""
    with pytest.raises(E.HTTPStatusError) as caught:
        ImageDownload(image_info([origin.url("/images/missing.raw")]), **QUICK)
    assert caught.value.status == 404 and caught.value.exit_code == 22
    assert len(origin.requests) == 1


def test_a_404_mirror_hands_over_to_the_next_url(origin):
    """urls are mirrors: a 404 on the first (one request, not retried) hands over to the
    second at once, where the agent would give up on the whole image."""
    with FaultServer() as second:
        second.add("/images/disk.raw", BODY, etag='"v1"')
        second.script([A.rst(at=1300001), A.normal()], path="/images/disk.raw")
        urls = [origin.url("/images/missing.raw"), second.url("/images/disk.raw")]
        download = ImageDownload(image_info(urls), **QUICK)
        assert b"".join(download) == BODY and download.stream.url == urls[1]
        assert len(origin.requests) == 1 and len(second.requests) == 2


def test_os_hash_value_may_be_a_checksum_file_url():
    """As in the agent: a URL in os_hash_value is a checksum file to look the image up in."""
    info = image_info(["http://master/images/disk.raw"],
                      os_hash_value="http://master/images/SHA256SUMS")
    options = image_plan(info).options
    assert (options.checksum_url, options.checksum) == ("http://master/images/SHA256SUMS",
                                                        None)


def test_stream_to_device_refuses_a_qcow2_and_leaves_the_target(origin, tmp_path):
    """download()'s disk safety applies: a qcow2 image is refused before any write (exit
    95), the target keeps every byte it had."""
    qcow2 = b"QFI\xfb" + BODY[4:]
    origin.add("/images/disk.qcow2", qcow2)
    target = tmp_path / "disk"
    target.write_bytes(STALE)
    info = image_info([origin.url("/images/disk.qcow2")],
                      os_hash_value=hashlib.sha256(qcow2).hexdigest())
    with pytest.raises(E.UnsupportedImageFormat) as caught:
        stream_to_device(info, str(target), **QUICK)
    assert caught.value.exit_code == 95 and target.read_bytes() == STALE


# ------------------------------------------------------------------ the agent's contract
class AgentConf:
    """A stand-in for the agent's oslo.config CONF: attributes for registered options,
    AttributeError (oslo's NoSuchOptError is one) for the others."""
    image_download_connection_timeout = 5
    image_download_connection_retries = 2
    md5_enabled = True

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


def test_agent_options_reads_the_agents_conf():
    """Only registered names are read; without the agent installed there is no CONF."""
    assert agent_options(AgentConf()) == {"image_download_connection_timeout": 5,
                                          "image_download_connection_retries": 2,
                                          "md5_enabled": True}
    assert agent_options() == {}
    options = image_plan(image_info(["http://m/disk.raw"]), **agent_options(AgentConf())
                         ).options
    assert (options.idle_timeout, options.retries) == (5, 2)


def test_low_speed_window_follows_the_operators_timeout():
    """A trickle is cut after the operator's timeout, never later than rawfetch's 30 s;
    md5 is off unless enabled, as in IPA 13."""
    info = image_info(["http://m/disk.raw"])
    assert image_plan(info, image_download_connection_timeout=3).options.speed_time == 3
    assert image_plan(info).options.speed_time == 30
    assert IPA_DEFAULTS["md5_enabled"] is False


@pytest.mark.parametrize("error, name", [
    (E.HTTPStatusError("x", status=404), "ImageDownloadFatalError"),
    (E.HTTPStatusError("x", status=429), "ImageDownloadFatalError"),
    (E.HTTPStatusError("x", status=503), "ImageDownloadError"),
    (E.InvalidRequest("x"), "ImageDownloadFatalError"),
    (E.DeadlineExceeded("x"), "ImageDownloadTimeoutError"),
    (E.IdleTimeout("x"), "ImageDownloadError"),
    (E.ChecksumMismatch("x"), "ImageChecksumError"),
    (E.ConnectError("x"), "ImageDownloadError"),
    (E.ResourceChanged("x"), "ImageDownloadError"),
])
def test_error_table(error, name):
    """docs/ironic.md's table; without the agent, rawfetch's own error is raised."""
    assert ironic_contract.agent_class_name(error) == name
    assert ironic_contract.agent_error(error, "img") is error


def test_the_agents_next_try_continues_the_same_job(origin):
    """The agent's loop builds a new ImageDownload per try with the same time_obj: the
    retry budget is the job's, so a try after it is spent makes no request and raises
    the same class; another time_obj (a new prepare_image) is a new job."""
    origin.script([A.status(503, {"Retry-After": "0"})], path="/images/disk.raw")
    info = image_info([origin.url("/images/disk.raw")])
    started = timing.wall()
    config = dict(QUICK, image_download_connection_retries=2)
    for _ in range(3):                         # the agent's loop
        with pytest.raises(E.HTTPStatusError):
            ImageDownload(info, time_obj=started, **config)
    assert len(origin.requests) == 3           # retries + 1, over all of the loop's tries
    with pytest.raises(E.HTTPStatusError):
        ImageDownload(info, time_obj=started + 1, **config)
    assert len(origin.requests) == 6
    assert len(ironic_contract.JOBS) <= ironic_contract.MAX_JOBS


def test_a_verified_image_leaves_the_registry(origin, tmp_path):
    """A changed object lets the agent's next try restart from zero in the same job; the
    verified image ends the job."""
    origin.script([A.fin(at=1200001), A.replace(BODY[::-1], then=A.normal())],
                  path="/images/disk.raw")
    info = image_info([origin.url("/images/disk.raw")],
                      os_hash_value=hashlib.sha256(BODY[::-1]).hexdigest())
    started, path = timing.wall(), tmp_path / "image"
    with pytest.raises(E.ResourceChanged):
        write_image(ImageDownload(info, time_obj=started, **QUICK), path)
    download = ImageDownload(info, time_obj=started, **QUICK)
    write_image(download, path)
    key = ("c0ffee", tuple(info["urls"]), started)
    assert ironic_contract.JOBS._jobs[key] is download.job
    download.verify_image(str(path))
    assert path.read_bytes() == BODY[::-1] and key not in ironic_contract.JOBS._jobs
    asked = [r for r in origin.requests]
    assert [r.range is None for r in asked] == [True, False, True]


def test_stream_to_device_result_has_what_the_agent_logs(origin, tmp_path):
    target = tmp_path / "disk"
    target.write_bytes(STALE)
    result = stream_to_device(image_info([origin.url("/images/disk.raw")]), str(target),
                              **QUICK)
    assert (result.bytes_transferred, result.content_length) == (len(BODY), len(BODY))
    assert target.read_bytes()[:len(BODY)] == BODY


# ------------------------------------------------------------------ delta re-imaging
def test_stream_to_device_with_a_metalink_fetches_only_the_changed_pieces(origin, tmp_path):
    """The agent's raw streaming with metalink= (any rawfetch option passes through
    config): the device already holds the image but for pieces 5 and 9 (256 KiB each),
    so the one request is their coalesced closed range; the agent's os_hash decides at
    the end together with the pieces. An os_hash contradicting the Metalink's fetches
    nothing (MetalinkError, exit 98) and leaves the device as it was."""
    from rawfetch.metalink.make import describe, to_xml
    piece = 256 << 10
    published = tmp_path / "disk.raw"
    published.write_bytes(BODY)
    meta4 = tmp_path / "disk.raw.meta4"
    meta4.write_text(to_xml([describe(str(published), [origin.url("/images/disk.raw")],
                                      piece)]))
    old = bytearray(BODY)
    for index in (5, 9):
        old[index * piece + 7] ^= 0xFF
    target = tmp_path / "disk"
    target.write_bytes(bytes(old))
    result = stream_to_device(image_info([origin.url("/images/disk.raw")]), str(target),
                              metalink=str(meta4), **QUICK)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == SHA256
    wanted = "bytes=%d-%d" % (5 * piece, 10 * piece - 1)
    assert [r.range for r in origin.requests] == [wanted]
    assert result.bytes_transferred == 5 * piece
    target.write_bytes(bytes(old))
    with pytest.raises(E.MetalinkError) as caught:
        stream_to_device(image_info([origin.url("/images/disk.raw")],
                                    os_hash_value="0" * 64), str(target),
                         metalink=str(meta4), **QUICK)
    assert caught.value.exit_code == 98
    assert target.read_bytes() == bytes(old) and len(origin.requests) == 1
