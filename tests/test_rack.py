"""A rack against one master: --limit-rate, --splay and --mirror-order.

On the virtual clock (tests/vclock.py): the pacing, the splay and max_time take no real
time, and the elapsed times asserted are virtual, so their bounds are tight; the
limit-rate test has a real-clock twin in the slow tier."""
from __future__ import annotations

import hashlib

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch import timing
from rawfetch.mirrors import arrange
from rawfetch.options import Options
from tests.faultserver import FaultServer, actions as A, make_body
from tests.timing_options import quick

pytestmark = [pytest.mark.timeout(60), pytest.mark.virtual_clock]   # conftest: the virtual clock
SIZE = 1 << 20
BODY = make_body(SIZE, seed=21)
DIGEST = hashlib.sha256(BODY).hexdigest()
RATE = 512 * 1024                      # bytes/s: the 1 MiB body takes ~2 s
QUICK = quick(idle_timeout=5)   # the paced transfers here take seconds of (virtual) time


@pytest.fixture
def origin():
    """The master, on the clock of the test (virtual unless it is a real-clock twin: the
    autouse clock fixture runs first)."""
    with FaultServer() as srv:
        srv.add("/img", BODY, etag='"r1"')
        yield srv



@pytest.mark.parametrize("clock", ["virtual", pytest.param("real", marks=pytest.mark.slow)])
@pytest.mark.parametrize("path", ["splice", "copy"])
def test_limit_rate_paces_the_whole_transfer(origin, tmp_path, path, clock):
    """(size / rate) x 0.9 <= elapsed <= x 1.3 on the splice path and the copy path
    (a checksum forces every byte through Python); on the virtual clock only the pacing
    takes time: within 5 % of size / rate."""
    extra = dict(checksum="sha256:" + DIGEST) if path == "copy" else {}
    started = timing.now()
    rawfetch.download(origin.url("/img"), tmp_path / "img", limit_rate=RATE, **QUICK, **extra)
    elapsed = timing.now() - started
    assert hashlib.sha256((tmp_path / "img").read_bytes()).hexdigest() == DIGEST
    ideal = SIZE / RATE
    assert ideal * 0.9 <= elapsed <= ideal * 1.3, elapsed
    if clock == "virtual":
        assert ideal * 0.95 <= elapsed <= ideal * 1.05, elapsed


def test_limit_rate_holds_across_a_resume(origin, tmp_path):
    """One bucket per job: a cut and a resume do not reset the average."""
    origin.script([A.rst(at=SIZE // 2), A.normal()])
    started = timing.now()
    rawfetch.download(origin.url("/img"), tmp_path / "img", limit_rate=RATE, **QUICK)
    elapsed = timing.now() - started
    assert (tmp_path / "img").read_bytes() == BODY and len(origin.requests) == 2
    assert elapsed >= SIZE / RATE * 0.9
    assert elapsed <= SIZE / RATE * 1.05 + QUICK["retry_max_delay"], elapsed


def test_limit_rate_never_trips_the_low_speed_rule():
    assert Options(limit_rate=1000).speed_limit == 500       # default lowered to half
    assert Options(limit_rate=1 << 20).speed_limit == 1024   # default already below
    with pytest.raises(E.InvalidRequest, match="at or above limit_rate"):
        Options(limit_rate=1000, speed_limit=1000)
    assert Options(limit_rate=1000, speed_limit=999).speed_limit == 999


def test_limit_rate_is_bounded_by_max_time(origin, tmp_path):
    started = timing.now()
    with pytest.raises(E.DeadlineExceeded):
        rawfetch.download(origin.url("/img"), tmp_path / "img", limit_rate=64 * 1024,
                          max_time=1.0, **QUICK)
    elapsed = timing.now() - started
    assert elapsed < SIZE / (64 * 1024)   # long before the 16 s transfer
    assert 1.0 <= elapsed < 1.0 + 1e-6, elapsed   # virtual: at the deadline exactly
    assert not (tmp_path / "img").exists()


def splay_of(origin, tmp_path, **options):
    events = []
    rawfetch.download(origin.url("/img"), tmp_path / "img", on_event=events.append,
                      **QUICK, **options)
    (tmp_path / "img").unlink()
    splay = [e for e in events if e["event"] == "splay"]
    request = next(e for e in events if e["event"] == "request")
    # the request starts after the whole delay (seconds is rounded to 1 ms in the event)
    assert len(splay) == 1 and request["time"] >= splay[0]["time"] + splay[0]["seconds"] - 1e-3
    return splay[0]["seconds"]


def test_splay_waits_a_random_time_in_range_before_the_first_request(origin, tmp_path):
    delays = [splay_of(origin, tmp_path, splay=0.3) for _ in range(4)]
    assert all(0 <= d <= 0.3 for d in delays) and len(set(delays)) > 1


def test_seeded_splay_is_reproducible_and_spreads_by_seed(origin, tmp_path):
    first = splay_of(origin, tmp_path, splay=0.5, splay_seed="node-17")
    again = splay_of(origin, tmp_path, splay=0.5, splay_seed="node-17")
    other = splay_of(origin, tmp_path, splay=0.5, splay_seed="node-18")
    assert first == again != other


def test_splay_longer_than_max_time_fails_at_the_deadline(origin, tmp_path):
    started = timing.now()
    with pytest.raises(E.DeadlineExceeded) as info:
        rawfetch.download(origin.url("/img"), tmp_path / "img", splay=30, splay_seed="late",
                          max_time=0.5, **QUICK)
    elapsed = timing.now() - started
    assert info.value.exit_code == 28 and elapsed < 30 * 0.5
    assert 0.5 <= elapsed < 0.5 + 1e-6, elapsed   # virtual: at the deadline exactly
    assert origin.requests == []


def test_mirror_order_ordered_tries_the_list_as_given(make_server, tmp_path):
    servers = [make_server() for _ in range(3)]
    for srv in servers:
        srv.add("/img", BODY, etag='"r1"')
    rawfetch.download(servers[0].url("/img"), tmp_path / "img",
                      urls=[s.url("/img") for s in servers[1:]], **QUICK)
    assert [len(s.requests) for s in servers] == [1, 0, 0]


def test_mirror_order_hash_is_a_deterministic_rotation():
    urls = ["http://m%d/img" % i for i in range(4)]
    first = arrange(urls, "hash", "node-1")
    assert first == arrange(urls, "hash", "node-1")
    start = urls.index(first[0])
    assert first == urls[start:] + urls[:start]           # a rotation: failover order kept
    heads = {arrange(urls, "hash", "node-%d" % n)[0] for n in range(40)}
    assert heads == set(urls)                             # seeds spread over every mirror


def test_mirror_order_hash_spreads_a_rack_and_fails_over(make_server, tmp_path):
    servers = [make_server() for _ in range(2)]
    for srv in servers:
        srv.add("/img", BODY, etag='"r1"')
    urls = [s.url("/img") for s in servers]
    for node in range(10):
        rawfetch.download(urls[0], tmp_path / "img", urls=urls[1:], mirror_order="hash",
                          splay_seed="node-%d" % node, **QUICK)
        (tmp_path / "img").unlink()
    counts = [len(s.requests) for s in servers]
    assert sum(counts) == 10 and min(counts) >= 2
    servers[0].script([A.status(404)])
    servers[1].script([A.status(404)])
    with pytest.raises(E.HTTPStatusError):
        rawfetch.download(urls[0], tmp_path / "img", urls=urls[1:], mirror_order="hash",
                          splay_seed="node-3", **QUICK)
    assert [len(s.requests) for s in servers] == [c + 1 for c in counts]


def test_mirror_order_random_shuffles_per_run():
    urls = ["http://m%d/img" % i for i in range(5)]
    orders = {tuple(arrange(urls, "random", None)) for _ in range(30)}
    assert len(orders) > 1 and all(sorted(o) == sorted(urls) for o in orders)


def test_bad_mirror_order_is_refused():
    with pytest.raises(E.InvalidRequest, match="mirror_order"):
        Options(mirror_order="fastest")
