"""The Python clients the bench runs as whole processes, one per invocation:

    python -c "import clients; clients.main()" NAME URL OUT [--cafile F] [--sha256 HEX]
        [--buf BYTES] [--step BYTES]

(run through -c with bench/ on PYTHONPATH so this module loads from its cached .pyc,
like rawfetch's own modules: a script file would be recompiled on every run.)
Each imports only what it needs, inside its function. OUT "-" means stdout.

    floor        raw socket: GET, recv_into a preallocated 1 MiB buffer, os.write
    floor-fill   same, but fill the 1 MiB buffer before each os.write (for TLS: SSL_read
                 returns at most one 16 KiB record per call)
    floor-fsync  floor + fsync at the end (rawfetch's download() fsyncs before rename)
    floor-buffered  floor writing through a buffered file object (file.write)
    floor-sha256-thread  floor + sha256 (--sha256 HEX) in a worker thread, two buffers
    floor-gunzip, floor-unxz  the image pipeline's one-thread floor: recv_into +
                 zlib/lzma decompress (at most --step bytes out per call) + os.write
    http.client  HTTPResponse.readinto(1 MiB) + os.write
    requests     iter_content(1 MiB) + file.write
    urllib3      stream(1 MiB) + file.write
    hash-alone   sha256 over URL-as-a-local-file in 1 MiB blocks (page cache); prints the
                 in-process seconds on stderr
    rawfetch-nofsync  rawfetch's CLI with os.fsync made a no-op: attribution only
A --sha256 HEX option makes the floors hash (inline, or in the -thread one) and check
the digest.
"""
import os
import sys

BUF = 1 << 20
DECODE_STEP = 4 << 20   # output per decompress call, as rawfetch's GUNZIP_OUTPUT_STEP


def _args(argv):
    opts = {"cafile": None, "sha256": None, "buf": BUF, "step": DECODE_STEP}
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--cafile", "--sha256", "--buf", "--step"):
            opts[a[2:]] = argv[i + 1]
            i += 2
        else:
            pos.append(a)
            i += 1
    opts["buf"] = int(opts["buf"])
    opts["step"] = int(opts["step"])
    return pos, opts


def _out(path):
    if path == "-":
        return 1
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _split(url):
    scheme, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return scheme, host, int(port), "/" + path


def _write_all(fd, view):
    while view:
        view = view[os.write(fd, view):]


def send_get(sock, host, port, path):
    """The floor's whole request: nothing but what HTTP/1.1 requires."""
    sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                  % (path, host, port)).encode("ascii"))


def read_head(sock, buf, most=0):
    """Receive into buf until the head ends; return (end of head + 4, bytes in buf).
    `most` caps each recv (0 = the whole buffer), so little body is read with it."""
    view = memoryview(buf)
    have = 0
    while True:
        got = sock.recv_into(view[have:], most)
        if not got:
            raise SystemExit("closed in the head")
        have += got
        end = buf.find(b"\r\n\r\n", 0, have)
        if end >= 0:
            return end + 4, have


def _open(url, out, opts, buf):
    """Connect (ssl for https), send the GET, read the head into buf, open the output:
    (socket, output fd, the body bytes that came with the head, a view into buf)."""
    import socket
    scheme, host, port, path = _split(url)
    sock = socket.create_connection((host, port))
    if scheme == "https":
        import ssl
        ctx = ssl.create_default_context(cafile=opts["cafile"])
        sock = ctx.wrap_socket(sock, server_hostname=host)
    send_get(sock, host, port, path)
    start, have = read_head(sock, buf)   # the head: only find its end
    if not buf.startswith(b"HTTP/1.1 200"):
        raise SystemExit("bad status: %r" % bytes(buf[:40]))
    return sock, _out(out), memoryview(buf)[start:have]


def _hasher(opts):
    if not opts["sha256"]:
        return None
    import hashlib
    return hashlib.sha256()


def _check(hasher, opts):
    if hasher is not None and hasher.hexdigest() != opts["sha256"]:
        raise SystemExit("sha256 mismatch")


def _copy_each(sock, fd, view, hasher):
    """One os.write (and hash update) per recv_into: the floor's loop."""
    recv_into = sock.recv_into
    write = os.write
    while True:
        got = recv_into(view)
        if not got:
            return
        chunk = view[:got]
        if hasher:
            hasher.update(chunk)
        while chunk:
            chunk = chunk[write(fd, chunk):]


def _copy_filled(sock, fd, view, hasher):
    """Fill the whole buffer before each write (TLS: one record per recv otherwise)."""
    recv_into = sock.recv_into
    size = len(view)
    eof = False
    while not eof:
        have = 0
        while have < size:
            got = recv_into(view[have:])
            if not got:
                eof = True
                break
            have += got
        if hasher:
            hasher.update(view[:have])
        _write_all(fd, view[:have])


def _copy_buffered(sock, fd, view, out):
    """file.write (io.BufferedWriter) instead of os.write."""
    f = os.fdopen(fd, "wb", closefd=out != "-")
    while True:
        got = sock.recv_into(view)
        if not got:
            break
        f.write(view[:got])
    f.flush()


def floor(url, out, opts, fill=False, fsync=False, buffered=False):
    buf = bytearray(opts["buf"])
    sock, fd, body = _open(url, out, opts, buf)
    hasher = _hasher(opts)
    if hasher:
        hasher.update(body)
    _write_all(fd, body)
    view = memoryview(buf)
    if buffered:
        _copy_buffered(sock, fd, view, out)
    elif fill:
        _copy_filled(sock, fd, view, hasher)
    else:
        _copy_each(sock, fd, view, hasher)
    if fsync:
        os.fsync(fd)
    _check(hasher, opts)


def floor_sha256_thread(url, out, opts):
    """The floor with sha256 in a worker thread over two alternating buffers (the design
    of rawfetch's digest.HashWorker): what overlap buys on this machine, outside rawfetch.
    hashlib releases the GIL on large updates, recv_into/os.write while in the kernel."""
    import hashlib
    import queue
    import threading
    hasher = hashlib.sha256()
    size = opts["buf"]
    sock, fd, body = _open(url, out, opts, bytearray(size))
    hasher.update(body)
    _write_all(fd, body)
    free, work = queue.SimpleQueue(), queue.SimpleQueue()
    for _ in range(2):
        free.put(memoryview(bytearray(size)))

    def worker():
        while True:
            item = work.get()
            if item is None:
                return
            hasher.update(item[0][:item[1]])
            free.put(item[0])

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    while True:
        view = free.get()
        got = sock.recv_into(view)
        if not got:
            break
        _write_all(fd, view[:got])
        work.put((view, got))
    work.put(None)
    thread.join()
    _check(hasher, opts)


def _gunzip_step(decoder, data, fd, step):
    """Inflate data, writing at most `step` bytes per zlib call (bounded memory)."""
    while True:
        _write_all(fd, memoryview(decoder.decompress(data, step)))
        data = decoder.unconsumed_tail
        if not data:
            return


def _unxz_step(decoder, data, fd, step):
    """Decode data, at most `step` bytes of output per lzma call."""
    _write_all(fd, memoryview(decoder.decompress(data, step)))
    while not decoder.needs_input and not decoder.eof:
        _write_all(fd, memoryview(decoder.decompress(b"", step)))


def floor_decompress(url, out, opts, codec):
    """The image pipeline's floor: recv_into, decompress, os.write, all on one thread."""
    if codec == "gzip":
        import zlib
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        step = _gunzip_step
    else:
        import lzma
        decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        step = _unxz_step
    buf = bytearray(opts["buf"])
    sock, fd, body = _open(url, out, opts, buf)
    step(decoder, bytes(body), fd, opts["step"])
    view = memoryview(buf)
    while True:
        got = sock.recv_into(view)
        if not got:
            break
        step(decoder, view[:got], fd, opts["step"])
    if codec == "gzip":
        _write_all(fd, memoryview(decoder.flush()))
    if not decoder.eof:
        raise SystemExit("truncated %s stream" % codec)


def http_client(url, out, opts):
    import http.client
    scheme, host, port, path = _split(url)
    if scheme == "https":
        import ssl
        ctx = ssl.create_default_context(cafile=opts["cafile"])
        conn = http.client.HTTPSConnection(host, port, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port)
    conn.request("GET", path)
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit("HTTP %d" % resp.status)
    buf = bytearray(opts["buf"])
    view = memoryview(buf)
    fd = _out(out)
    while True:
        got = resp.readinto(view)
        if not got:
            break
        _write_all(fd, view[:got])


def requests_get(url, out, opts):
    import requests
    with requests.get(url, stream=True, verify=opts["cafile"] or True) as r:
        r.raise_for_status()
        with (os.fdopen(1, "wb", closefd=False) if out == "-" else open(out, "wb")) as f:
            for chunk in r.iter_content(opts["buf"]):
                f.write(chunk)


def urllib3_get(url, out, opts):
    import urllib3
    pool = urllib3.PoolManager(ca_certs=opts["cafile"]) if opts["cafile"] else \
        urllib3.PoolManager()
    r = pool.request("GET", url, preload_content=False)
    if r.status != 200:
        raise SystemExit("HTTP %d" % r.status)
    with (os.fdopen(1, "wb", closefd=False) if out == "-" else open(out, "wb")) as f:
        for chunk in r.stream(opts["buf"]):
            f.write(chunk)
    r.release_conn()


def hash_alone(path, _out_unused, opts):
    import hashlib
    import time
    t0 = time.perf_counter()
    h = hashlib.sha256()
    buf = bytearray(opts["buf"])
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(view)
            if not got:
                break
            h.update(view[:got])
    elapsed = time.perf_counter() - t0
    sys.stderr.write("hash-alone %.6f %s\n" % (elapsed, h.hexdigest()))
    if opts["sha256"] and h.hexdigest() != opts["sha256"]:
        raise SystemExit("sha256 mismatch")


def rawfetch_nofsync(argv):
    os.fsync = lambda fd: None   # attribution only: what download() costs without fsync
    from rawfetch.cli import main as cli_main
    sys.argv = ["rawfetch"] + list(argv)
    cli_main()


CLIENTS = {      # every client by the NAME on the command line
    "floor": lambda url, out, opts: floor(url, out, opts),
    "floor-fill": lambda url, out, opts: floor(url, out, opts, fill=True),
    "floor-fsync": lambda url, out, opts: floor(url, out, opts, fsync=True),
    "floor-buffered": lambda url, out, opts: floor(url, out, opts, buffered=True),
    "floor-sha256-thread": floor_sha256_thread,
    "floor-gunzip": lambda url, out, opts: floor_decompress(url, out, opts, "gzip"),
    "floor-unxz": lambda url, out, opts: floor_decompress(url, out, opts, "xz"),
    "http.client": http_client,
    "requests": requests_get,
    "urllib3": urllib3_get,
    "hash-alone": hash_alone,
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0]
    if name == "rawfetch-nofsync":
        return rawfetch_nofsync(argv[1:])
    if name not in CLIENTS:
        raise SystemExit("unknown client %r" % name)
    (url, out), opts = _args(argv[1:])
    CLIENTS[name](url, out, opts)


if __name__ == "__main__":
    main()
