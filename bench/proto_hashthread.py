"""Prototype: overlap sha256 with receiving, using a worker thread and a ring of buffers.

    python3 bench/proto_hashthread.py URL OUT SHA256HEX [--mode inline|thread]
        [--ring 4] [--buf 1M]

The Python floor client (raw socket, GET, recv_into a preallocated buffer, os.write)
with the digest computed either inline (hash, then write, then recv again) or in a worker
thread: the main thread receives into buffer k, writes it and hands it to the worker,
then receives into buffer k+1 while the worker hashes buffer k; a buffer is reused only
after its hash is done. hashlib releases the GIL while hashing more than 2 KiB, and
recv_into/os.write release it while in the kernel, so the two really run in parallel on
two cores. Exits non-zero on a digest mismatch.
"""
import os
import sys

from clients import _split, _write_all, read_head, send_get


def _connect(url, buf):
    import socket
    _scheme, host, port, path = _split(url)
    sock = socket.create_connection((host, port))
    send_get(sock, host, port, path)
    start, have = read_head(sock, buf)
    return sock, bytes(buf[start:have])


def run(url, out, expect, mode="thread", ring=4, size=1 << 20):
    import hashlib
    hasher = hashlib.sha256()
    fd = 1 if out == "-" else os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    first = bytearray(size)
    sock, leftover = _connect(url, first)
    hasher.update(leftover)
    _write_all(fd, memoryview(leftover))
    recv_into = sock.recv_into
    if mode == "inline":
        view = memoryview(first)
        while True:
            got = recv_into(view)
            if not got:
                break
            chunk = view[:got]
            hasher.update(chunk)
            _write_all(fd, chunk)
    else:
        import queue
        import threading
        work = queue.SimpleQueue()
        free = queue.SimpleQueue()
        views = [memoryview(first)] + [memoryview(bytearray(size)) for _ in range(ring - 1)]
        for v in views:
            free.put(v)

        def worker():
            update = hasher.update
            while True:
                item = work.get()
                if item is None:
                    return
                view, n = item
                update(view[:n])
                free.put(view)

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        while True:
            view = free.get()
            got = recv_into(view)
            if not got:
                break
            _write_all(fd, view[:got])
            work.put((view, got))
        work.put(None)
        thread.join()
    if hasher.hexdigest() != expect:
        raise SystemExit("sha256 mismatch")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = {"--mode": "thread", "--ring": "4", "--buf": str(1 << 20)}
    pos = []
    i = 0
    while i < len(argv):
        if argv[i] in opts:
            opts[argv[i]] = argv[i + 1]
            i += 2
        else:
            pos.append(argv[i])
            i += 1
    url, out, expect = pos
    buf = opts["--buf"].upper()
    size = int(buf[:-1]) << {"K": 10, "M": 20}[buf[-1]] if buf[-1] in "KM" else int(buf)
    run(url, out, expect, opts["--mode"], int(opts["--ring"]), size)


if __name__ == "__main__":
    main()
