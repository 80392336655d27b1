"""tests.faultserver's DNSResponder as a process, so it can run inside a namespace.

Why: the real resolver path (glibc getaddrinfo reading /etc/resolv.conf, bind-mounted by
`ip netns exec` from /etc/netns/NAME/) can only reach a server on port 53 at an address
of that network; a Python object in the test process cannot live there. The process
logs every query as a JSON line (time, name, qtype) and stops by itself after --lifetime.

    python3 -m tests.realnet.dnsrunner --bind 10.88.0.53 --record img.test=10.88.0.1 \\
        --script servfail,servfail,answer --log /tmp/q.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Sequence

from tests.faultserver.dns import DNSResponder, DnsAction

READY = "ready"
START_TIMEOUT = 10.0


def parse_script(text: str) -> List[DnsAction]:
    """'servfail,answer:4,nxdomain,drop' -> actions ('answer:4' = answer after 4 s)."""
    actions = []
    for item in text.split(","):
        kind, _, delay = item.strip().partition(":")
        if kind not in ("answer", "servfail", "nxdomain", "drop"):
            raise ValueError("unknown DNS action %r" % item)
        actions.append(DnsAction(kind, float(delay) if delay else 0.0))
    return actions


def parse_records(items: Sequence[str]) -> Dict[str, List[str]]:
    """['img.test=10.0.0.1,10.0.0.2'] -> {'img.test': [...]}."""
    return {name: addrs.split(",") for name, _, addrs in (i.partition("=") for i in items)}


def serve(args: argparse.Namespace) -> None:
    """Answer until SIGTERM or --lifetime, appending each query to --log as it arrives."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    responder = DNSResponder(parse_records(args.record), host=args.bind, port=args.port)
    responder.script(parse_script(args.script))
    responder.start()
    print(READY, flush=True)
    written = 0
    end = time.monotonic() + args.lifetime
    with open(args.log, "a") as log:
        while not stop.is_set() and time.monotonic() < end:
            stop.wait(0.02)
            queries = responder.queries
            for when, name, qtype in queries[written:]:
                log.write(json.dumps({"time": when, "name": name, "qtype": qtype}) + "\n")
            log.flush()
            written = len(queries)
    responder.stop()


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tests.realnet.dnsrunner")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--record", action="append", default=[], metavar="NAME=ADDR[,ADDR]")
    parser.add_argument("--script", default="answer")
    parser.add_argument("--log", required=True)
    parser.add_argument("--lifetime", type=float, default=300.0)
    serve(parser.parse_args(argv))


class DnsRunner:
    """Controller: start the runner (inside `prefix`), wait for 'ready', read its log."""

    def __init__(self, bind: str, records: Dict[str, List[str]], script: str, log: str,
                 prefix: Sequence[str] = ()) -> None:
        self.log = log
        argv = [sys.executable, "-m", "tests.realnet.dnsrunner", "--bind", bind,
                "--script", script, "--log", log]
        for name, addrs in records.items():
            argv += ["--record", "%s=%s" % (name, ",".join(addrs))]
        self.argv = list(prefix) + argv
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self, env: Dict[str, str]) -> "DnsRunner":
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        ready = threading.Event()

        def watch() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            if self.proc.stdout.readline().decode().strip() == READY:
                ready.set()
        threading.Thread(target=watch, daemon=True).start()
        if not ready.wait(START_TIMEOUT):
            self.stop()
            raise RuntimeError("DNS runner did not start: %s" % self._stderr())
        return self

    def _stderr(self) -> str:
        if self.proc is None or self.proc.stderr is None or self.proc.poll() is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-1500:]

    def queries(self) -> List[Dict[str, object]]:
        """Every query so far, in arrival order (give the runner 0.1 s to write it)."""
        time.sleep(0.1)
        try:
            with open(self.log) as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


if __name__ == "__main__":
    main()
