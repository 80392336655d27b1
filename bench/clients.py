"""The Python clients the bench runs as whole processes, one per invocation:

    python -c "import clients; clients.main()" NAME URL OUT [--cafile F] [--sha256 HEX]

(run through -c with bench/ on PYTHONPATH so this module loads from its cached .pyc,
like rawfetch's own modules: a script file would be recompiled on every run.)
Each imports only what it needs, inside its function. OUT "-" means stdout.

    floor        raw socket: GET, recv_into a preallocated 1 MiB buffer, os.write
    floor-fill   same, but fill the 1 MiB buffer before each os.write (for TLS: SSL_read
                 returns at most one 16 KiB record per call)
    floor-fsync  floor + fsync at the end (rawfetch's download() fsyncs before rename)
    floor-buffered  floor writing through a buffered file object (file.write)
    http.client  HTTPResponse.readinto(1 MiB) + os.write
    requests     iter_content(1 MiB) + file.write
    urllib3      stream(1 MiB) + file.write
    hash-alone   sha256 over URL-as-a-local-file in 1 MiB blocks (page cache); prints the
                 in-process seconds on stderr
    rawfetch-nofsync  rawfetch's CLI with os.fsync made a no-op: attribution only
A --sha256 HEX option makes floor/floor-fill hash inline and check the digest.
"""
import os
import sys

BUF = 1 << 20


def _args(argv):
    opts = {"cafile": None, "sha256": None, "buf": BUF}
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--cafile", "--sha256", "--buf"):
            opts[a[2:]] = argv[i + 1]
            i += 2
        else:
            pos.append(a)
            i += 1
    opts["buf"] = int(opts["buf"])
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


def floor(url, out, opts, fill=False, fsync=False, buffered=False):
    import socket
    scheme, host, port, path = _split(url)
    sock = socket.create_connection((host, port))
    if scheme == "https":
        import ssl
        ctx = ssl.create_default_context(cafile=opts["cafile"])
        sock = ctx.wrap_socket(sock, server_hostname=host)
    send_get(sock, host, port, path)
    hasher = None
    if opts["sha256"]:
        import hashlib
        hasher = hashlib.sha256()
    buf = bytearray(opts["buf"])
    view = memoryview(buf)
    fd = _out(out)
    start, have = read_head(sock, buf)   # the head: only find its end
    if not buf.startswith(b"HTTP/1.1 200"):
        raise SystemExit("bad status: %r" % bytes(buf[:40]))
    body = view[start:have]
    if hasher:
        hasher.update(body)
    _write_all(fd, body)
    recv_into = sock.recv_into
    write = os.write
    size = len(view)
    if buffered:                      # file.write (io.BufferedWriter) instead of os.write
        f = os.fdopen(fd, "wb", closefd=out != "-")
        while True:
            got = recv_into(view)
            if not got:
                break
            f.write(view[:got])
        f.flush()
    elif not fill:
        while True:
            got = recv_into(view)
            if not got:
                break
            chunk = view[:got]
            if hasher:
                hasher.update(chunk)
            while chunk:
                chunk = chunk[write(fd, chunk):]
    else:
        eof = False
        while not eof:
            have = 0
            while have < size:
                got = recv_into(view[have:])
                if not got:
                    eof = True
                    break
                have += got
            chunk = view[:have]
            if hasher:
                hasher.update(chunk)
            while chunk:
                chunk = chunk[write(fd, chunk):]
    if fsync:
        os.fsync(fd)
    if hasher and hasher.hexdigest() != opts["sha256"]:
        raise SystemExit("sha256 mismatch")


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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    name = argv[0]
    if name == "rawfetch-nofsync":
        return rawfetch_nofsync(argv[1:])
    (url, out), opts = _args(argv[1:])
    if name == "floor":
        floor(url, out, opts)
    elif name == "floor-fill":
        floor(url, out, opts, fill=True)
    elif name == "floor-fsync":
        floor(url, out, opts, fsync=True)
    elif name == "floor-buffered":
        floor(url, out, opts, buffered=True)
    elif name == "http.client":
        http_client(url, out, opts)
    elif name == "requests":
        requests_get(url, out, opts)
    elif name == "urllib3":
        urllib3_get(url, out, opts)
    elif name == "hash-alone":
        hash_alone(url, out, opts)
    else:
        raise SystemExit("unknown client %r" % name)


if __name__ == "__main__":
    main()
