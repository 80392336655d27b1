"""The caching tier: a rack of rawfetch clients fetching one image through one squid.

Why: the standard way to keep a rack from flattening one master is a caching proxy in
front of it; with `collapsed_forwarding on` squid turns N simultaneous misses into one
origin fetch. This starts a fault-server origin and a squid (tests/squid/squid.py,
CACHE_SETTINGS), launches N real `rawfetch` commands at once, and reports what the
origin served, what every client got (sha256 of each file) and how long it took.

    python3 -m tests.squid.cachetier [--clients 30] [--size-mib 64]
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from tests.faultserver import FaultServer, actions as A, make_body
from tests.realnet.harness import wait_or_kill
from tests.realnet.servers import sha256_file
from tests.squid.runner import CLIENT_TIMEOUT, client_env
from tests.squid.squid import Squid

MiB = 1 << 20
ORIGIN_THINK = 3.0   # s before the origin answers: 30 client processes start within it


def measure(clients: int = 30, size: int = 64 * MiB, collapse: bool = True,
            think: float = ORIGIN_THINK) -> Dict[str, object]:
    """Run the rack once; every number the README figure quotes. The origin takes `think`
    seconds before each answer (a busy master): the requests all reach squid before the
    first answer does, which is when collapsing matters."""
    body = make_body(size, seed=64)
    expected = hashlib.sha256(body).hexdigest()
    workdir = tempfile.mkdtemp(prefix="rfsquidrack-")
    try:
        with FaultServer() as origin, Squid(collapse=collapse) as squid:
            origin.add("/img", body)
            origin.script([A.normal(delay=think)])
            del body
            started = time.monotonic()
            codes = _run_rack(origin.url("/img"), squid.url, clients, workdir)
            elapsed = time.monotonic() - started
            origin.wait_disconnects(origin.connection_count, timeout=5)
            served = sum(d.body_bytes_sent for d in origin.disconnects)
            tags = collections.Counter(line.code for line in squid.access_log(expect=clients))
            exact = sum(1 for i in range(clients)
                        if sha256_file(_output(workdir, i)) == expected)
        return {"clients": clients, "size": size, "collapse": collapse, "think": think,
                "exit_codes": codes, "exact": exact,
                "origin_requests": len(origin.requests), "origin_bytes": served,
                "squid_codes": dict(tags), "elapsed": round(elapsed, 2)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _output(workdir: str, index: int) -> str:
    return os.path.join(workdir, "node%02d.img" % index)


def _run_rack(url: str, proxy: str, clients: int, workdir: str) -> List[int]:
    """Start every client before waiting for any: they ask squid at the same moment."""
    env = client_env()
    procs = [subprocess.Popen([sys.executable, "-m", "rawfetch", url, "-o",
                               _output(workdir, i), "-x", proxy, "-q"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, env=env, start_new_session=True)
             for i in range(clients)]
    codes = []
    for proc in procs:
        code = wait_or_kill(proc, CLIENT_TIMEOUT)
        codes.append(-1 if code is None else code)
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--compare", action="store_true",
                        help="also run with collapsed_forwarding off, to show its effect")
    args = parser.parse_args()
    print("| collapsed_forwarding | clients | object | byte-exact | origin requests "
          "| origin bytes served | x object | squid log | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for collapse in (True, False) if args.compare else (True,):
        _row(measure(args.clients, args.size_mib * MiB, collapse))


def _row(stats: Dict[str, object]) -> None:
    size = int(stats["size"])  # type: ignore[call-overload]
    codes = stats["squid_codes"]
    print("| %s | %d | %d MiB | %d | %d | %s | %.2f | %s | %.1f |" % (
        "on" if stats["collapse"] else "off", stats["clients"], size // MiB, stats["exact"],
        stats["origin_requests"], format(stats["origin_bytes"], ","),
        int(stats["origin_bytes"]) / size,  # type: ignore[call-overload]
        ", ".join("%s %d" % kv for kv in sorted(codes.items())),  # type: ignore[union-attr]
        stats["elapsed"]))


if __name__ == "__main__":
    main()
