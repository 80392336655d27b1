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
from typing import Any, Callable, List, Optional

from rawfetch import timing


class Stopped(Exception):
    """The server is stopping."""


class Waker:
    """A pipe that every waiting server thread polls: one byte on stop wakes them all
    (it is never read, so it stays readable)."""

    def __init__(self) -> None:
        self.fd, self._wfd = os.pipe()
        os.set_blocking(self.fd, False)
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()
        os.write(self._wfd, b"!")

    def close(self) -> None:
        os.close(self.fd)
        os.close(self._wfd)

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


def start_thread(target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
    """Start a daemon thread that takes part in the clock from its first instruction:
    the starter stays busy() until the new thread is inside busy() itself, so a virtual
    clock cannot jump while it is being born."""
    entered = threading.Event()

    def run() -> None:
        with timing.busy():
            entered.set()
            target(*args)

    thread = threading.Thread(target=run, name=name, daemon=True)
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
