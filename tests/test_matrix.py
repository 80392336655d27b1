"""Fault x data-path matrix (issue 10): every way a user gets the bytes, crossed with every
fault a server or network throws mid-body. Each cell asserts what the user cares about:
the exact bytes (digest) and the exit code or error class, and that every Range the
server saw starts where the bytes the client held end (no overlap, no gap).

The data paths and their drivers are in tests/matrix_paths.py. Fault offsets lie past
1 MiB (one splice moves up to 1 MiB through the pipe) and at odd values.

Every cell runs on the virtual clock (tests/vclock.py): stalls, trickles and max_time
cost no real time, and the max-time cells assert the virtual time the job took. The
real command in a subprocess on the real clock crosses every fault in the slow tier.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import pytest

from rawfetch import errors as E
from rawfetch import timing
from rawfetch.timing import SPEED_SAMPLES
from tests.faultserver import FaultServer, actions as A
from tests.faultserver.actions import Action, Serve
from tests.proxyserver import TestProxy
from tests.matrix_paths import (BODY, COMMAND_PATHS, PATHS, TARGETS, DataPath, Got,
                                describe, first_difference, sha256)
from tests.vclock import VirtualClock

pytestmark = pytest.mark.timeout(60)

CUT = (1 << 20) + 13        # first fault: body bytes of the first response before it
CUT2 = (1 << 20) + 4099     # a later fault, counted in the (resumed) response it hits
# The delta row's ranges are 256 KiB and more: its faults come earlier, still at odd
# offsets mid-piece (a closed range is never spliced: RangeStream.splice_to).
DELTA_CUT = (96 << 10) + 13
DELTA_CUT2 = (64 << 10) + 4099   # inside what any resumed range has left (>= 160 KiB)
ETAG = '"matrix-1"'         # the same strong ETag on both mirrors: continuing is provable
IDLE = 0.3                  # idle_timeout: a stall costs this much
SPEED_TIME = 0.3            # the low-speed window ...
SPEED_LIMIT = 100000        # ... and limit: a trickle (1 byte per >= 20 ms) is far below it
CHECK = SPEED_TIME / SPEED_SAMPLES   # the low-speed rule looks at progress this often
TRICKLE_GAPS = (0.5, 1, 2, 4)        # x CHECK: off the check interval, on it, multiples
RETRIES = 6
# Budget: every failing response in a cell's script costs at most one retry (an attempt
# that brought >= 1 MiB is not even charged), and no cell scripts more than five failing
# responses (run_cell asserts it), so RETRIES = 6 lets every cell but max-time succeed
# with one to spare. No max_time is set there: those cells have no time budget to run
# out of. The delta rows script the fault into each range (up to 2 x 3 = 6 failing
# responses in pieces-delta), so they get one more, keeping the spare.
DELTA_RETRIES = RETRIES + 1
OPTIONS: Dict[str, Any] = dict(retries=RETRIES, retry_delay=0.001, retry_max_delay=0.01,
                               idle_timeout=IDLE, speed_limit=SPEED_LIMIT,
                               speed_time=SPEED_TIME, connect_timeout=2.0)
# max-time cell: the server trickles forever, so only max_time can end it. It must come
# before the retries run out: each trickling attempt lasts at least SPEED_TIME, so
# RETRIES attempts need more than RETRIES * SPEED_TIME > MAX_TIME; and after the first
# attempt's low-speed failure (SPEED_TIME + one CHECK), so a resumed attempt is cut.
MAX_TIME = 2 * SPEED_TIME
DISCONNECT_WAIT = 10.0      # a trickle/stall handler notices the client left within ~1 gap
EXACT_FAULTS = ("fin", "stall")   # nothing is in flight when the client gives up on these
# In place, a failed download may leave the target's first MiB zeroed (a disk must not
# look bootable half-written: rawfetch.disk.HEAD_HOLD, README "In place").
WIPED_HEAD = 1 << 20


class Fault(NamedTuple):
    """A server misbehaviour: `steps(at, at2)` are the failing responses (fault offsets
    `at`, then `at2` for a second one), `final` the response after them (it repeats)."""
    name: str
    steps: Callable[[int, int], List[Action]]
    final: Action = A.normal()
    error: Optional[type] = None    # the error the cell must end with (None: success)


def _trickle(gap: float) -> Callable[[int, int], List[Action]]:
    return lambda at, at2: [A.trickle(at=at, gap=gap)]


FAULTS = [
    Fault("fin", lambda at, at2: [A.fin(at=at)]),
    Fault("rst", lambda at, at2: [A.rst(at=at)]),
    Fault("stall", lambda at, at2: [A.stall(at=at)]),
] + [
    Fault("trickle-%gx" % factor, _trickle(factor * CHECK)) for factor in TRICKLE_GAPS
] + [
    Fault("two-trickles", lambda at, at2: [A.trickle(at=at, gap=CHECK),
                                           A.trickle(at=at2, gap=2 * CHECK)]),
    Fault("range-ignored", lambda at, at2: [A.fin(at=at)], final=A.normal(ignore_range=True)),
    Fault("wrong-content-range", lambda at, at2: [A.fin(at=at), A.wrong_content_range()]),
    Fault("503-then-cut", lambda at, at2: [A.status(503, {"Retry-After": "0"}),
                                           A.rst(at=at)]),
    # Trickles forever, from every offset: an error cell ended by max_time.
    Fault("max-time", lambda at, at2: [A.trickle(at=at, gap=CHECK)],
          final=A.trickle(at=0, gap=CHECK), error=E.DeadlineExceeded),
]


# ------------------------------------------------------------------ servers and cells
@pytest.fixture(scope="module")
def servers() -> Iterator[Dict[str, FaultServer]]:
    """Plain, second plain (the mirror) and TLS servers shared by all cells: each cell
    has its own path and per-path script, and one CA serves the whole module."""
    started: Dict[str, Any] = {"plain": FaultServer(), "mirror": FaultServer(),
                               "tls": FaultServer(tls="ok"), "proxy": TestProxy()}
    for srv in started.values():
        srv.start()
    yield started
    for srv in started.values():
        srv.stop()


Script = List[Tuple[FaultServer, List[Action]]]


def cuts(path: DataPath) -> Tuple[int, int]:
    """The fault offsets: CUT and CUT2, unless a closed range of the path is too short
    to hold both (the delta row's 256 KiB ranges): then DELTA_CUT and DELTA_CUT2."""
    shortest = min((last + 1 - first for first, last in path.ranges), default=len(BODY))
    return (CUT, CUT2) if shortest > CUT + CUT2 else (DELTA_CUT, DELTA_CUT2)


def range_script(path: DataPath, fault: Fault, steps: List[Action]) -> List[Action]:
    """A delta re-image's script: each planned closed range's first request gets the
    fault, then the fault's final response serves the range's resumption. An error
    fault's final response never ends (max-time), so there the ranges before the last
    are served whole and the last one trickles: the job fails with the head held and
    the earlier ranges written, the state the disk-safety rule is about (pieces-in-place,
    one range, covers a fault that never lets the head complete). Requests come in range
    order, so the script's Nth action meets the request it was written for."""
    if fault.error is not None:
        return [A.normal()] * (len(path.ranges) - 1) + steps + [fault.final]
    return [action for _ in path.ranges for action in steps + [fault.final]]


def cell_scripts(servers: Dict[str, FaultServer], path: DataPath, fault: Fault,
                 name: str) -> Tuple[List[str], Script, int]:
    """Serve the object at `name` and script the fault; returns (urls, scripts, number of
    failing responses scripted)."""
    first = servers["tls" if path.tls else "plain"]
    first.add(name, path.served(), etag=ETAG, chunked=path.chunked)
    steps = fault.steps(*cuts(path))
    if path.ranges:
        scripts = [(first, range_script(path, fault, steps))]
        failing = len(steps) * len(path.ranges)
    elif not path.mirrors:
        scripts = [(first, steps + [fault.final])]
        failing = len(steps)
    else:
        second = servers["mirror"]
        second.add(name, path.served(), etag=ETAG, chunked=path.chunked)
        later = fault.steps(CUT2, CUT2) if path.mirrors == "both" else []
        if fault.error is not None:     # both trickle for ever: only max_time ends it
            scripts = [(first, steps + [fault.final]), (second, [fault.final])]
        else:
            # A 404 after the fault makes the first mirror fail for good, so the handover
            # comes right after the fault (a merely flaky mirror keeps its turn for its
            # share of the budget and would finish the job itself).
            scripts = [(first, steps + [A.status(404)]), (second, later + [fault.final])]
        failing = len(steps) + 1 + len(later)
    for srv, script in scripts:
        srv.script(script, path=name)
    return [srv.url(name) for srv, _ in scripts], scripts, failing


def cell_options(path: DataPath, fault: Fault, servers: Dict[str, FaultServer]
                 ) -> Dict[str, Any]:
    options = dict(OPTIONS)
    if path.ranges and fault.error is None:
        options["retries"] = DELTA_RETRIES
    if path.checksum:
        options["checksum"] = "sha256:" + sha256(path.served())
    if path.tls:
        options["cafile"] = servers["tls"].ca_path
    if path.gunzip:
        options["gunzip"] = True
    if path.codec or path.decompress:
        options["decompress"] = (path.codec or path.decompress).split("-")[0]
    if path.codec == "xz-blocks":
        options["decode_threads"] = 3   # the pool, even on a one-core runner
    if path.limit_rate:
        options["limit_rate"] = path.limit_rate
    if path.proxy:
        options["proxy"] = servers["proxy"].url()
        options["no_proxy"] = ""    # an inherited no_proxy=127.0.0.1 must not bypass it
    if fault.error is not None:
        options["max_time"] = MAX_TIME
    return options


# ------------------------------------------------------------------ what the servers saw
class Served(NamedTuple):
    """One request of the cell as a server saw it, with the action that answered it."""
    time: float
    seq: int            # the order among requests stamped with the same (virtual) time
    start: int          # Range start asked for (0 without Range)
    end: Optional[int]  # the last byte of a closed Range (None: open, or no Range)
    if_range: Optional[str]
    action: Action
    sent: int           # body bytes the server sent on that connection


def served_log(scripts: Script, name: str) -> List[Served]:
    """Every request of this cell on every server, in time order."""
    rows: List[Served] = []
    for srv, script in scripts:
        requests = [r for r in srv.requests if r.path == name]
        conns = {r.conn for r in requests}
        deadline = timing.now() + DISCONNECT_WAIT
        while not conns <= {d.conn for d in srv.disconnects} and timing.now() < deadline:
            srv.wait_disconnects(len(srv.disconnects) + 1, timeout=0.1)
        sent = {d.conn: d.body_bytes_sent for d in srv.disconnects}
        assert conns <= set(sent), "a connection of this cell never ended on the server"
        for index, request in enumerate(requests):
            action = script[min(index, len(script) - 1)]
            start, end = range_span(request.range)
            rows.append(Served(request.time, request.seq, start, end, request.if_range,
                               action, sent[request.conn]))
    return sorted(rows, key=lambda row: (row.time, row.seq))


def range_span(value: Optional[str]) -> Tuple[int, Optional[int]]:
    """(first, last) of a Range value; last is None for an open range or none at all."""
    if value is None:
        return 0, None
    # an open range, or the closed one of a delta re-image (bytes=first-last, RFC 9110 §14.1.2)
    match = re.fullmatch(r"bytes=(\d+)-(\d*)", value)
    assert match is not None, value
    return int(match.group(1)), int(match.group(2)) if match.group(2) else None


def streams(rows: List[Served]) -> List[List[Served]]:
    """The requests grouped by the stream they belong to, in order of first request: one
    per closed range (its resumptions keep its last byte), one for an open download."""
    grouped: Dict[Optional[int], List[Served]] = {}
    for row in rows:
        grouped.setdefault(row.end, []).append(row)
    return list(grouped.values())


def check_ranges(rows: List[Served]) -> None:
    """In each stream (a closed range, or the open download), each Range starts where the
    bytes held end: exactly after a FIN or a stall (nothing in flight), never past the
    bytes the server sent (a gap) and never before what was held (an overlap); a
    response the client must reject adds nothing held."""
    for stream in streams(rows):
        check_stream(stream)


def check_stream(rows: List[Served]) -> None:
    for number, (row, following) in enumerate(zip(rows, rows[1:]), start=2):
        action, asked = row.action, following.start
        if isinstance(action, Serve) and not action.wrong_range:
            base = 0 if action.ignore_range else row.start
            end = max(row.start, base + row.sent)
            if row.end is not None:     # a 200 ignoring Range is read up to the range's end
                end = min(end, row.end + 1)
            if action.fault in EXACT_FAULTS:
                assert asked == end, "request %d asked bytes=%d-, held %d" % (
                    number, asked, end)
            else:
                assert row.start <= asked <= end, "request %d asked bytes=%d-, held %d-%d" % (
                    number, asked, row.start, end)
        else:
            assert asked == row.start, "request %d asked bytes=%d- after a rejected " \
                                       "response to bytes=%d-" % (number, asked, row.start)


# ------------------------------------------------------------------ the matrix
def check_success(got: Got, rows: List[Served]) -> None:
    exact = got.code in (None, 0) and got.error is None and sha256(got.data) == sha256(BODY)
    assert exact, "%s; served %s" % (describe(got, BODY), summary(rows))


def check_failure(path: DataPath, fault: Fault, got: Got, rows: List[Served],
                  virtual: bool = True) -> None:
    """An error cell: the right error, only a byte-exact prefix delivered, no final file;
    on the virtual clock the deadline fires at max_time exactly (nothing else takes
    virtual time: any later is a wait that overshot its bound)."""
    assert fault.error is not None
    context = "%s; served %s" % (describe(got, BODY), summary(rows))
    if got.code is None:
        assert isinstance(got.error, fault.error), context
    else:
        assert got.code == fault.error.exit_code and "max_time" in got.stderr, context
    assert got.elapsed >= MAX_TIME, context    # the deadline cannot fire early
    if virtual:
        assert got.elapsed < MAX_TIME + CHECK / 10, context
    if path.stream:
        assert got.data == BODY[:len(got.data)], context
    elif path.in_place:   # head wiped (or BODY's), BODY up to where it stopped, old after
        old = TARGETS[path.in_place]
        heads = [bytes(WIPED_HEAD)] + ([] if path.ranges else [BODY[:WIPED_HEAD]])
        assert got.data[:WIPED_HEAD] in heads, context   # a delta: zeroed (docs/delta.md)
        held = WIPED_HEAD + first_difference(got.data[WIPED_HEAD:], BODY[WIPED_HEAD:])
        assert len(got.data) == len(old) and got.data[held:] == old[held:], context
    else:
        assert got.final is not None and not os.path.exists(got.final), context


def check_delta(path: DataPath, rows: List[Served]) -> None:
    """The delta row: the streams are exactly the planned ranges, in order (the head
    first); every request lies inside its range, so no byte of a piece the target
    already holds is asked for (but the head's, fetched whole by design: docs/delta.md
    step 4); every resumption inside a range carries If-Range with the strong ETag."""
    planned = [(stream[0].start, stream[0].end) for stream in streams(rows)]
    assert planned == list(path.ranges), summary(rows)
    for stream in streams(rows):
        first = stream[0].start
        for row in stream:
            assert row.end is not None and first <= row.start <= row.end, summary(rows)
            if row.start > first:
                assert row.if_range == ETAG, "bytes=%d-%d without If-Range: %s" % (
                    row.start, row.end, summary(rows))


def summary(rows: List[Served]) -> str:
    """'bytes=0- sent 1048601 (trickle), bytes=1048599- ...' for failure messages."""
    return ", ".join("bytes=%d-%s sent %d (%s)" % (row.start, "" if row.end is None else row.end,
                                                  row.sent, getattr(row.action, "fault", type(
                                                      row.action).__name__)) for row in rows)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("path", PATHS, ids=[p.name for p in PATHS])
def test_cell(servers, vclock: VirtualClock, tmp_path, path: DataPath, fault: Fault) -> None:
    run_cell(servers, tmp_path, path, fault, virtual=True)


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
@pytest.mark.parametrize("path", COMMAND_PATHS, ids=[p.name for p in COMMAND_PATHS])
def test_cell_real_clock(servers, tmp_path, path: DataPath, fault: Fault) -> None:
    """The real-clock twin: `python3 -m rawfetch -o -` in a subprocess, every fault."""
    run_cell(servers, tmp_path, path, fault, virtual=False)


def run_cell(servers, tmp_path, path: DataPath, fault: Fault, virtual: bool) -> None:
    name = "/%s/%s" % (path.name, fault.name)
    urls, scripts, failing = cell_scripts(servers, path, fault, name)
    options = cell_options(path, fault, servers)
    if fault.error is None:
        assert failing < options["retries"], "the retry budget must let this cell succeed"
    got = path.driver(urls, options, str(tmp_path))
    rows = served_log(scripts, name)
    if fault.error is None:
        check_success(got, rows)
    else:
        check_failure(path, fault, got, rows, virtual)
    check_ranges(rows)
    if path.ranges:
        check_delta(path, rows)
    else:
        assert all(row.end is None for row in rows), summary(rows)
    if fault.error is None and not path.mirrors:   # every scripted fault was served
        assert len(rows) >= failing + max(1, len(path.ranges)), summary(rows)
    if path.proxy:                                 # and every attempt went through it
        asked = [r for r in servers["proxy"].requests if name in r.target
                 or (r.method == "CONNECT" and r.target.endswith(":%d" % servers["tls"].port))]
        assert len(asked) >= len(rows), (asked, summary(rows))
