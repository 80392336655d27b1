"""The test servers' waits, all on rawfetch.timing so they run on the virtual clock
(tests/vclock.py) when a test installed it, and in real time otherwise.

A server thread never blocks in a socket call: sockets are non-blocking and every wait
is a timing.poll() that also watches the server's Waker, so stop() ends stalls,
silences and trickles at once, on either clock.
"""
from __future__ import annotations

import os
import select
import socket
import threading
import weakref
from typing import Any, Callable, List, Optional

from rawfetch import timing

REVISIT = 0.05   # s; on the real clock an idle loop looks up the installed clock this often
_LONG_LIVED: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()


class Stopped(Exception):
    """The server is stopping."""


class Waker:
    """A pipe that every waiting server thread polls: one byte on stop wakes them all
    (it is never read, so it stays readable)."""

    def __init__(self) -> None:
        self.fd = self._wfd = -1
        self.stopping = threading.Event()

    def open(self) -> None:
        """The pipe, made when the server starts (a server never started holds none)."""
        self.fd, self._wfd = os.pipe()
        os.set_blocking(self.fd, False)

    def stop(self) -> None:
        self.stopping.set()
        if self._wfd >= 0:
            os.write(self._wfd, b"!")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self._wfd)
            self.fd = self._wfd = -1

    def poller(self) -> Any:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return poller

    def nap(self, poller: Any, seconds: float) -> None:
        """Sleep `seconds` on the clock; raise Stopped at once on stop. `poller` is one
        from poller() that holds nothing else."""
        deadline = timing.now() + seconds
        while True:
            if self.stopping.is_set():
                raise Stopped()
            left = deadline - timing.now()
            if left <= 0:
                return
            timing.poll(poller, left)


def await_fd(waker: Waker, poller: Any, fd: int, events: int,
             deadline: Optional[float]) -> bool:
    """Wait on the clock until `fd` (registered in `poller` with the waker) is ready
    for `events` (True; errors and hang-ups count as ready) or `deadline` passes
    (False). Raises Stopped when the server stops."""
    poller.modify(fd, events)
    while True:
        if waker.stopping.is_set():
            raise Stopped()
        left = None if deadline is None else deadline - timing.now()
        if left is not None and left <= 0:
            return False
        if any(ready == fd for ready, _ in timing.poll(poller, left)):
            return True


def send_all(waker: Waker, poller: Any, sock: socket.socket, data: bytes) -> None:
    """sendall() for a non-blocking socket registered in `poller`."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await_fd(waker, poller, sock.fileno(), select.POLLOUT, None)
            continue
        view = view[sent:]


def idle_poll(poller: Any) -> List[Any]:
    """timing.poll(poller, None) for a loop that outlives tests (an acceptor): on the
    real clock it comes back every REVISIT seconds, so a virtual clock installed later
    for the next test gets it (the vclock fixture adopts these threads, and time cannot
    jump until they arrive)."""
    real = type(timing.clock()) is timing.Clock
    return timing.poll(poller, REVISIT if real else None)


def long_lived() -> List[threading.Thread]:
    """The live threads started with start_thread(..., long_lived=True)."""
    return [thread for thread in list(_LONG_LIVED) if thread.is_alive()]


def start_thread(target: Callable[..., None], *args: Any, name: str,
                 long_lived: bool = False) -> threading.Thread:
    """Start a daemon thread that takes part in the clock from its first instruction:
    the starter stays busy() until the new thread is inside busy() itself, so a virtual
    clock cannot jump while it is being born. long_lived: an acceptor, that a later
    test's clock must adopt (see idle_poll)."""
    entered = threading.Event()

    def run() -> None:
        with timing.busy():
            entered.set()
            target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
    if long_lived:
        _LONG_LIVED.add(thread)
    with timing.busy():
        thread.start()
        entered.wait()
    return thread


class Changes:
    """Lets a test wait, on the clock, until shared state (guarded by `lock`) satisfies
    a predicate: a Condition.wait_for whose timeout is virtual under the vclock."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._waiters: List[threading.Event] = []

    def notify_locked(self) -> None:
        for event in self._waiters:
            event.set()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = timing.now() + timeout
        event = threading.Event()
        with self._lock:
            if predicate():
                return True
            self._waiters.append(event)
        try:
            while True:
                left = deadline - timing.now()
                if left <= 0:
                    with self._lock:
                        return predicate()
                timing.wait(event, left)
                with self._lock:
                    event.clear()
                    if predicate():
                        return True
        finally:
            with self._lock:
                self._waiters.remove(event)
