"""Real kernel faults between two namespaces while the real command downloads from nginx.

Why: a blackholed path, a RST, loss, a dead address and a slow link are produced here by
iptables in the server namespace, mid-body (triggered when the client's .part reaches a
size), and the command must end byte-exact within the bound each test states. Pacing:
nginx `limit_rate` (?rate=32m) makes a 128 MiB transfer last ~4 s so a fault lands in the
body; http.server cannot pace itself, so there a hashlimit cap paces it instead.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.realnet.harness import FAST, MiB, Outcome, file_progress, ns_url, \
    rawfetch_argv, run_client
from tests.realnet.netns import PORT, SERVER_ADDRS, Schedule, Step, Topology, \
    blackhole, loss, rate_cap, reset, syn_drop
from tests.realnet.servers import HttpServer, replace_file, write_payload

pytestmark = [pytest.mark.realnet, pytest.mark.timeout(60)]
ADDR1, ADDR2 = SERVER_ADDRS
MID = 32 * MiB          # faults land once the client holds this much of 128 MiB
PACE = "32m"            # nginx limit_rate: 128 MiB in ~4 s without faults
BOTH = ["--resolve", "img.test:%d:%s,%s" % (PORT, ADDR1, ADDR2)]


def fetch(topo: Topology, url: str, out: str, flags: Sequence[str], steps: List[Step],
          timeout: float = 40) -> Tuple[Outcome, Schedule]:
    """Run the command in the client namespace with `steps` applied on its progress."""
    schedule = Schedule(topo, steps, file_progress(out))
    outcome = run_client(rawfetch_argv(url, out, *flags), timeout, output=out,
                         prefix=topo.exec_prefix(topo.client), schedule=schedule)
    return outcome, schedule


def resumes(log: List[dict], at_least: int = MID, addr: Optional[str] = None) -> List[dict]:
    """206 answers to `Range: bytes=N-` with N >= at_least (from nginx's access log)."""
    return [r for r in log if r["status"] == "206" and r["range"].startswith("bytes=")
            and int(r["range"][6:-1]) >= at_least and (addr is None or r["addr"] == addr)]


def test_blackhole_mid_body(topo, ns_nginx, payloads, tmp_path):
    """3 s of DROP both ways mid-body: idle timeout (1 s), reconnects time out until the
    path is back, then a 206 resume. Bound: 4 s transfer + 3 s hole + 5 s slack = 12 s."""
    out = str(tmp_path / "img")
    result, schedule = fetch(topo, ns_url("img128", rate=PACE), out, FAST,
                             [Step(blackhole(), hold=3.0, at_bytes=MID)])
    assert result.returncode == 0 and schedule.all_applied(), result.explain()
    assert result.sha256 == payloads.sha["img128"] and result.elapsed < 12, result.explain()
    assert "IdleTimeout" in result.errors(), result.explain()
    assert resumes(ns_nginx.access_log()), ns_nginx.access_log()


def test_rst_mid_body(topo, ns_nginx, payloads, tmp_path):
    """0.5 s of RST answers to the client's packets: reset mid-body (ReceiveError), the
    reconnects are refused while it lasts, then a 206 resume. Bound: 10 s."""
    out = str(tmp_path / "img")
    result, schedule = fetch(topo, ns_url("img128", rate=PACE), out, FAST,
                             [Step(reset(), hold=0.5, at_bytes=MID)])
    assert result.returncode == 0 and schedule.all_applied(), result.explain()
    assert result.sha256 == payloads.sha["img128"] and result.elapsed < 10, result.explain()
    assert result.errors()[0] == "ReceiveError", result.explain()
    assert resumes(ns_nginx.access_log()), ns_nginx.access_log()


def test_random_loss_throughout(topo, ns_nginx, payloads, tmp_path):
    """5% random loss both ways for the whole transfer: TCP retransmits, nothing corrupts,
    rawfetch may or may not retry. Bound: 64 MiB in 20 s."""
    out = str(tmp_path / "img")
    fault = loss(0.05)
    fault.apply(topo)
    result, _ = fetch(topo, ns_url("img64", rate=PACE), out, FAST, [])
    assert result.returncode == 0, result.explain()
    assert result.sha256 == payloads.sha["img64"] and result.elapsed < 20, result.explain()
    assert topo.rule_packets(fault.tag) > 0


def test_syn_blackhole_on_first_address(topo, ns_nginx, payloads, tmp_path):
    """Two addresses, the first one's SYNs dropped: Happy Eyeballs starts the second after
    250 ms, long before --connect-timeout 5. Bound: 3 s for 64 MiB unpaced."""
    out = str(tmp_path / "img")
    fault = syn_drop(ADDR1)
    fault.apply(topo)
    flags = BOTH + ["--connect-timeout", "5", "--retries", "0"]
    result, _ = fetch(topo, ns_url("img64", host="img.test"), out, flags, [])
    assert result.returncode == 0 and result.elapsed < 3, result.explain()
    assert result.sha256 == payloads.sha["img64"]
    assert topo.rule_packets(fault.tag) >= 1          # ADDR1 was really tried first
    assert [r["addr"] for r in ns_nginx.access_log()] == [ADDR2]


def test_address_dies_mid_body_resume_on_second(topo, ns_nginx, payloads, tmp_path):
    """Connected to ADDR1, which then blackholes for good: idle timeout, the reconnect's
    SYN to ADDR1 is lost, ADDR2 answers and serves the 206. Bound: 12 s."""
    out = str(tmp_path / "img")
    fault = blackhole(addr=ADDR1)
    result, schedule = fetch(topo, ns_url("img128", rate=PACE, host="img.test"), out,
                             BOTH + FAST, [Step(fault, hold=None, at_bytes=MID)])
    assert result.returncode == 0 and schedule.all_applied(), result.explain()
    assert result.sha256 == payloads.sha["img128"] and result.elapsed < 12, result.explain()
    assert result.errors()[0] == "IdleTimeout", result.explain()
    # nginx logs the dead ADDR1 request only at its send_timeout; the rule's counter shows
    # the transfer was on ADDR1, the log that the resume came from ADDR2.
    assert schedule.steps[0].packets > 0
    assert resumes(ns_nginx.access_log(), addr=ADDR2), ns_nginx.access_log()


def test_rate_cap_low_speed_aborts_and_resumes(topo, ns_nginx, payloads, tmp_path):
    """A hashlimit cap (128 kB/s) for 4 s: below --speed-limit 1 MiB/s over --speed-time
    1 s the attempt is aborted (LowSpeed, not idle), retried, then resumed. Bound: 16 s."""
    out = str(tmp_path / "img")
    flags = FAST + ["--idle-timeout", "10", "--speed-limit", str(MiB), "--speed-time", "1"]
    result, schedule = fetch(topo, ns_url("img128", rate=PACE), out, flags,
                             [Step(rate_cap("128kb/s"), hold=4.0, at_bytes=MID)])
    assert result.returncode == 0 and schedule.all_applied(), result.explain()
    assert result.sha256 == payloads.sha["img128"] and result.elapsed < 16, result.explain()
    assert "LowSpeed" in result.errors() and "IdleTimeout" not in result.errors()
    assert resumes(ns_nginx.access_log()), ns_nginx.access_log()


def test_rate_cap_for_good_gives_up_with_28(topo, ns_nginx, tmp_path):
    """A link that stays below --speed-limit: every attempt is LowSpeed, the budget
    (--retries 1) runs out, exit 28, no final file. Bound: 8 s."""
    out = str(tmp_path / "img")
    rate_cap("64kb/s").apply(topo)
    flags = ["--speed-limit", str(MiB), "--speed-time", "1", "--retries", "1",
             "--retry-delay", "0.1", "--idle-timeout", "10"]
    result, _ = fetch(topo, ns_url("img64"), out, flags, [], timeout=20)
    assert result.returncode == 28 and result.elapsed < 8, result.explain()
    assert result.errors() == ["LowSpeed", "LowSpeed"] and not os.path.exists(out)


def test_file_replaced_then_rst_restarts_with_new_content(topo, ns_nginx, docroot, tmp_path):
    """The file changes on the server mid-transfer, then a RST: the resume's If-Range
    fails, nginx sends the new version in full, the command restarts from zero and the
    final file is the new content (never a splice). Bound: 15 s."""
    path = os.path.join(docroot, "changing")
    write_payload(path, 128 * MiB, seed=41)
    new: List[str] = []
    step = Step(reset(), hold=0.3, at_bytes=MID,
                before=lambda: new.append(replace_file(path, 128 * MiB, seed=42)))
    out = str(tmp_path / "img")
    result, schedule = fetch(topo, ns_url("changing", rate=PACE), out, FAST, [step])
    assert result.returncode == 0 and schedule.all_applied(), result.explain()
    assert result.sha256 == new[0] and result.elapsed < 15, result.explain()
    assert len(result.named("restart")) == 1, result.explain()


@pytest.fixture
def ns_http_server(topo: Topology, payloads, tmp_path) -> Iterator[HttpServer]:
    """http.server inside the server namespace on ADDR1:PORT."""
    server = HttpServer(payloads.directory, ADDR1, PORT, str(tmp_path / "http.log"),
                        prefix=topo.exec_prefix(topo.server))
    try:
        server.start().wait_ready(topo.is_listening)
        yield server
    finally:
        server.stop()


def test_http_server_rst_resume_skips_prefix(topo, ns_http_server, payloads, tmp_path):
    """http.server ignores Range: after a real RST the retry gets 200 with the same
    Last-Modified and length, the held prefix is skipped. Paced by a 24 MB/s hashlimit
    cap. Bound: 15 s."""
    rate_cap("24mb/s", name="rfpace").apply(topo)
    out = str(tmp_path / "img")
    result, schedule = fetch(topo, ns_url("img64"), out, FAST,
                             [Step(reset(), hold=0.3, at_bytes=16 * MiB)])
    assert result.returncode == 0 and schedule.all_applied(), result.explain()
    assert result.sha256 == payloads.sha["img64"] and result.elapsed < 15, result.explain()
    skipped = [e for e in result.named("resume") if "skipped" in e]
    assert skipped and int(skipped[0]["skipped"]) >= 16 * MiB, result.explain()

