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

from clients import _split, _write_all, read_head, send_get


def run(url, out, mode="splice", chunk=1 << 20):
    import socket
    if mode == "splice" and not hasattr(os, "splice"):
        sys.stderr.write("os.splice unavailable (Linux + Python >= 3.10 needed)\n")
        raise SystemExit(3)
    _scheme, host, port, path = _split(url)
    sock = socket.create_connection((host, port))
    send_get(sock, host, port, path)
    fd = 1 if out == "-" else os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = bytearray(chunk)
    view = memoryview(buf)
    start, have = read_head(sock, buf, 65536 if mode == "splice" else 0)
    _write_all(fd, view[start:have])
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
