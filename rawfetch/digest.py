"""Running digests; hashlib is imported on first use (it loads OpenSSL's libcrypto).

HashWorker overlaps hashing with receiving: hashlib releases the GIL on large buffers, so
hashing buffer N in a worker while the caller writes it and receives buffer N+1 runs on
two cores (bench: sha256 to a file 0.67x the wall time of hashing inline).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Deque, Optional

from .errors import FetchError


def new_hasher(algo: str) -> Any:
    import hashlib
    return hashlib.new(algo)


class HashWorker:
    """A digest fed from a worker thread. update() does not copy: the caller must not
    reuse a buffer until drain(keep) says its hashing is done."""

    def __init__(self, hasher: Any) -> None:
        self._hasher = hasher
        self.name = hasher.name
        self._queue: Deque[Any] = deque()
        self._ready = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._failure: Optional[BaseException] = None

    def update(self, view: Any) -> None:
        with self._ready:
            if self._failure is not None:
                return   # drain() reports it
            self._queue.append(view)
            self._ready.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rawfetch-hash", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
                view = self._queue[0]
            try:
                self._hasher.update(view)   # outside the lock; hashlib drops the GIL
            except BaseException as exc:    # handed to the caller's thread by drain()
                with self._ready:
                    self._failure = exc
                    self._queue.clear()
                    self._ready.notify_all()
                return
            with self._ready:
                self._queue.popleft()
                self._ready.notify_all()

    def drain(self, keep: int = 0) -> None:
        """Wait until at most `keep` submitted buffers are still being hashed; raise in
        the caller's thread if hashing failed (the digest is then meaningless)."""
        with self._ready:
            while len(self._queue) > keep and self._failure is None:
                self._ready.wait()
            if self._failure is not None:
                raise FetchError("computing the %s checksum failed: %s: %s" % (
                    self.name, type(self._failure).__name__, self._failure))

    def hexdigest(self) -> str:
        self.drain()
        return self._hasher.hexdigest()

    def reset(self) -> "HashWorker":
        self.drain()
        self._hasher = new_hasher(self.name)
        return self

    def close(self) -> None:
        with self._ready:
            self._stopping = True
            self._queue.clear()
            self._ready.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def fresh(hasher: Any) -> Any:
    """An empty digest of the same algorithm (after a restart from zero)."""
    if isinstance(hasher, HashWorker):
        return hasher.reset()
    return new_hasher(hasher.name)
