"""rawfetch's real code path with one or more hot-path changes patched in at run time,
so each proposed change can be measured as a whole process against the unpatched code.
Bench-only: nothing here is (or should be) imported by rawfetch.

    python -c "import rfvariant; rfvariant.main()" VARIANTS URL OUT [--sha256 HEX]
        [--cafile F]

VARIANTS is "base" or a comma list of:
    buf256k, buf4m   download()'s WRITE_BUFFER (and the stream loop's buffer) instead of 1 MiB
    rcvbuf4m         SO_RCVBUF = 4 MiB set before connect (disables rcv autotuning)
    fill             files._copy / the stream loop fill the whole buffer before each
                     os.write and hash update (fewer syscalls and Python frames)
    connfill         Connection.recv_into keeps reading while data is ready (non-blocking)
                     until the view is full: for TLS, one call returns many 16 KiB records
    hashthread       sha256 in a worker thread, with a ring of 4 buffers in _copy / the
                     stream loop (hashlib releases the GIL while hashing)
    fadvise          after every 8 MiB written, posix_fadvise(DONTNEED) on the part already
                     written: starts writeback early, so the final fsync has less to do
    nofsync          os.fsync is a no-op (attribution only: what the durability costs)
    progressreset    RetryPolicy.backoff() returns 0 when the last failed attempt moved the
                     download forward (an uncharged attempt): reconnect at once after a
                     cut mid-body; exponential backoff only for consecutive charged failures
    progressjitter   the same but a uniform(0, 50 ms) sleep instead of 0 (herd-friendlier)
    nohashlib        block _hashlib (OpenSSL's libcrypto) before rawfetch is imported:
                     what a lazy `import hashlib` saves in RSS on the no-checksum path
OUT "-" runs the stream path (rawfetch.open + readinto + os.write to stdout, as the CLI
does for -o -); anything else runs rawfetch.download(URL, OUT).
"""
import os
import sys

RING = 4
NOT_APPLICABLE = 4     # exit code: rawfetch's internals no longer have what a patch needs


def _need(obj, name):
    """The attribute a patch hooks into, or exit NOT_APPLICABLE (the code moved on)."""
    if not hasattr(obj, name):
        sys.stderr.write("variant not applicable: %s has no %s\n"
                         % (getattr(obj, "__name__", obj), name))
        raise SystemExit(NOT_APPLICABLE)
    return getattr(obj, name)


def _patch_buf(size):
    import rawfetch.files as files
    _need(files, "WRITE_BUFFER")
    files.WRITE_BUFFER = size
    return size


def _patch_rcvbuf(size):
    import socket as real
    import rawfetch.net as net
    _need(net, "socket")

    class SocketShim:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def socket(*args, **kwargs):
            s = real.socket(*args, **kwargs)
            s.setsockopt(real.SOL_SOCKET, real.SO_RCVBUF, size)
            return s

    net.socket = SocketShim()


def _patch_connfill():
    import rawfetch.connection as connection
    original = _need(_need(connection, "Connection"), "recv_into")

    def recv_into(self, view):
        size = original(self, view)
        if not size or size >= len(view):
            return size
        sock = self.sock
        total = size
        want = getattr(self, "_want", (BlockingIOError, InterruptedError))
        try:
            while total < len(view):
                got = sock.recv_into(view[total:])
                if not got:
                    break
                total += got
        except want:
            pass
        except OSError:
            pass          # the next call raises it through the normal path
        speed = getattr(self, "speed", None)
        if speed is not None:
            speed.total += total - size
        return total

    connection.Connection.recv_into = recv_into


class ThreadedHasher:
    """hashlib object whose update() hands the (still-owned) buffer view to a worker
    thread; wait(seq) blocks until update number seq is hashed."""

    def __init__(self, inner):
        import threading
        import queue
        self._inner = inner
        self.name = inner.name
        self.digest_size = inner.digest_size
        self._queue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self.submitted = 0
        self._done = 0
        self._thread = threading.Thread(target=self._work, name="hash", daemon=True)
        self._thread.start()

    def _work(self):
        update = self._inner.update
        get = self._queue.get
        cond = self._cond
        while True:
            data = get()
            if data is None:
                return
            update(data)
            with cond:
                self._done += 1
                cond.notify_all()

    def update(self, data):
        self.submitted += 1
        self._queue.put(data)
        return self.submitted

    def wait(self, seq):
        if self._done >= seq:
            return
        with self._cond:
            while self._done < seq:
                self._cond.wait()

    def hexdigest(self):
        self.wait(self.submitted)
        return self._inner.hexdigest()

    def digest(self):
        self.wait(self.submitted)
        return self._inner.digest()


def _patch_hashthread():
    import hashlib as real
    import rawfetch.resume as resume
    _need(resume, "hashlib")

    class HashlibShim:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def new(name, *args, **kwargs):
            return ThreadedHasher(real.new(name, *args, **kwargs))

    resume.hashlib = HashlibShim()


def _wait_slot(stream, seqs, i):
    hasher = stream.hasher
    if isinstance(hasher, ThreadedHasher) and seqs[i]:
        hasher.wait(seqs[i])


def _install_copy(fill, ring):
    """files._copy with optional fill-before-write and a ring of buffers. Follows the
    current _copy(stream, pipeline_or_part, progress) shape: the sink that records the
    identity is `.sink` of the second argument when it has one, else the argument."""
    import rawfetch.files as files
    _need(files, "_copy")

    def _copy(stream, pipeline, progress, worker=None):
        size = files.WRITE_BUFFER
        sink = getattr(pipeline, "sink", pipeline)
        views = [memoryview(bytearray(size)) for _ in range(ring)]
        seqs = [0] * ring
        i = 0
        while True:
            view = views[i]
            _wait_slot(stream, seqs, i)
            have = stream.readinto(view)
            if fill:
                while have and have < size:
                    got = stream.readinto(view[have:])
                    if not got:
                        break
                    have += got
            if stream.identity is not None and stream.identity != sink.recorded:
                sink.record(stream.identity)
            if not have:
                return
            hasher = stream.hasher
            seqs[i] = hasher.submitted if isinstance(hasher, ThreadedHasher) else 0
            pipeline.write(view[:have])
            if progress is not None:
                progress(stream)
            i = (i + 1) % ring

    files._copy = _copy


def _patch_fadvise(step=8 << 20):
    try:
        import rawfetch.output as where
        cls = where.PartFile
    except (ImportError, AttributeError):
        import rawfetch.files as where
        cls = _need(where, "_PartFile")
    _need(cls, "write")
    original = cls.write
    state = {"written": 0, "advised": 0}

    def write(self, view):
        original(self, view)
        state["written"] += len(view)
        behind = state["written"] - step
        if behind - state["advised"] >= step:
            try:
                os.posix_fadvise(self.fd, state["advised"], behind - state["advised"],
                                 os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
            state["advised"] = behind

    cls.write = write


def _patch_backoff(cap):
    import random
    try:
        import rawfetch.policy as where
    except ImportError:
        import rawfetch.resume as where
    cls = _need(where, "RetryPolicy")
    original = _need(cls, "backoff")

    def backoff(self, retry_after=None):
        history = getattr(self, "history", ())
        if retry_after is None and history and not history[-1].charged:
            return random.uniform(0, cap) if cap else 0.0
        return original(self, retry_after)

    cls.backoff = backoff


def _stream(url, options, size, fill, ring):
    import rawfetch
    views = [memoryview(bytearray(size)) for _ in range(ring)]
    seqs = [0] * ring
    i = 0
    with rawfetch.open(url, **options) as stream:
        while True:
            view = views[i]
            _wait_slot(stream, seqs, i)
            have = stream.readinto(view)
            if fill:
                while have and have < size:
                    got = stream.readinto(view[have:])
                    if not got:
                        break
                    have += got
            if not have:
                break
            hasher = stream.hasher
            seqs[i] = hasher.submitted if isinstance(hasher, ThreadedHasher) else 0
            chunk = view[:have]
            while chunk:
                chunk = chunk[os.write(1, chunk):]
            i = (i + 1) % ring
        return stream.digest


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    variants = set(v for v in argv[0].split(",") if v and v != "base")
    if "nohashlib" in variants:
        sys.modules["_hashlib"] = None    # hashlib falls back to its builtin modules
    rest = argv[1:]
    options = {}
    pos = []
    i = 0
    while i < len(rest):
        if rest[i] == "--sha256":
            options["checksum"] = "sha256:" + rest[i + 1]
            i += 2
        elif rest[i] == "--cafile":
            options["cafile"] = rest[i + 1]
            i += 2
        else:
            pos.append(rest[i])
            i += 1
    url, out = pos
    unknown = variants - {"buf256k", "buf4m", "rcvbuf4m", "fill", "connfill", "hashthread",
                          "fadvise", "nofsync", "progressreset", "progressjitter",
                          "nohashlib"}
    if unknown:
        raise SystemExit("unknown variant(s): %s" % ", ".join(sorted(unknown)))
    size = 1 << 20
    if "buf256k" in variants:
        size = _patch_buf(256 << 10)
    if "buf4m" in variants:
        size = _patch_buf(4 << 20)
    if "rcvbuf4m" in variants:
        _patch_rcvbuf(4 << 20)
    if "connfill" in variants:
        _patch_connfill()
    if "hashthread" in variants:
        _patch_hashthread()
    if "fadvise" in variants:
        _patch_fadvise()
    if "nofsync" in variants:
        os.fsync = lambda fd: None
    if "progressreset" in variants:
        _patch_backoff(0.0)
    if "progressjitter" in variants:
        _patch_backoff(0.05)
    fill = "fill" in variants
    ring = RING if "hashthread" in variants else 1
    if variants & {"fill", "hashthread"}:
        _install_copy(fill, ring)
    if out == "-":
        _stream(url, options, size, fill, ring)
    else:
        import rawfetch
        rawfetch.download(url, out, **options)


if __name__ == "__main__":
    main()
