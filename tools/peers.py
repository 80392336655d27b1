"""Peers side by side: the same real network faults against curl, wget and rawfetch.

Why: "rawfetch survives X" means little without the same X thrown at the tools people
would otherwise use, with their best flags. Each (scenario, tool) run gets fresh
namespaces, nginx (or http.server) and a fault DNS responder (so that wget, which has no
--resolve, sees the same two addresses), the same iptables faults triggered at the same
byte count, and a hard timeout. Writes a markdown table (docs/peers.md by default).

    sudo python3 tools/peers.py                  # all scenarios, ~5 minutes
    sudo python3 tools/peers.py --only rst,loss --out /tmp/peers.md
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.realnet.dnsrunner import DnsRunner  # noqa: E402
from tests.realnet.harness import MiB, Outcome, client_env, file_progress, run_client  # noqa: E402
from tests.realnet.netns import (DNS_ADDR, PORT, SERVER_ADDRS, Schedule, Step,  # noqa: E402
                                 Topology, blackhole, cleanup_stale, loss,
                                 missing_requirements, rate_cap, reset, syn_drop)
from tests.realnet.servers import HttpServer, Nginx, replace_file, write_payload  # noqa: E402

RUN_TIMEOUT = 60.0     # s; a tool still running then is killed and reported as hung
SIZE = 128 * MiB
MID = 32 * MiB
URL = "http://img.test:%d/%s"
SPEED = ["--speed-limit", str(MiB), "--speed-time", "3"]   # curl and rawfetch alike

TOOLS: Dict[str, Callable[[str, str], List[str]]] = {
    "rawfetch": lambda url, out: [sys.executable, "-m", "rawfetch", url, "-o", out, "-q",
                                  "--retries", "10", "--connect-timeout", "5",
                                  "--idle-timeout", "5"] + SPEED,
    "curl": lambda url, out: ["curl", "-sS", "--fail", "--retry", "10", "--retry-all-errors",
                              "--retry-delay", "1", "-C", "-", "--connect-timeout", "5",
                              "-o", out, url] + SPEED,
    "wget": lambda url, out: ["wget", "-q", "-c", "--tries=10", "--read-timeout=5",
                              "--connect-timeout=5", "--dns-timeout=5", "--waitretry=1",
                              "--retry-connrefused", "-O", out, url],
}


@dataclass
class Ctx:
    """One run's world: namespaces, document root, the bytes a correct run must end with."""

    topo: Topology
    docroot: str
    workdir: str
    expect_sha: str = ""
    changes: List[str] = field(default_factory=list)


@dataclass
class Scenario:
    key: str
    title: str
    steps: Callable[[Ctx], List[Step]] = lambda ctx: []
    before_start: Callable[[Ctx], None] = lambda ctx: None
    server: str = "nginx"            # or "http.server" (ignores Range)
    path: str = "img?rate=32m"
    dns_script: str = "answer"
    addrs: Sequence[str] = (SERVER_ADDRS[0],)


def _replace_then_rst(ctx: Ctx) -> List[Step]:
    def swap() -> None:
        ctx.expect_sha = replace_file(os.path.join(ctx.docroot, "img"), SIZE, seed=52)
    return [Step(reset(), hold=0.5, at_bytes=MID, before=swap)]


SCENARIOS = [
    Scenario("clean", "no fault (128 MiB paced at 32 MiB/s)"),
    Scenario("blackhole", "DROP both ways for 3 s mid-body (TCP alone may ride it out)",
             steps=lambda ctx: [Step(blackhole(), hold=3.0, at_bytes=MID)]),
    Scenario("blackhole-8s", "DROP both ways for 8 s mid-body (beyond every read timeout)",
             steps=lambda ctx: [Step(blackhole(), hold=8.0, at_bytes=MID)]),
    Scenario("rst", "RST to every client packet for 0.5 s mid-body",
             steps=lambda ctx: [Step(reset(), hold=0.5, at_bytes=MID)]),
    Scenario("loss", "5% random loss both ways, whole transfer",
             before_start=lambda ctx: loss(0.05).apply(ctx.topo)),
    Scenario("syn-blackhole", "2 A records, SYNs to the first dropped",
             before_start=lambda ctx: syn_drop(SERVER_ADDRS[0]).apply(ctx.topo),
             addrs=SERVER_ADDRS),
    Scenario("rate-cap", "hashlimit 128 kB/s for 6 s mid-body",
             steps=lambda ctx: [Step(rate_cap("128kb/s"), hold=6.0, at_bytes=MID)]),
    Scenario("replaced", "file replaced on the server, then RST (right = new content)",
             steps=_replace_then_rst),
    Scenario("no-range", "http.server (ignores Range), RST 0.5 s mid-body, 24 MB/s cap",
             steps=lambda ctx: [Step(reset(), hold=0.5, at_bytes=MID)],
             before_start=lambda ctx: rate_cap("24mb/s", name="rfpace").apply(ctx.topo),
             server="http.server", path="img"),
    Scenario("servfail", "DNS: SERVFAIL twice (one lookup), then answers",
             dns_script="servfail,servfail,answer"),
]


def start_server(scenario: Scenario, ctx: Ctx) -> object:
    """nginx on every server address, or http.server on the first; ready when listening."""
    prefix = ctx.topo.exec_prefix(ctx.topo.server)
    if scenario.server == "nginx":
        server = Nginx(os.path.join(ctx.workdir, "nginx"), ctx.docroot, str(PORT), prefix)
        server.start()
        server.wait_ready(ctx.topo.is_listening)
        return server
    http = HttpServer(ctx.docroot, SERVER_ADDRS[0], PORT,
                      os.path.join(ctx.workdir, "http.log"), prefix)
    http.start().wait_ready(ctx.topo.is_listening)
    return http


def run_one(scenario: Scenario, tool: str, workdir: str, payload: str, sha: str
            ) -> Dict[str, object]:
    """Fresh namespaces + servers, the tool under the scenario's faults, torn down after."""
    docroot = os.path.join(workdir, "www")
    os.makedirs(docroot)
    os.link(payload, os.path.join(docroot, "img"))   # a replacement gets a new inode
    ctx = Ctx(Topology(), docroot, workdir, sha)
    servers: List[object] = []
    try:
        ctx.topo.up()
        servers.append(start_server(scenario, ctx))
        dns = DnsRunner(DNS_ADDR, {"img.test": list(scenario.addrs)}, scenario.dns_script,
                        os.path.join(workdir, "dns.jsonl"), ctx.topo.exec_prefix(ctx.topo.server))
        servers.append(dns.start(client_env()))
        ctx.topo.set_resolver(DNS_ADDR)
        scenario.before_start(ctx)
        out = os.path.join(workdir, "out")
        schedule = Schedule(ctx.topo, scenario.steps(ctx), file_progress(out))
        outcome = run_client(TOOLS[tool](URL % (PORT, scenario.path), out), RUN_TIMEOUT,
                             prefix=ctx.topo.exec_prefix(ctx.topo.client), output=out,
                             schedule=schedule, cwd=workdir)
        result = verdict(outcome, ctx.expect_sha, schedule, out)
    finally:
        for server in reversed(servers):
            server.stop()  # type: ignore[attr-defined]
        ctx.topo.down()
    if servers and isinstance(servers[0], Nginx):
        result["served"] = sum(int(r["bytes"]) for r in servers[0].access_log())
    return result


def verdict(outcome: Outcome, expect: str, schedule: Schedule, out: str) -> Dict[str, object]:
    """exact / corrupt / partial / no file, with exit code and time."""
    if outcome.sha256 is None:
        state = "no file"
    elif os.path.getsize(out) == 0:
        state = "empty file"
    elif outcome.sha256 == expect:
        state = "exact"
    elif os.path.getsize(out) < SIZE:
        state = "partial"
    else:
        state = "CORRUPT"
    return {"state": state, "rc": outcome.returncode, "elapsed": outcome.elapsed,
            "landed": schedule.all_applied()}


def _survived(result: Dict[str, object]) -> bool:
    return result["state"] == "exact" and result["rc"] == 0


def cell(result: Dict[str, object]) -> str:
    rc = result["rc"]
    code = "killed at %ds" % RUN_TIMEOUT if rc is None else "exit %s" % rc
    mark = "yes" if _survived(result) else "**no**"
    note = "" if result["landed"] else " (fault did not land)"
    if "served" in result:
        note += ", %d MiB sent" % (int(result["served"]) // MiB)  # type: ignore[call-overload]
    return "%s: %s, %s, %.1f s%s" % (mark, result["state"], code, result["elapsed"], note)


def versions() -> List[str]:
    def first_line(cmd: Sequence[str]) -> str:
        try:
            proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=10)
            return proc.stdout.decode(errors="replace").strip().splitlines()[0]
        except (OSError, subprocess.TimeoutExpired, IndexError):
            return "unavailable"
    commit = first_line(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    return ["rawfetch at commit %s (working tree), Python %s" % (commit, platform.python_version()),
            first_line(["curl", "--version"]), first_line(["wget", "--version"]),
            first_line(["nginx", "-v"]), "Linux " + platform.release()]


def render(results: Dict[str, Dict[str, Dict[str, object]]], scenarios: List[Scenario],
           tools: List[str]) -> str:
    lines = ["# Peers: rawfetch, curl and wget under the same real faults", "",
             "Generated by `sudo python3 tools/peers.py` (as root; rewrites this file in ~5",
             "minutes; `--only KEY,... --out FILE` for a subset) on %s."
             % datetime.date.today().isoformat(),
             ""]
    lines += ["* " + v for v in versions()] + [""]
    lines += ["Each cell: survived (byte-exact file and exit 0)?, the file's state, exit code,",
              "wall time, and the body bytes nginx logged as sent (all requests; a tool that",
              "restarts from zero instead of resuming shows more than 128 MiB). Every run:",
              "fresh namespaces (`ip netns` + veth), nginx with `limit_rate` pacing",
              "(`?rate=32m`, 128 MiB ~ 4 s) in the server namespace, faults",
              "by iptables there, triggered when the client's file reaches 32 MiB; the name",
              "img.test comes from a fault DNS responder via the client namespace's",
              "resolv.conf. Runs still going after %d s are killed." % RUN_TIMEOUT, "",
              "| scenario | " + " | ".join(tools) + " |",
              "|---|" + "---|" * len(tools)]
    for scenario in scenarios:
        row = [cell(results[scenario.key][tool]) for tool in tools]
        lines.append("| **%s**: %s | %s |" % (scenario.key, scenario.title, " | ".join(row)))
    lines += ["", "Survived: " + ", ".join("%s %d/%d" % (tool, sum(
        _survived(results[s.key][tool]) for s in scenarios), len(scenarios)) for tool in tools)]
    lines += ["", "Flags (each tool's best for an unattended large download):", ""]
    for tool in tools:
        lines.append("* %s: `%s`" % (tool, " ".join(TOOLS[tool]("URL", "OUT")[:]).replace(
            sys.executable, "python3")))
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "peers.md"))
    parser.add_argument("--only", default="", help="comma-separated scenario keys")
    parser.add_argument("--tools", default=",".join(TOOLS))
    args = parser.parse_args(argv)
    reason = missing_requirements()
    if reason:
        print("peers: " + reason, file=sys.stderr)
        return 2
    cleanup_stale()
    chosen = [s for s in SCENARIOS if not args.only or s.key in args.only.split(",")]
    tools = args.tools.split(",")
    results: Dict[str, Dict[str, Dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="rfpeers") as base:
        payload = os.path.join(base, "img")
        sha = write_payload(payload, SIZE, seed=51)
        for scenario in chosen:
            for tool in tools:
                with tempfile.TemporaryDirectory(dir=base) as workdir:
                    result = run_one(scenario, tool, workdir, payload, sha)
                results.setdefault(scenario.key, {})[tool] = result
                print("%-14s %-9s %s" % (scenario.key, tool, cell(result)), flush=True)
    with open(args.out, "w") as handle:
        handle.write(render(results, chosen, tools))
    print("wrote " + args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
