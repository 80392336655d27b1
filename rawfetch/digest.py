"""Running digests, and the worker thread that hashes, decodes and writes delivered
buffers off the receiving thread. hashlib is imported on first use (it loads OpenSSL's
libcrypto)."""
from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Callable, Deque, Optional, Tuple

from .errors import ChecksumMismatch, FetchError, InvalidRequest, LocalWriteError, mapped
from .output import close_fd

SPLICED_LAG = 16      # file regions (<= 1 MiB each) the hash may trail the kernel's
                      # writes by: they are re-read while still in the page cache
READ_BLOCK = 1 << 18  # pread size when hashing spliced bytes back (a splice moves <= 1 MiB;
                      # 256 KiB reads measured as fast, for 768 KiB less RSS)


def parse_checksum(checksum: Optional[str]) -> Optional[Tuple[str, str]]:
    """"ALGO:HEX" -> (algo, lowercase hex), validated against hashlib."""
    if checksum is None:
        return None
    algo, colon, hexdigest = str(checksum).partition(":")
    algo = algo.lower().replace("-", "")
    import hashlib  # lazily: it loads OpenSSL's libcrypto (+3.7 MiB RSS)
    try:
        size = hashlib.new(algo).digest_size
    except (ValueError, TypeError):
        raise InvalidRequest("unknown checksum algorithm %r" % algo) from None
    if not size:   # shake_128/shake_256: the length is the caller's choice, not the algorithm's
        raise InvalidRequest("checksum algorithm %r has no fixed digest length; use a fixed "
                             "one such as sha256" % algo)
    hexdigest = hexdigest.strip().lower()
    if not colon or len(hexdigest) != 2 * size or hexdigest.strip("0123456789abcdef"):
        raise InvalidRequest("checksum %r is not %s:<%d hex digits>" % (checksum, algo, 2 * size))
    return algo, hexdigest


def new_hasher(algo: str) -> Any:
    """A fresh hashlib object for `algo`: the one factory (the whole-file digest, the
    piece checks in pieces.py, delta's survey). hashlib is imported here, on first use:
    it loads OpenSSL's libcrypto (+3.7 MiB RSS), which `import rawfetch` should not."""
    import hashlib
    return hashlib.new(algo)


class Worker:
    """One thread that takes the delivered buffers in order: it hashes each (when a
    checksum is asked for), then hands it to `consume` (download()'s decoder and sink).

    Receiving, hashing, decompressing and writing then overlap on two cores: hashlib,
    zlib, lzma, bz2 and os.write all release the GIL on large buffers (bench: sha256 to a
    file 0.67x the wall time of hashing inline; docs/benchmarks.md for the pipeline).
    update() does not copy: the caller must not reuse a buffer until drain(keep) says it
    is done. A failure in the thread is raised in the caller's thread by the next
    update() or drain(): a FetchError as it is (a decompression error stays exit 92).
    """

    behind_splice = 0        # queued buffers are writes: they land before spliced bytes

    def __init__(self, hasher: Any = None, consume: Optional[Callable[[Any], None]] = None
                 ) -> None:
        self._hasher = hasher
        self.name = hasher.name if hasher is not None else None
        self._consume = consume
        self._queue: Deque[Any] = deque()
        self._ready = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._failure: Optional[BaseException] = None

    def update(self, view: Any) -> None:
        with self._ready:
            self._raise_failure()
            self._queue.append(view)
            self._ready.notify_all()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rawfetch-worker",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._stopping:
                    self._ready.wait()
                if not self._queue:
                    return
                view = self._queue[0]
            try:                # outside the lock: the heavy calls drop the GIL
                self._work(view)
            except BaseException as exc:    # handed to the caller's thread
                with self._ready:
                    self._failure = exc
                    self._queue.clear()
                    self._ready.notify_all()
                return
            with self._ready:
                if self._stopping:      # close() already dropped the queue: nothing to pop
                    return
                self._queue.popleft()
                self._ready.notify_all()

    def _work(self, view: Any) -> None:
        if self._hasher is not None:
            self._hasher.update(view)
        if self._consume is not None:
            self._consume(view)

    def drain(self, keep: int = 0) -> None:
        """Wait until at most `keep` submitted buffers are still in work; raise in the
        caller's thread if the work failed."""
        with self._ready:
            while len(self._queue) > keep and self._failure is None:
                self._ready.wait()
            self._raise_failure()

    def _raise_failure(self) -> None:
        failure = self._failure
        if failure is None:
            return
        if isinstance(failure, FetchError):
            raise failure
        raise FetchError("%s the downloaded bytes failed: %s: %s" % (
            "computing the %s checksum of" % self.name if self.name else "processing",
            type(failure).__name__, failure))

    def hexdigest(self) -> str:
        self.drain()
        return self._hasher.hexdigest()

    def snapshot(self) -> Any:
        """A copy of the digest of every byte submitted (a piece start: the rewind point)."""
        self.drain()
        return self._hasher.copy() if self._hasher is not None else None

    def restore(self, copy: Any, position: int) -> None:
        """Back to a snapshot taken when `position` bytes were submitted (a bad piece)."""
        self.drain()
        if copy is not None:
            self._hasher = copy.copy()

    def reset(self) -> "Worker":
        """After a restart from zero: nothing in work, a new digest."""
        self.drain()
        if self._hasher is not None:
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


class FileHasher(Worker):
    """The digest of a .part. Spliced bytes never pass through Python, so the worker
    reads each region back from the page cache (pread) and hashes it while the kernel
    splices the next one; buffers received the ordinary way (no splice, or after a
    recovery) are hashed as given. An earlier run's bytes are hashed from the file the
    same way, off the receiving thread.

    bench (sha256 -> 1 GiB file, bench/findings.md item 7): 1.44-1.58x -> 1.26-1.28x
    max(transfer, hashing) against receiving every byte into Python to hash it.
    """

    behind_splice = SPLICED_LAG   # queued regions are already in the file

    def __init__(self, hasher: Any, path: str, held: int) -> None:
        super().__init__(hasher)
        self.path = path
        self.position = 0             # bytes of the file submitted for hashing
        self._block: Optional[memoryview] = None
        with mapped("write", path=path):
            self.fd = os.open(path, os.O_RDONLY)
        if held:
            self.spliced(held)

    def update(self, view: Any) -> None:
        self.position += len(view)
        super().update(view)

    def spliced(self, size: int) -> None:
        """`size` more bytes were moved into the file at the current position."""
        region = (self.position, size)
        self.position += size
        super().update(region)

    def _work(self, item: Any) -> None:
        if not isinstance(item, tuple):
            self._hasher.update(item)
            return
        self._hash_region(*item)

    def _hash_region(self, offset: int, size: int) -> None:
        if self._block is None:
            self._block = memoryview(bytearray(READ_BLOCK))
        while size:
            with mapped("write", path=self.path):
                got = os.preadv(self.fd, [self._block[:min(size, READ_BLOCK)]], offset)
            if not got:
                raise LocalWriteError("%s ended at %d while hashing what was written there"
                                      % (self.path, offset))
            self._hasher.update(self._block[:got])
            offset += got
            size -= got

    def restore(self, copy: Any, position: int) -> None:
        super().restore(copy, position)
        self.position = position

    def reset(self) -> "Worker":
        super().reset()
        self.position = 0
        return self

    def close(self) -> None:
        super().close()
        self._block = None
        close_fd(self)


class Verifier:
    """The checksum stage, on the consumer's side of a Stream: every delivered byte goes
    to `hasher` (hashlib inline, or a Worker/FileHasher thread) and verdict() compares at
    the end of the body. `position` counts the bytes submitted (an earlier run's held
    bytes too), so the pipeline can check that every byte was hashed exactly once."""

    def __init__(self, checksum: Tuple[str, str], hasher: Any = None, held: int = 0) -> None:
        self.checksum = checksum
        self.hasher = hasher if hasher is not None else new_hasher(checksum[0])
        self.position = held
        self._refetched = False     # the one clean refetch after a mismatch was asked for
        self._settled = False       # the verdict was given: later ends are not checked

    def update(self, view: Any) -> None:
        self.position += len(view)
        self.hasher.update(view)

    def spliced(self, size: int) -> None:
        """`size` bytes went into the output file without passing here (FileHasher)."""
        self.position += size
        self.hasher.spliced(size)

    def reset(self) -> None:
        """After a restart from zero: nothing in work, an empty digest."""
        self.hasher = fresh(self.hasher)
        self.position = 0

    def snapshot(self) -> Any:
        """The digest so far (a piece start), for restore() after a bad piece."""
        return self.hasher.snapshot() if isinstance(self.hasher, Worker) else self.hasher.copy()

    def restore(self, copy: Any, position: int) -> None:
        """Back to `snapshot()` taken at byte `position`: the bytes after it are dropped."""
        if isinstance(self.hasher, Worker):
            self.hasher.restore(copy, position)
        else:
            self.hasher = copy.copy()
        self.position = position

    @property
    def digest(self) -> str:
        return "%s:%s" % (self.hasher.name, self.hasher.hexdigest())

    def verdict(self, stream: Any) -> bool:
        """At the end of `stream`'s body: True when the digest matches. On a mismatch
        over bytes assembled from >= 2 pieces (resumes, mirrors, an earlier run), once,
        ask the stream for a clean refetch from zero (False: it started); otherwise, or
        when the stream cannot, ChecksumMismatch is raised (stream.refetch raises it)."""
        if self._settled:
            return True
        algo, expected = self.checksum
        got = self.hasher.hexdigest()
        if got == expected:
            self._settled = True
            return True
        error = ChecksumMismatch("%s mismatch: expected %s, got %s" % (algo, expected, got),
                                 url=stream.url)
        self._settled = True
        stream.refetch(error, allowed=stream.ledger.pieces >= 2 and not self._refetched)
        self._refetched, self._settled = True, False
        return False


def fresh(hasher: Any) -> Any:
    """An empty digest of the same algorithm (after a restart from zero)."""
    if isinstance(hasher, Worker):
        return hasher.reset()
    return new_hasher(hasher.name)
