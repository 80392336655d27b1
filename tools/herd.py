#!/usr/bin/env python3
"""The herd, measured: a rack of nodes fetching one image at the same moment.

Each mode starts its origin(s) (in-repo fault servers: they count requests, bytes sent and
responses in flight), optionally one real squid with `collapsed_forwarding on` in front,
then releases N clients at once from a barrier and reports what the origin paid and when
the nodes were done. A mode is "direct" or features joined by "+":

    squid     through one squid (tests/squid harness, collapsed_forwarding on)
    splay     --splay S with --splay-seed set to the node's name (like its host name)
    limit     --limit-rate R on every node
    hash      two mirrors, --mirror-order hash seeded by the node's name
    busy      the origin serves --max-inflight at once, 503 + Retry-After: 1 to the rest
    nojitter  retry_jitter=False (only to show what jittered backoff buys under "busy")

Clients are threads calling rawfetch.download in this process, not `rawfetch` processes:
200 interpreters on 2 cores would take seconds just to start (their start-up spread alone
would splay the herd and hide what is measured) and ~20 MB each, while threads leave a
barrier within milliseconds and the file path moves the bytes with splice(2) outside the
GIL. No mode needs process isolation: the proxy, seed and mirrors are passed explicitly
(trust_env=False), never read from the environment or the host name.

    python3 tools/herd.py [--clients 200] [--modes direct,squid,...] [--size 16M]
                          [--splay 30] [--limit-rate 2M] [--markdown FILE]
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import rawfetch  # noqa: E402
from rawfetch import timing  # noqa: E402
from rawfetch.cliopts import rate as parse_rate, size as parse_size  # noqa: E402
from tests.faultserver import FaultServer, actions as A, make_body  # noqa: E402

MiB = 1 << 20
FEATURES = ("squid", "splay", "limit", "hash", "busy", "nojitter")
DEFAULT_MODES = ("direct", "splay", "limit", "squid", "squid+splay", "hash", "hash+splay",
                 "busy", "busy+nojitter", "busy+splay")
ORIGIN_BACKLOG = 1024     # nginx's default is 511; the fault server's 128 drops SYNs of a
                          # 200-node herd, and each drop costs its node a 1 s retransmit
BURST_WINDOW = 0.1        # s; "first wave" = most requests arriving within this window
RATE_BUCKET = 1.0         # s; the origin's bandwidth is reported per second, like iftop
RETRY_AFTER = "1"         # s; what the busy master tells the nodes it turns away
# Patient like a node in a ramdisk: every client must end byte-exact, however slow.
CLIENT_OPTIONS = dict(retries=200, retry_delay=1.0, retry_max_delay=8.0, idle_timeout=30,
                      connect_timeout=30, trust_env=False)
CLIENT_MAX_TIME = 600.0   # s beyond the splay; a wedged client fails instead of hanging
GATE_TIMEOUT = 120.0      # s for every thread to reach the barrier (200 start in ~1 s)


@dataclass
class HerdConfig:
    """The knobs every mode shares (each mode uses the ones its features name)."""
    clients: int = 200
    size: int = 16 * MiB
    hold: float = 0.1           # s the origin thinks before each answer (a busy master)
    splay: float = 30.0         # s; --splay of the "splay" feature
    limit_rate: int = 2 * MiB   # bytes/s; --limit-rate of the "limit" feature
    max_inflight: int = 20      # responses the "busy" origin serves at once
    workdir: Optional[str] = None   # where the clients' files go (a temp dir by default)


@dataclass
class Outcome:
    """What one node ended with: when (s after the herd was released) and from where."""
    node: str
    path: str
    seconds: float = 0.0
    mirror: int = -1            # index of the origin that served its first byte
    error: Optional[str] = None  # "exit N: message" when the download failed
    exact: bool = False


@dataclass
class ModeResult:
    """One row of the report."""
    mode: str
    clients: int
    size: int
    exact: int = 0
    origin_requests: int = 0
    origin_bytes: int = 0
    busy_503: int = 0
    peak_concurrent: int = 0    # most responses one origin was serving at once
    first_wave: int = 0         # most requests one origin got within BURST_WINDOW
    peak_rate: float = 0.0      # bytes/s, the origins' busiest RATE_BUCKET
    per_mirror: Tuple[int, ...] = ()
    completions: List[float] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)
    skipped: str = ""           # why the mode could not run here (squid missing)


def parse_mode(text: str) -> FrozenSet[str]:
    """"squid+splay" -> {"squid", "splay"}; "direct" -> no feature."""
    if text.strip() == "direct":
        return frozenset()
    features = frozenset(part.strip() for part in text.split("+"))
    unknown = sorted(features - set(FEATURES))
    if unknown or not features:
        raise ValueError("unknown mode %r: use direct or %s joined by +"
                         % (text, ", ".join(FEATURES)))
    return features


def node_name(index: int) -> str:
    """What a node would pass as --splay-seed: its host name."""
    return "rack1-node%03d" % index


def run_mode(mode: str, config: HerdConfig) -> ModeResult:
    """Run one herd in `mode`; the origin's bill and every node's outcome."""
    features = parse_mode(mode)
    result = ModeResult(mode, config.clients, config.size)
    if "squid" in features:
        from tests.squid.squid import missing_requirements
        result.skipped = missing_requirements() or ""
        if result.skipped:
            return result
    body = make_body(config.size, seed=13)
    digest = hashlib.sha256(body).hexdigest()
    workdir = tempfile.mkdtemp(prefix="rawfetch-herd-", dir=config.workdir)
    try:
        with _tier(features, config, body) as (origins, proxy):
            del body
            outcomes = _run_clients(features, config, origins, proxy, workdir)
            _bill(result, origins)
        _judge(result, outcomes, digest, len(origins))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


@contextlib.contextmanager
def _tier(features: FrozenSet[str], config: HerdConfig,
          body: bytes) -> Iterator[Tuple[List[FaultServer], Optional[str]]]:
    """The origin(s), and squid in front when asked; all stopped on the way out (squid
    first, so its connections to the origin end before the origin's books are read)."""
    with contextlib.ExitStack() as stack:
        origins = []
        for _ in range(2 if "hash" in features else 1):
            origin = FaultServer(max_inflight=config.max_inflight if "busy" in features
                                 else None, busy_retry_after=RETRY_AFTER,
                                 backlog=ORIGIN_BACKLOG)
            stack.enter_context(origin)
            origin.add("/img", body)
            origin.script([A.normal(delay=config.hold)])
            origins.append(origin)
        proxy = None
        if "squid" in features:
            from tests.squid.squid import Squid
            proxy = stack.enter_context(Squid(collapse=True)).url
        yield origins, proxy


def client_options(features: FrozenSet[str], config: HerdConfig, index: int,
                   proxy: Optional[str]) -> Dict[str, object]:
    """The rawfetch options of node `index` in this mode."""
    name = node_name(index)
    options: Dict[str, object] = dict(CLIENT_OPTIONS, proxy=proxy or "",
                                      max_time=CLIENT_MAX_TIME)
    if "splay" in features:
        options.update(splay=config.splay, splay_seed=name)
        options["max_time"] = CLIENT_MAX_TIME + config.splay
    if "limit" in features:
        options["limit_rate"] = config.limit_rate
    if "hash" in features:
        options.update(mirror_order="hash", splay_seed=name)
    if "nojitter" in features:
        options["retry_jitter"] = False
    return options


def _run_clients(features: FrozenSet[str], config: HerdConfig, origins: List[FaultServer],
                 proxy: Optional[str], workdir: str) -> List[Outcome]:
    """Start every node behind one barrier, release them together, wait for all."""
    urls = [origin.url("/img") for origin in origins]
    outcomes = [Outcome(node_name(i), os.path.join(workdir, "node%03d" % i))
                for i in range(config.clients)]
    released = [0.0]
    gate = threading.Barrier(config.clients + 1, timeout=GATE_TIMEOUT,
                             action=lambda: released.__setitem__(0, timing.now()))

    finished = [threading.Event() for _ in range(config.clients)]

    def node(index: int) -> None:
        with timing.busy():   # under a test's virtual clock: a node from its first step
            try:
                _node(index)
            finally:
                finished[index].set()

    def _node(index: int) -> None:
        outcome = outcomes[index]
        options = client_options(features, config, index, proxy)
        gate.wait()
        try:
            result = rawfetch.download(urls[0], outcome.path, urls=urls[1:], **options)
            outcome.seconds = timing.now() - released[0]
            outcome.mirror = urls.index(result.segments[0].url) if result.segments else -1
        except rawfetch.FetchError as exc:
            outcome.error = "exit %d: %s" % (exc.exit_code, exc)
        except Exception as exc:  # a rawfetch bug: a caller must only ever see FetchError
            outcome.error = "not a FetchError: %r" % (exc,)

    threads = [threading.Thread(target=node, args=(i,), name=node_name(i))
               for i in range(config.clients)]
    for thread in threads:
        thread.start()
    gate.wait()
    for thread, done in zip(threads, finished):
        timing.wait(done, None)   # on the clock: a virtual one keeps moving meanwhile
        thread.join()
    return outcomes


def _bill(result: ModeResult, origins: List[FaultServer]) -> None:
    """What the origins paid: requests, body bytes sent, 503s, peaks."""
    for origin in origins:
        origin.wait_disconnects(origin.connection_count, timeout=5)
        requests, ends = origin.requests, origin.disconnects
        result.origin_requests += len(requests)
        result.origin_bytes += sum(end.body_bytes_sent for end in ends)
        result.busy_503 += origin.busy_answers
        result.peak_concurrent = max(result.peak_concurrent, origin.peak_inflight)
        result.first_wave = max(result.first_wave,
                                peak_burst([r.time for r in requests], BURST_WINDOW))
    result.peak_rate = peak_rate(_spans(origins), RATE_BUCKET)


def _spans(origins: List[FaultServer]) -> List[Tuple[float, float, int]]:
    """(request time, end time, body bytes) of every answered connection."""
    spans = []
    for origin in origins:
        started = {r.conn: r.time for r in origin.requests}
        spans.extend((started[d.conn], d.time, d.body_bytes_sent)
                     for d in origin.disconnects if d.conn in started)
    return spans


def _judge(result: ModeResult, outcomes: List[Outcome], digest: str, mirrors: int) -> None:
    """Digest every file (after the herd, so hashing never slowed a transfer)."""
    per_mirror = [0] * mirrors
    for outcome in outcomes:
        if outcome.error is not None:
            result.errors.append("%s %s" % (outcome.node, outcome.error))
            continue
        outcome.exact = sha256_file(outcome.path) == digest
        if not outcome.exact:
            result.errors.append("%s: digest differs" % outcome.node)
            continue
        result.exact += 1
        result.completions.append(outcome.seconds)
        if outcome.mirror >= 0:
            per_mirror[outcome.mirror] += 1
    result.completions.sort()
    result.per_mirror = tuple(per_mirror)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def peak_burst(times: Sequence[float], window: float) -> int:
    """Most requests that arrived within any `window` seconds: the herd's wave height."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, when in enumerate(ordered):
        while when - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


def peak_rate(spans: Sequence[Tuple[float, float, int]], bucket: float) -> float:
    """The origin's busiest `bucket` seconds in bytes/s, each response's bytes spread
    evenly over its life (request to close): what its uplink had to carry."""
    if not spans:
        return 0.0
    zero = min(start for start, _end, _sent in spans)
    buckets: Dict[int, float] = {}
    for start, end, sent in spans:
        start, end = start - zero, max(end - zero, start - zero + 1e-6)
        per_second = sent / (end - start)
        for slot in range(int(start // bucket), int(end // bucket) + 1):
            overlap = min(end, (slot + 1) * bucket) - max(start, slot * bucket)
            if overlap > 0:
                buckets[slot] = buckets.get(slot, 0.0) + per_second * overlap
    return max(buckets.values()) / bucket


def percentile(ordered: Sequence[float], fraction: float) -> Optional[float]:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not ordered:
        return None
    rank = math.ceil(fraction * len(ordered) - 1e-9)
    return ordered[min(max(rank, 1), len(ordered)) - 1]


TABLE_HEAD = ("| mode | clients | byte-exact | origin requests | origin bytes served "
              "| peak concurrent at origin | first wave (100 ms) | origin peak MiB/s "
              "| clients per mirror | 503s | p50 s | p99 s | last s |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def table_row(result: ModeResult) -> str:
    """One markdown row; a skipped mode says why."""
    if result.skipped:
        return "| %s | skipped: %s |%s\n" % (result.mode, result.skipped, " |" * 11)
    done = result.completions

    def seconds(value: Optional[float]) -> str:
        return "-" if value is None else "%.1f" % value

    return "| %s | %d | %d | %d | %s MiB (%.2f×) | %d | %d | %.0f | %s | %d | %s | %s | %s |\n" % (
        result.mode, result.clients, result.exact, result.origin_requests,
        format(round(result.origin_bytes / MiB), ","), result.origin_bytes / result.size,
        result.peak_concurrent, result.first_wave, result.peak_rate / MiB,
        "/".join(str(n) for n in result.per_mirror) if len(result.per_mirror) > 1 else "-",
        result.busy_503, seconds(percentile(done, 0.5)), seconds(percentile(done, 0.99)),
        seconds(done[-1] if done else None))


def describe(config: HerdConfig, modes: Sequence[str]) -> str:
    """The line under the table: the knobs the numbers depend on, and how busy the
    machine was (other work on the same cores moves every time column)."""
    return ("%d clients (threads), %s image, origin thinks %.2f s per answer; splay %g s, "
            "limit-rate %s/s, busy origin serves %d at once; modes: %s; %s; "
            "load average %.1f\n" % (
                config.clients, human(config.size), config.hold, config.splay,
                human(config.limit_rate), config.max_inflight, ", ".join(modes),
                time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()[0]))


def human(count: float) -> str:
    return "%g MiB" % (count / MiB) if count >= MiB else "%g KiB" % (count / 1024)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES),
                        help="comma-separated: direct, or %s joined by +" % "|".join(FEATURES))
    parser.add_argument("--size", type=parse_size, default=16 * MiB,
                        help="image size, K/M/G suffixes (squid caches up to 128M)")
    parser.add_argument("--hold", type=float, default=0.1,
                        help="s the origin waits before each answer")
    parser.add_argument("--splay", type=float, default=30.0)
    parser.add_argument("--limit-rate", type=parse_rate, default=2 * MiB)
    parser.add_argument("--max-inflight", type=int, default=20)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        try:
            parse_mode(mode)
        except ValueError as exc:
            parser.error(str(exc))
    config = HerdConfig(args.clients, args.size, args.hold, args.splay, args.limit_rate,
                        args.max_inflight)
    return report(config, modes, args.markdown)


def report(config: HerdConfig, modes: Sequence[str], markdown: Optional[str]) -> int:
    """Run the modes in turn, printing each row as it lands; 1 if a node was not exact."""
    text = TABLE_HEAD
    sys.stdout.write(TABLE_HEAD)
    ok = True
    for mode in modes:
        result = run_mode(mode, config)
        row = table_row(result)
        text += row
        sys.stdout.write(row)
        sys.stdout.flush()
        ok = ok and (bool(result.skipped) or result.exact == result.clients)
        for error in result.errors[:5]:
            sys.stderr.write("%s: %s\n" % (mode, error))
    footer = "\n" + describe(config, modes)
    sys.stdout.write(footer)
    if markdown:
        with open(markdown, "w") as handle:
            handle.write(text + footer)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
