"""A virtual clock for the suite, in the spirit of trio's autojump MockClock, for a
program of several real threads on real sockets.

rawfetch and the fault server read the time and wait only through rawfetch.timing;
installed there (the `vclock` fixture in tests/conftest.py), this clock makes a 30 s
stall or a 2 s idle timeout take milliseconds while every byte still moves on real
sockets. Virtual time never flows: it only JUMPS, to the earliest deadline among the
waiting threads, and only when nothing could happen before that deadline:

- every PARTICIPANT thread is waiting in the clock (a participant is a thread that has
  waited in the clock, or is inside `timing.busy()`; threads that ended are dropped;
  other threads are ignored, and a thread blocked outside the clock, e.g. on a
  Condition, counts as running: time cannot jump past it, which is safe, only slower);
- no waiting thread is already due (its deadline reached, about to run);
- every waiter with something to watch (a poller's sockets, an Event) has looked at it
  once, finding nothing, in a look that STARTED after the most recent thread began
  waiting (the epoch counter). Loopback TCP queues bytes at the receiver before send()
  returns, so bytes a thread sent just before it went to sleep are always seen before
  time moves;
- belt and braces: GRACE of real time passed since that most recent change, and no
  thread that is not a participant appeared within NEW_THREAD_GRACE (a thread just
  started may be about to enter busy(), like rawfetch's DNS worker).

A deadlock (everyone waiting, nobody with a deadline) never jumps: the test's own
timeout reports it. Waiters sleep in real poll()s; the clock wakes them through a pipe
per participant (registered in the caller's select.poll object for the call) when it
needs them to look again or when their deadline arrives.
"""
from __future__ import annotations

import math
import os
import select
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from rawfetch import timing

START = 1000.0                 # virtual seconds at creation: clearly not a real monotonic
EPOCH = 1767225600.0           # 2026-01-01T00:00:00Z; wall() = EPOCH + now()
SLICE = 0.02                   # s real; a waiter re-checks on its own at least this often
EVENT_SLICE = 0.002            # s real; an Event cannot wake a poll(): look this often
GRACE = 0.001                  # s real; quiet time before a jump (belt and braces)
NEW_THREAD_GRACE = 0.02        # s real; a just-started thread may be entering busy()
# Virtual time stays on a grid of 2**-30 s (~1 ns) and a jump lands on the first grid
# point at or after the deadline: `t0 + s` rounds in floating point, and without the
# grid `now - t0` after a jump could come out 1e-13 short of `s` (a 0.3 s delay
# measuring 0.29999999999995 s), or a deadline recomputed by its owner could lie one
# ulp past the time it was woken at.
GRID = 2.0 ** 30


class _Party:
    """One participant thread: whether and how it waits, and its wake-up pipe."""

    __slots__ = ("thread", "waiting", "deadline", "watches", "clean", "signaled",
                 "busy", "waited", "rfd", "wfd", "sleeper", "closed")

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread
        self.waiting = False
        self.deadline: Optional[float] = None
        self.watches = False       # has a readiness to look at (poll, Event)
        self.clean = -1            # epoch at the start of its last empty look
        self.signaled = False
        self.busy = 0
        self.waited = False
        self.closed = False
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        os.set_blocking(self.wfd, False)
        self.sleeper = select.poll()
        self.sleeper.register(self.rfd, select.POLLIN)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.rfd)
            os.close(self.wfd)

    def __del__(self) -> None:
        """A party no thread uses any more (its clock is gone): its pipe goes too."""
        self.close()

    def drain(self) -> None:
        try:
            os.read(self.rfd, 4096)
        except BlockingIOError:  # nothing written since the last drain
            pass


class Stopwatch:
    """Virtual seconds since it was started; `stop()` freezes `elapsed`."""

    def __init__(self, clock: "VirtualClock") -> None:
        self._clock = clock
        self.start = clock.now()
        self.end: Optional[float] = None

    @property
    def elapsed(self) -> float:
        return (self._clock.now() if self.end is None else self.end) - self.start

    def stop(self) -> float:
        self.end = self._clock.now()
        return self.end - self.start


class VirtualClock(timing.Clock):
    """See the module docstring. `jumps` counts the jumps (a test of a stall can
    assert time really jumped rather than passed)."""

    def __init__(self, start: float = START) -> None:
        self._lock = threading.Lock()
        self._now = math.ceil(start * GRID) / GRID
        self._epoch = 0
        self._epoch_at = time.monotonic()
        self._parties: Dict[threading.Thread, _Party] = {}
        self._seen: Dict[threading.Thread, float] = {}
        self._closed = False
        self.jumps = 0

    # ---- the Clock interface --------------------------------------------
    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return EPOCH + self._now

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self._block(self._now + seconds, None, None)

    def poll(self, poller: Any, timeout: Optional[float]) -> List[Tuple[int, int]]:
        """`poller` must be a select.poll object: the party's pipe joins it for the call."""
        if timeout is not None and timeout <= 0:
            return poller.poll(0)
        party = self._party()
        poller.register(party.rfd, select.POLLIN)
        try:
            def look(pause: Optional[float]) -> List[Tuple[int, int]]:
                ms = 0 if pause is None else max(1, int(pause * 1000 + 0.999))
                return [e for e in poller.poll(ms) if e[0] != party.rfd]
            deadline = None if timeout is None else self._now + timeout
            return self._block(deadline, look, []) or []
        finally:
            poller.unregister(party.rfd)

    def wait(self, event: threading.Event, timeout: Optional[float]) -> bool:
        if event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False

        def look(pause: Optional[float]) -> bool:
            if pause is None:
                return event.is_set()
            return event.wait(min(pause, EVENT_SLICE))
        deadline = None if timeout is None else self._now + timeout
        return bool(self._block(deadline, look, False))

    @contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            party = self._party_locked()
            party.busy += 1
        try:
            yield
        finally:
            with self._lock:
                party.busy -= 1
                if party.busy == 0 and not party.waited:
                    self._drop_locked(party)
                self._changed_locked()
                self._advance_locked()

    # ---- helpers for tests ----------------------------------------------
    def stopwatch(self) -> Stopwatch:
        return Stopwatch(self)

    def join(self, thread: threading.Thread, timeout: Optional[float] = None) -> bool:
        """thread.join() that lets time jump meanwhile (a plain join from a participant
        thread would freeze virtual time); True when the thread ended."""
        def look(pause: Optional[float]) -> bool:
            if pause is not None:
                thread.join(min(pause, EVENT_SLICE))
            return not thread.is_alive()
        if not thread.is_alive():
            return True
        deadline = None if timeout is None else self._now + timeout
        return bool(self._block(deadline, look, False))

    def adopt(self, threads: Iterable[threading.Thread]) -> None:
        """Count `threads` as participants now, running until they next wait here: a
        server thread started before this clock (a module's shared server) may be in a
        wait of the real clock, and time must not jump before it comes back."""
        with self._lock:
            for thread in threads:
                if thread.is_alive() and thread not in self._parties:
                    self._parties[thread] = _Party(thread)

    def close(self) -> None:
        """Uninstalled: wake every waiter (each returns as if timed out and lets go of
        its pipe on the way out). The caller's pipe (the test's thread: 2 fds a test)
        and those of ended threads go now; another live thread may be between two
        steps of a wait, so its pipe goes when it leaves or when nothing holds it."""
        with self._lock:
            self._closed = True
            me = threading.current_thread()
            for party in list(self._parties.values()):
                if party.thread is me or not party.thread.is_alive():
                    self._drop_locked(party)
                else:
                    self._signal_locked(party)

    # ---- the waiting loop -------------------------------------------------
    def _block(self, deadline: Optional[float], look: Optional[Callable[[Optional[float]], Any]],
               empty: Any) -> Any:
        """Wait as a participant until `look` finds something (its result) or virtual
        time reaches `deadline` (one last look, then `empty`)."""
        party = self._party()
        with self._lock:
            party.waiting, party.waited = True, True
            party.deadline, party.watches = deadline, look is not None
            party.clean = -1
            self._changed_locked()
        try:
            while True:
                party.drain()
                with self._lock:
                    party.signaled = False
                    start = self._epoch
                    if self._due_locked(deadline):
                        break
                if look is not None:
                    found = look(None)
                    if found:
                        return found
                with self._lock:
                    party.clean = start
                    hint = self._advance_locked()
                    if self._due_locked(deadline):
                        break
                pause = SLICE if hint is None else min(SLICE, hint)
                if look is None:
                    party.sleeper.poll(max(1, int(pause * 1000 + 0.999)))
                else:
                    found = look(pause)
                    if found:
                        return found
            return (look(None) or empty) if look is not None else empty
        finally:
            with self._lock:
                party.waiting, party.deadline, party.watches = False, None, False
                if self._closed:
                    self._drop_locked(party)

    def _due_locked(self, deadline: Optional[float]) -> bool:
        return self._closed or (deadline is not None and self._now >= deadline)

    # ---- the jump rule ----------------------------------------------------
    def _advance_locked(self) -> Optional[float]:
        """Jump if the rule allows; else wake who must look again. Returns a real
        delay after which the caller should try again (None: it will be woken)."""
        if self._closed:
            return None
        self._prune_locked()
        parties = list(self._parties.values())
        if not parties or not all(p.waiting for p in parties):
            return None
        if any(p.deadline is not None and p.deadline <= self._now for p in parties):
            return None
        unclean = [p for p in parties if p.watches and p.clean != self._epoch]
        if unclean:
            for party in unclean:
                self._signal_locked(party)
            return None
        hint = max(GRACE - (time.monotonic() - self._epoch_at), self._newcomers_locked())
        if hint > 0:
            return hint
        deadlines = [p.deadline for p in parties if p.deadline is not None]
        if not deadlines:
            return None             # a deadlock: never invent a deadline
        self._now = math.ceil(min(deadlines) * GRID) / GRID  # type: ignore[type-var]
        self.jumps += 1
        for party in parties:
            if party.deadline is not None and party.deadline <= self._now:
                self._signal_locked(party)
        return None

    def _newcomers_locked(self) -> float:
        """Real seconds until every non-participant thread is NEW_THREAD_GRACE old."""
        alive = threading.enumerate()
        stamp = time.monotonic()
        wait = 0.0
        for thread in alive:
            if thread in self._parties:
                continue
            first = self._seen.setdefault(thread, stamp)
            wait = max(wait, NEW_THREAD_GRACE - (stamp - first))
        if len(self._seen) > 2 * len(alive) + 16:
            living = set(alive)
            self._seen = {t: s for t, s in self._seen.items() if t in living}
        return wait

    # ---- bookkeeping --------------------------------------------------------
    def _party(self) -> _Party:
        with self._lock:
            return self._party_locked()

    def _party_locked(self) -> _Party:
        thread = threading.current_thread()
        party = self._parties.get(thread)
        if party is None:
            party = self._parties[thread] = _Party(thread)
        return party

    def _changed_locked(self) -> None:
        """A thread began waiting or left: every look before now is stale."""
        self._epoch += 1
        self._epoch_at = time.monotonic()

    def _signal_locked(self, party: _Party) -> None:
        if not party.signaled:
            party.signaled = True
            try:
                os.write(party.wfd, b"!")
            except (BlockingIOError, OSError):  # cleanup-grade: a full or closed pipe
                pass                            # means it is awake or gone anyway

    def _drop_locked(self, party: _Party) -> None:
        if self._parties.get(party.thread) is party:
            del self._parties[party.thread]
            party.close()

    def _prune_locked(self) -> None:
        dead = [p for p in self._parties.values() if not p.thread.is_alive()]
        for party in dead:
            self._drop_locked(party)
        if dead:
            self._changed_locked()


def install() -> Tuple[VirtualClock, timing.Clock]:
    """A fresh VirtualClock installed in rawfetch.timing; returns it and the previous."""
    clock = VirtualClock()
    return clock, timing.use_clock(clock)
