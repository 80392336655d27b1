"""Prototype: os.splice socket -> pipe -> file for plain HTTP without hashing.

    python3 bench/proto_splice.py URL OUT [--mode splice|copy] [--chunk 1M]

The Python floor client (raw socket, GET, find the end of the head), then the body
either copied through user space (recv_into a 1 MiB buffer + os.write: mode copy) or
moved by the kernel with os.splice (Linux, Python >= 3.10): socket -> pipe (pipe sized
to the chunk with F_SETPIPE_SZ) -> output, no byte passing through Python (mode splice).
OUT "-" is stdout (splice to /dev/null works too). Exits 3 if os.splice is missing.
"""
import os
import sys


def _split(url):
    scheme, _, rest = url.partition("://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    return host, int(port), "/" + path


def _write_all(fd, view):
    while view:
        view = view[os.write(fd, view):]


def run(url, out, mode="splice", chunk=1 << 20):
    import socket
    if mode == "splice" and not hasattr(os, "splice"):
        sys.stderr.write("os.splice unavailable (Linux + Python >= 3.10 needed)\n")
        raise SystemExit(3)
    host, port, path = _split(url)
    sock = socket.create_connection((host, port))
    sock.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n\r\n"
                  % (path, host, port)).encode("ascii"))
    fd = 1 if out == "-" else os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = bytearray(chunk)
    view = memoryview(buf)
    have = 0
    while True:
        got = sock.recv_into(view[have:], 65536 if mode == "splice" else 0)
        if not got:
            raise SystemExit("closed in the head")
        have += got
        end = buf.find(b"\r\n\r\n", 0, have)
        if end >= 0:
            break
    _write_all(fd, view[end + 4:have])
    sfd = sock.fileno()
    if mode == "copy":
        while True:
            got = sock.recv_into(view)
            if not got:
                break
            _write_all(fd, view[:got])
        return
    r, w = os.pipe()
    try:
        import fcntl
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, chunk)
    except (ImportError, AttributeError, OSError):
        pass
    splice = os.splice
    flags = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_MORE", 0)
    while True:
        got = splice(sfd, w, chunk, flags=flags)
        if not got:
            break
        while got:
            got -= splice(r, fd, got, flags=flags)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    opts = {"--mode": "splice", "--chunk": "1M"}
    pos = []
    i = 0
    while i < len(argv):
        if argv[i] in opts:
            opts[argv[i]] = argv[i + 1]
            i += 2
        else:
            pos.append(argv[i])
            i += 1
    url, out = pos
    c = opts["--chunk"].upper()
    chunk = int(c[:-1]) << {"K": 10, "M": 20}[c[-1]] if c[-1] in "KM" else int(c)
    run(url, out, opts["--mode"], chunk)


if __name__ == "__main__":
    main()
