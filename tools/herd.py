#!/usr/bin/env python3
"""Herd behaviour by simulation: a rack of nodes against one busy master.

One fault server serves at most K responses at once (each held ~100 ms) and answers the
excess with 503 + Retry-After: 1, like a master node right after a restart. N clients
(threads) download the same image at once with rawfetch, once with jittered backoff and
once without. Prints peak concurrent connections, 503s sent and total time.
Usage: python3 tools/herd.py [--clients 200] [--max-inflight 20] [--size 262144]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rawfetch  # noqa: E402
from tests.faultserver import FaultServer, actions as A, make_body  # noqa: E402

CLIENT_OPTIONS = dict(retries=200, retry_delay=1.0, retry_max_delay=8.0, max_time=300,
                      idle_timeout=30, connect_timeout=30)


def simulate(clients: int, max_inflight: int, jitter: bool, size: int,
             hold: float = 0.1) -> Dict[str, float]:
    """Run one herd; every client must end byte-exact. Returns the server's view."""
    data = make_body(size, seed=42)
    outcomes: List[object] = []
    workdir = tempfile.mkdtemp(prefix="rawfetch-herd-")
    with FaultServer(max_inflight=max_inflight, busy_retry_after="1") as server:
        server.add("/img", data)
        server.script([A.normal(delay=hold)])
        gate = threading.Barrier(clients)

        def node(index: int) -> None:
            target = os.path.join(workdir, "node%d" % index)
            gate.wait()
            try:
                rawfetch.download(server.url("/img"), target, retry_jitter=jitter,
                                  **CLIENT_OPTIONS)
                with open(target, "rb") as handle:
                    outcomes.append(handle.read() == data)
                os.unlink(target)
            except rawfetch.FetchError as exc:
                outcomes.append(exc)

        started = time.monotonic()
        threads = [threading.Thread(target=node, args=(i,)) for i in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        stats = dict(clients=clients, exact=sum(1 for o in outcomes if o is True),
                     peak_connections=server.peak_connections,
                     peak_served=server.peak_inflight, busy_503=server.busy_answers,
                     requests=len(server.requests), seconds=round(elapsed, 2),
                     burst=peak_burst([r.time for r in server.requests], window=0.1))
    os.rmdir(workdir)
    return stats


def peak_burst(times: List[float], window: float) -> int:
    """Most requests that arrived within any `window` seconds: the herd's wave height."""
    times = sorted(times)
    best, start = 0, 0
    for end, when in enumerate(times):
        while when - times[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--max-inflight", type=int, default=20)
    parser.add_argument("--size", type=int, default=256 * 1024)
    args = parser.parse_args()
    print("| backoff | clients | byte-exact | peak requests in 100 ms | peak connections |"
          " peak served | 503s sent | requests | total s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ok = True
    for jitter in (True, False):
        stats = simulate(args.clients, args.max_inflight, jitter, args.size)
        ok = ok and stats["exact"] == stats["clients"]
        print("| %s | %d | %d | %d | %d | %d | %d | %d | %.1f |" % (
            "jitter" if jitter else "no jitter", stats["clients"], stats["exact"],
            stats["burst"], stats["peak_connections"], stats["peak_served"], stats["busy_503"],
            stats["requests"], stats["seconds"]), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
