"""The real resolver path: glibc getaddrinfo in the client namespace, whose resolv.conf
(/etc/netns/NAME/resolv.conf) points at the fault DNS responder in the server namespace.

Why: rawfetch's dns_timeout, its EAI_AGAIN-vs-NXDOMAIN retry rule and its use of every
A record must hold with the system resolver in between, not only with a resolver hook.
"""
from __future__ import annotations

import collections
from typing import Callable, Dict, Iterator, List

import pytest

from tests.realnet.dnsrunner import DnsRunner
from tests.realnet.harness import FAST, Outcome, client_env, rawfetch_argv, run_client
from tests.realnet.netns import DNS_ADDR, PORT, SERVER_ADDRS, Topology, syn_drop

pytestmark = [pytest.mark.realnet, pytest.mark.timeout(40)]
ADDR1, ADDR2 = SERVER_ADDRS
URL = "http://img.test:%d/img64" % PORT


@pytest.fixture
def dns(topo: Topology, tmp_path) -> Iterator[Callable[..., DnsRunner]]:
    """Factory: start the responder (records, script) and point the client at it."""
    started: List[DnsRunner] = []

    def start(script: str, records: Dict[str, List[str]]) -> DnsRunner:
        runner = DnsRunner(DNS_ADDR, records, script, str(tmp_path / "queries.jsonl"),
                           prefix=topo.exec_prefix(topo.server))
        started.append(runner)
        topo.set_resolver(DNS_ADDR)
        return runner.start(client_env())

    yield start
    for runner in started:
        runner.stop()


def fetch(topo: Topology, out: str, flags: List[str], timeout: float = 30) -> Outcome:
    """The command in the client namespace, resolving img.test through glibc."""
    return run_client(rawfetch_argv(URL, out, *flags), timeout, output=out,
                      prefix=topo.exec_prefix(topo.client))


def qtypes(runner: DnsRunner) -> Dict[str, int]:
    return dict(collections.Counter(str(q["qtype"]) for q in runner.queries()
                                    if q["name"] == "img.test"))


def test_slow_resolver_exceeds_dns_timeout(topo, dns, tmp_path):
    """Answers come after 4 s, glibc would wait 5 s: --dns-timeout 1 cuts each lookup,
    both attempts time out, exit 28. Bound: 2 lookups of 1 s + backoff < 4 s."""
    runner = dns("answer:4", {"img.test": [ADDR1]})
    result = fetch(topo, str(tmp_path / "img"), ["--dns-timeout", "1", "--retries", "1",
                                                 "--retry-delay", "0.1"])
    assert result.returncode == 28 and 2 <= result.elapsed < 4, result.explain()
    assert result.errors() == ["DNSTimeout", "DNSTimeout"], result.explain()
    assert qtypes(runner)["A"] == 2


def test_servfail_then_recovery(topo, dns, ns_nginx, payloads, tmp_path):
    """SERVFAIL is EAI_AGAIN, a temporary failure: retried, the second lookup answers and
    the download completes byte-exact. Bound: 5 s."""
    runner = dns("servfail,servfail,answer", {"img.test": [ADDR1]})
    result = fetch(topo, str(tmp_path / "img"), FAST)
    assert result.returncode == 0 and result.elapsed < 5, result.explain()
    assert result.sha256 == payloads.sha["img64"]
    assert result.errors() == ["DNSError"], result.explain()
    assert qtypes(runner) == {"A": 2, "AAAA": 2}


def test_nxdomain_fails_at_once_without_retries(topo, dns, tmp_path):
    """NXDOMAIN is final: exit 6 at once although --retries 5, and the responder saw
    exactly one query per lookup family. Bound: 2 s."""
    runner = dns("nxdomain", {"img.test": [ADDR1]})
    result = fetch(topo, str(tmp_path / "img"), ["--retries", "5", "--retry-delay", "1"])
    assert result.returncode == 6 and result.elapsed < 2, result.explain()
    assert result.errors() == ["DNSError"], result.explain()
    assert qtypes(runner) == {"A": 1, "AAAA": 1}


def test_first_a_record_blackholed(topo, dns, ns_nginx, payloads, tmp_path):
    """Two A records, SYNs to the first dropped: the second connects 250 ms later (Happy
    Eyeballs over resolver answers), far below --connect-timeout 5. Bound: 3 s."""
    dns("answer", {"img.test": [ADDR1, ADDR2]})
    fault = syn_drop(ADDR1)
    fault.apply(topo)
    result = fetch(topo, str(tmp_path / "img"), ["--connect-timeout", "5", "--retries", "0"])
    assert result.returncode == 0 and result.elapsed < 3, result.explain()
    assert result.sha256 == payloads.sha["img64"]
    assert topo.rule_packets(fault.tag) >= 1
    assert [r["addr"] for r in ns_nginx.access_log()] == [ADDR2]
