"""Seeded fault storms: every success byte-exact, every failure leaves no final file, and
on a Range-honouring server the bytes fetched stay close to the file size.

On the virtual clock (tests/vclock.py): the storm's stalls and backoffs take no real
time."""
from __future__ import annotations

import random

import pytest

import rawfetch
from rawfetch import errors as E
from tests.faultserver import FaultServer, actions as A, make_body

pytestmark = [pytest.mark.timeout(120), pytest.mark.virtual_clock]   # conftest: the virtual clock


SIZE = 256 * 1024
SEEDS = range(40)
OPTIONS = dict(retries=25, retry_delay=0.001, retry_max_delay=0.01, idle_timeout=0.2,
               speed_limit=20000, speed_time=0.3, connect_timeout=2)


def schedule(rng: random.Random, allow_changes: bool) -> list:
    kinds = ["rst", "fin", "stall", "trickle", "503"]
    if allow_changes:
        kinds += ["ignore_range", "replace"]
    actions = []
    for _ in range(rng.randint(1, 6)):
        kind, at = rng.choice(kinds), rng.randrange(SIZE)
        if kind == "rst":
            actions.append(A.rst(at=at))
        elif kind == "fin":
            actions.append(A.fin(at=at))
        elif kind == "stall":
            actions.append(A.stall(at=at))
        elif kind == "trickle":
            actions.append(A.trickle(at=at, gap=0.05))
        elif kind == "503":
            actions.append(A.status(503, {"Retry-After": "0"}))
        elif kind == "ignore_range":
            actions.append(A.fin(at=at, ignore_range=True))
        else:
            actions.append(A.replace(make_body(SIZE + rng.randrange(100), seed=rng.randrange(99)),
                                     then=A.fin(at=at)))
    return actions + [A.normal()]


def max_failures(actions: list) -> int:
    """Attempts the schedule can make fail: each action but the final normal() ends at
    most one (a cut, reset, stall, trickle, 503, a short 200 or a replaced file's cut;
    one whose offset lies past what a resumed response still has to send ends none)."""
    return len(actions) - 1


@pytest.mark.parametrize("seed", SEEDS)
def test_storm_file_mode(seed, tmp_path):
    rng = random.Random(seed)
    changes = seed % 3 == 0
    actions = schedule(rng, changes)
    # Every failure is charged (the body is under the 1 MiB refund) and none is final (no
    # checksum; a changed file restarts in file mode), so the download must succeed
    # whenever the scripted failures fit the budget: at most 6 against retries=25.
    assert max_failures(actions) <= OPTIONS["retries"]
    with FaultServer() as srv:
        srv.add("/img", make_body(SIZE, seed=seed), etag='"s%d"' % seed)
        srv.script(actions)
        target = tmp_path / "img"
        result = rawfetch.download(srv.url("/img"), target, **OPTIONS)
        assert target.read_bytes() == srv.resource("/img").data
        assert result.bytes == len(srv.resource("/img").data)
        if not changes:  # resumed, never restarted: each retry asks from the bytes held
            starts = [int(r.range[6:-1]) for r in srv.requests[1:] if r.range]
            assert len(starts) == len(srv.requests) - 1 - _status_only(srv)
            assert starts == sorted(starts) and result.restarts == 0


# The error each kind of fault ends an attempt with. A trickle (a byte every 0.05 s) is a
# LowSpeed, or an IdleTimeout if the loaded machine kept the client off the CPU longer
# than idle_timeout=0.2 s.
LAST_ERROR = {"rst": (E.ReceiveError,), "fin": (E.IncompleteBody,), "stall": (E.IdleTimeout,),
              "trickle": (E.LowSpeed, E.IdleTimeout), "503": (E.HTTPStatusError,)}


@pytest.mark.parametrize("seed", SEEDS[:10])
def test_storm_over_budget_fails_with_the_last_fault(seed, tmp_path):
    """Where failing is the correct outcome: every response faults within its first
    1000 bytes (so each one fails, whatever offset it resumes from) and the last one
    repeats, so retries=3 runs out on the 4th response: its class is the error, and no
    file appears."""
    rng = random.Random(2000 + seed)
    kinds = [rng.choice(sorted(LAST_ERROR)) for _ in range(rng.randint(1, 6))]
    makers = {"rst": A.rst, "fin": A.fin, "stall": A.stall,
              "trickle": lambda at: A.trickle(at=at, gap=0.05),
              "503": lambda at: A.status(503, {"Retry-After": "0"})}
    actions = [makers[kind](rng.randrange(1000)) for kind in kinds]
    with FaultServer() as srv:
        srv.add("/img", make_body(SIZE, seed=seed), etag='"s%d"' % seed)
        srv.script(actions)
        target = tmp_path / "img"
        with pytest.raises(E.FetchError) as info:
            rawfetch.download(srv.url("/img"), target, **dict(OPTIONS, retries=3))
        assert type(info.value) in LAST_ERROR[kinds[min(3, len(kinds) - 1)]], info.value
        assert len(srv.requests) == 4 and not target.exists()


def _status_only(srv) -> int:
    """Retries after a 503 on the first request have no bytes to resume from."""
    count = 0
    for request in srv.requests[1:]:
        if request.range is not None:
            break
        count += 1
    return count


@pytest.mark.parametrize("seed", SEEDS[:15])
def test_storm_stream_mode(seed):
    rng = random.Random(1000 + seed)
    with FaultServer() as srv:
        data = make_body(SIZE, seed=seed)
        srv.add("/img", data, etag='"s%d"' % seed)
        srv.script(schedule(rng, allow_changes=False))
        with rawfetch.open(srv.url("/img"), **OPTIONS) as stream:
            assert stream.read() == data
