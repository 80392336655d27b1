"""The scenarios of the agents tier for ironic-python-agent: one fault each, set up on a
FaultServer, and what IPA's caller must see once rawfetch is adopted. test_ipa.py asserts
them; ipa_table.py runs them against the stock agent too (docs/agents-ironic.md)."""
from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from tests.faultserver import FaultServer, actions as A, make_body
from tests.ironic_origin import IMAGE_PATH

IMAGE_SIZE = 3 << 20          # three of the agent's 1 MiB chunks
CUT = 1_500_001               # a fault mid-body, not on a chunk boundary
BODY = make_body(IMAGE_SIZE, seed=19)
NEW_BODY = make_body(IMAGE_SIZE, seed=20)       # the image after an operator replaced it
OLD_DISK = make_body(4 << 20, seed=7)           # the loop device before: a previous install
SHA256 = hashlib.sha256(BODY).hexdigest()
PATH = IMAGE_PATH
RETRY_AFTER = 1               # s; the 503's Retry-After
MAX_DURATION = 2              # s; image_download_max_duration of that scenario
PROXIED_HOST = "images.example"   # never resolved: only the proxy sees this name


@dataclass
class Case:
    """One scenario set up: the image_info and agent settings to run with."""
    image_info: Dict[str, Any]
    conf: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str                                   # one line for the table
    setup: Callable[[FaultServer], Case]
    error: Optional[str]                        # the class IPA's caller sees (None: success)
    requests: Callable[[int], bool]             # the image requests rawfetch may make
    limit: str                                  # that bound, in words
    check: Optional[Callable[[FaultServer, Dict[str, Any]], None]] = None
    untouched: bool = False     # fails before the agent opens its target: nothing written


def info(srv: FaultServer, **extra: Any) -> Dict[str, Any]:
    base = {"id": "image-19", "urls": [srv.url(PATH)], "os_hash_algo": "sha256",
            "os_hash_value": SHA256, "disk_format": "raw", "stream_raw_images": True}
    base.update(extra)
    return base


def scripted(*actions: A.Action, **extra: Any) -> Callable[[FaultServer], Case]:
    def setup(srv: FaultServer) -> Case:
        srv.script(list(actions), path=PATH)
        return Case(info(srv, **extra))
    return setup


def refused_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def first_url_refused(srv: FaultServer) -> Case:
    return Case(info(srv, urls=["http://127.0.0.1:%d%s" % (refused_port(), PATH),
                                srv.url(PATH)]))


def checksum_file(srv: FaultServer) -> Case:
    srv.add("/images/SHA256SUMS", ("%s  other.raw\n%s *disk.raw\n" % ("1" * 64, SHA256))
            .encode())
    return Case(info(srv, os_hash_algo=None, os_hash_value=None,
                     checksum=srv.url("/images/SHA256SUMS")))


def max_duration(srv: FaultServer) -> Case:
    srv.script([A.stall(CUT), A.stall(0)], path=PATH)
    return Case(info(srv), {"image_download_max_duration": MAX_DURATION,
                            "image_download_connection_retries": 9})


def proxied(srv: FaultServer) -> Case:
    return Case(info(srv, urls=["http://%s%s" % (PROXIED_HOST, PATH)],
                     proxies={"http": "http://127.0.0.1:%d" % srv.port}))


# ------------------------------------------------------------------ extra checks
def image_requests(srv: FaultServer) -> List[Any]:
    return [r for r in srv.requests if r.path == PATH]


def resumed_at_cut(srv: FaultServer, result: Dict[str, Any]) -> None:
    asked = image_requests(srv)
    assert asked[1].range == "bytes=%d-" % CUT, "Range per request: %s" % (
        [r.range for r in asked],)


def resumed_within(low: int, high: int) -> Callable[[FaultServer, Dict[str, Any]], None]:
    """The resume starts where the bytes that reached the agent end: an RST drops what
    was in flight (so before the cut), a trickle adds a few (so after it)."""
    def check(srv: FaultServer, result: Dict[str, Any]) -> None:
        asked = image_requests(srv)
        start = (asked[1].range or "").partition("=")[2].rstrip("-")
        assert asked[0].range is None and start.isdigit() and low <= int(start) <= high, \
            "Range per request: %s" % ([r.range for r in asked],)
    return check


CONF_BOUND = 10.0   # s; far below the 30-60 s the stall or trickle would take if the
                    # agent's 1 s image_download_connection_timeout were not applied


def resumed_soon(low: int, high: int) -> Callable[[FaultServer, Dict[str, Any]], None]:
    """resumed_within(), and cut by the agent's own timeout (read from its CONF)."""
    resumed = resumed_within(low, high)

    def check(srv: FaultServer, result: Dict[str, Any]) -> None:
        resumed(srv, result)
        assert result["elapsed"] < CONF_BOUND, "took %s s: the agent's timeout was not " \
            "applied" % result["elapsed"]
    return check


def retry_after_honoured(srv: FaultServer, result: Dict[str, Any]) -> None:
    asked = image_requests(srv)
    assert asked[1].time - asked[0].time >= RETRY_AFTER - 0.05, "Retry-After not waited"


def replaced_never_spliced(srv: FaultServer, result: Dict[str, Any]) -> None:
    asked = image_requests(srv)
    assert asked[1].if_range, "the resume did not carry If-Range"
    assert asked[2].range is None, "the agent's next try must start from byte 0"


def within_max_duration(srv: FaultServer, result: Dict[str, Any]) -> None:
    """The deadline cuts a stalled receive: at max_duration, plus a margin for a loaded
    machine that stays far below what the stalls would cost without it (stock: ~10 s)."""
    assert MAX_DURATION - 0.2 <= result["elapsed"] <= MAX_DURATION + 3, result["elapsed"]


def through_the_proxy(srv: FaultServer, result: Dict[str, Any]) -> None:
    assert [r.target for r in srv.requests] == ["http://%s%s" % (PROXIED_HOST, PATH)]


def sums_once(srv: FaultServer, result: Dict[str, Any]) -> None:
    assert [r.path for r in srv.requests] == ["/images/SHA256SUMS", PATH]


def exactly(n: int) -> Callable[[int], bool]:
    return lambda count: count == n


def at_most(n: int) -> Callable[[int], bool]:
    return lambda count: 1 <= count <= n


RETRIES = 3   # QUICK_CONF's image_download_connection_retries
SCENARIOS = [
    Scenario("clean", "clean, checksum right", scripted(A.normal()), None, exactly(1), "1"),
    Scenario("fin", "FIN mid-body", scripted(A.fin(CUT), A.normal()), None, exactly(2),
             "2, the 2nd a Range from the cut", resumed_at_cut),
    Scenario("rst", "RST mid-body", scripted(A.rst(CUT), A.normal()), None, exactly(2),
             "2, the 2nd a Range from the bytes held", resumed_within(1, CUT)),
    Scenario("stall", "stall mid-body", scripted(A.stall(CUT), A.normal()), None,
             exactly(2), "2, the 2nd a Range from the cut, within 10 s",
             resumed_soon(CUT, CUT)),
    Scenario("trickle", "trickle (1 B / 0.2 s) mid-body",
             scripted(A.trickle(CUT, gap=0.2, step=1), A.normal()), None, exactly(2),
             "2, the 2nd a Range from the bytes held, within 10 s",
             resumed_soon(CUT, CUT + 100)),
    Scenario("503", "503 + Retry-After: 1",
             scripted(A.status(503, {"Retry-After": str(RETRY_AFTER)}), A.normal()), None,
             exactly(2), "2, >= 1 s apart", retry_after_honoured),
    Scenario("404", "404", scripted(A.status(404)), "ImageDownloadFatalError", exactly(1),
             "1", untouched=True),
    Scenario("checksum-wrong", "checksum wrong", scripted(A.normal(), os_hash_value="f" * 64),
             "ImageChecksumError", exactly(1), "1 (the same bytes again cannot match)"),
    Scenario("checksum-url", "checksum from a SHA256SUMS URL", checksum_file, None,
             exactly(1), "1 (+1 for SHA256SUMS)", sums_once),
    Scenario("range-ignored", "FIN, then Range ignored (200)",
             scripted(A.fin(CUT), A.normal(ignore_range=True)), None, exactly(2), "2"),
    Scenario("replaced", "image replaced between attempts",
             scripted(A.fin(CUT), A.replace(NEW_BODY, then=A.normal())),
             "ImageChecksumError", exactly(3),
             "3: If-Range refused, the next try from 0, never spliced", replaced_never_spliced),
    Scenario("first-url-refused", "first URL refused, second serves", first_url_refused,
             None, exactly(1), "1 on the second URL"),
    Scenario("down-mid-body", "server down mid-body (every later connection reset)",
             scripted(A.fin(CUT), A.raw(b"", close="rst")), "ImageDownloadError",
             at_most(RETRIES + 2), "<= retries + 2 (the 1st brought >= 1 MiB: not charged)"),
    Scenario("max-duration", "max_duration 2 s over a stall", max_duration,
             "ImageDownloadTimeoutError", at_most(4), "<= 4, ends at 2 s (+ <= 3 s margin)",
             within_max_duration),
    Scenario("proxy", "proxies from image_info", proxied, None, exactly(1),
             "1, absolute-form, via the proxy", through_the_proxy),
]
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}


# ------------------------------------------------------------------ the verdict
WIPE = 1 << 20    # what rawfetch zeroes on a device whose image failed


def digest(path: str, size: int = len(BODY)) -> Optional[str]:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def head(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(WIPE)


def check(scenario: Scenario, srv: FaultServer, result: Dict[str, Any], target: str,
          device: bool) -> None:
    """What every scenario asserts (AssertionError if not met): the class IPA's caller
    sees, the bytes on disk, the requests the server saw."""
    assert result["error"] == scenario.error, "%s: %s" % (result["error"], result["message"])
    if scenario.error is not None:
        assert result["error_module"] == "ironic_python_agent.errors", result["error_module"]
    assert result["api_error"] == scenario.error, "the agent's API reports %s (%s)" % (
        result["api_error"], result["api_status"])
    if scenario.error is None:
        assert digest(target) == SHA256, "the bytes on disk are not the image"
        sizes = (result.get("size"), result.get("reported"))
        assert sizes in ((len(BODY), len(BODY)), (len(BODY), str(len(BODY)))), \
            "the agent's log line read %r, %r" % sizes
    elif scenario.untouched:
        if device:
            assert digest(target, len(OLD_DISK)) == hashlib.sha256(OLD_DISK).hexdigest(), \
                "the disk was written"
        else:
            assert not os.path.exists(target), "a file was left"
    elif scenario.error == "ImageChecksumError":
        if device:
            assert head(target) == bytes(WIPE), "a failed image's first MiB must be zeroed"
        else:
            assert not os.path.exists(target), "a failed image must not stay behind"
    count = len(image_requests(srv))
    assert scenario.requests(count), "%d image requests; allowed: %s" % (count, scenario.limit)
    if scenario.check is not None:
        scenario.check(srv, result)
