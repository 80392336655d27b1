"""The virtual clock itself (tests/vclock.py): time jumps only when every participant
waits, in deadline order, never past bytes already sent, never past a busy thread, and
never in a deadlock."""
from __future__ import annotations

import select
import socket
import threading
import time
from typing import List, Tuple

import pytest

from rawfetch import timing
from tests.vclock import START, VirtualClock


def _spawn(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


def test_sleeps_of_two_threads_interleave_in_virtual_order(vclock: VirtualClock) -> None:
    log: List[Tuple[str, float]] = []
    lock = threading.Lock()

    def sleeper(name: str, gaps: List[float]) -> None:
        for gap in gaps:
            timing.sleep(gap)
            with lock:
                log.append((name, timing.now() - START))

    real = time.monotonic()
    a = _spawn(sleeper, "a", [3.0, 3.0, 3.0])      # wakes at 3, 6, 9
    b = _spawn(sleeper, "b", [2.0, 5.0, 10.0])     # wakes at 2, 7, 17
    assert vclock.join(a, 60) and vclock.join(b, 60)
    assert log == [("b", 2.0), ("a", 3.0), ("a", 6.0), ("b", 7.0), ("a", 9.0), ("b", 17.0)]
    assert vclock.now() - START == 17.0
    assert time.monotonic() - real < 17.0 / 2   # virtual, not real, seconds went by


def test_a_poll_sees_bytes_sent_just_before_the_sender_slept(vclock: VirtualClock) -> None:
    left, right = socket.socketpair()
    got: List[Tuple[float, bytes]] = []

    def receiver() -> None:
        poller = select.poll()
        poller.register(right.fileno(), select.POLLIN)
        for _ in range(50):
            ready = timing.poll(poller, 30.0)
            got.append((timing.now() - START, right.recv(16) if ready else b""))

    def sender() -> None:
        for _ in range(50):
            left.send(b"x")
            timing.sleep(10.0)          # a jump right after the send would lose the byte

    with left, right:
        threads = [_spawn(receiver), _spawn(sender)]
        for thread in threads:
            assert vclock.join(thread, 1000)
    assert [data for _, data in got] == [b"x"] * 50
    assert [at for at, _ in got] == [10.0 * i for i in range(50)]


def test_a_poll_times_out_at_its_virtual_deadline(vclock: VirtualClock) -> None:
    left, right = socket.socketpair()
    with left, right:
        poller = select.poll()
        poller.register(right.fileno(), select.POLLIN)
        watch = vclock.stopwatch()
        assert timing.poll(poller, 30.0) == []
        assert watch.elapsed == 30.0
        assert vclock.jumps == 1


def test_a_busy_thread_blocks_the_jump(vclock: VirtualClock) -> None:
    release = threading.Event()
    entered = threading.Event()
    seen: List[float] = []
    at_release: List[float] = []

    def worker() -> None:
        with timing.busy():
            entered.set()
            release.wait(10)        # real work the sleeper must not be able to skip past

    def sleeper() -> None:
        timing.sleep(5.0)
        seen.append(timing.now() - START)

    def releaser() -> None:         # not on the clock: real time, then the release
        time.sleep(0.2)             # plenty for a wrong jump to happen
        at_release.append(vclock.now() - START)
        release.set()

    busy = _spawn(worker)
    assert entered.wait(5)
    sleeping = _spawn(sleeper)
    _spawn(releaser)
    assert vclock.join(sleeping, 100) and vclock.join(busy, 100)
    assert at_release == [0.0]      # while the worker was busy, time stood still
    assert seen == [5.0]


def test_a_new_thread_about_to_enter_busy_is_waited_for(vclock: VirtualClock) -> None:
    """rawfetch's DNS worker: the caller waits on an Event with a deadline while the
    worker starts, enters busy() and sets it; time must not jump to the deadline."""
    for _ in range(20):
        done = threading.Event()

        def work() -> None:
            with timing.busy():
                done.set()
        watch = vclock.stopwatch()
        _spawn(work)
        assert timing.wait(done, 5.0) is True
        assert watch.elapsed == 0.0


def test_a_deadlock_does_not_jump(vclock: VirtualClock) -> None:
    left, right = socket.socketpair()
    with left, right:
        outcome: List[object] = []
        looked: List[Tuple[float, int]] = []

        def forever() -> None:
            poller = select.poll()
            poller.register(right.fileno(), select.POLLIN)
            outcome.append(timing.poll(poller, None))

        def rescuer() -> None:      # not on the clock: looks after real time, then sends
            time.sleep(0.3)
            looked.append((vclock.now() - START, vclock.jumps))
            left.send(b"!")         # the only thing that can end it

        thread = _spawn(forever)
        _spawn(rescuer)
        assert vclock.join(thread)  # everyone waits, nobody has a deadline
        assert looked == [(0.0, 0)]
        assert outcome == [[(right.fileno(), select.POLLIN)]]
        assert vclock.now() == START


def test_the_tests_own_thread_holds_time_while_it_runs(vclock: VirtualClock) -> None:
    """The fixture adopts the test's thread: threads it starts one by one all begin at
    the same virtual instant, however slowly it starts them."""
    started: List[float] = []

    def sleeper() -> None:
        started.append(timing.now() - START)
        timing.sleep(1.0)

    workers = []
    for _ in range(4):
        workers.append(_spawn(sleeper))
        time.sleep(0.05)            # real time while the first ones already sleep
    for worker in workers:
        assert vclock.join(worker, 10)
    assert started == [0.0] * 4 and vclock.now() - START == 1.0


def test_an_event_wait_ends_when_set_or_at_its_deadline(vclock: VirtualClock) -> None:
    event = threading.Event()
    watch = vclock.stopwatch()
    assert timing.wait(event, 7.5) is False
    assert watch.elapsed == 7.5

    def setter() -> None:
        timing.sleep(2.0)
        event.set()
    _spawn(setter)
    watch = vclock.stopwatch()
    assert timing.wait(event, 100.0) is True
    assert watch.elapsed == 2.0


def test_wall_follows_virtual_now(vclock: VirtualClock) -> None:
    before = vclock.wall()
    timing.sleep(3600.0)
    assert vclock.wall() - before == 3600.0


def test_the_fixture_restores_the_real_clock() -> None:
    clock = VirtualClock()
    previous = timing.use_clock(clock)
    try:
        assert timing.now() == START
    finally:
        timing.use_clock(previous)
        clock.close()
    assert type(timing.clock()) is timing.Clock
    assert abs(timing.now() - time.monotonic()) < 1.0


@pytest.mark.parametrize("threads", [8])
def test_many_threads_each_wake_at_their_own_deadline(vclock: VirtualClock,
                                                       threads: int) -> None:
    woke: List[Tuple[int, float]] = []
    lock = threading.Lock()

    def sleeper(i: int) -> None:
        timing.sleep(1.0 + i)
        with lock:
            woke.append((i, timing.now() - START))

    workers = [_spawn(sleeper, i) for i in range(threads)]
    for worker in workers:
        assert vclock.join(worker, 100)
    assert sorted(woke) == [(i, 1.0 + i) for i in range(threads)]
