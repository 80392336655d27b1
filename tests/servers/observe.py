"""Print what each real server sends for the requests the resume rules read.

`PYTHONPATH=$PWD python3 -m tests.servers.observe` -> the table in docs/servers.md: the
validator style (ETag form, Last-Modified vs Date of a freshly written file), the 416 form
for `bytes=N-` with N the length, what a forced coding and a same-second replacement look
like. Requests go straight to the server (no relay), with rawfetch's own request heads.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from typing import Dict, List, Tuple

from tests.servers.daemons import SERVERS, write
from tests.servers.relay import parse_head

SIZE = 1 << 16


def get(port: int, path: str, *extra: Tuple[str, str]) -> Tuple[int, Dict[str, str]]:
    lines = ["GET %s HTTP/1.1" % path, "Host: 127.0.0.1:%d" % port,
             "Accept-Encoding: identity", "Connection: close"]
    lines += ["%s: %s" % field for field in extra]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    head = parse_head(data.split(b"\r\n\r\n", 1)[0])
    return head.status, head.fields


def observe(name: str) -> List[str]:
    root = tempfile.mkdtemp(prefix="servers-observe-")
    os.chmod(root, 0o755)
    old = time.time() - 3600
    write(os.path.join(root, "files", "a", "img"), os.urandom(SIZE), old)
    write(os.path.join(root, "noetag", "a", "img"), os.urandom(SIZE), old)
    write(os.path.join(root, "files", "fresh", "img"), os.urandom(SIZE))
    daemon = SERVERS[name](root)
    reason = daemon.available()
    if reason:
        return ["%s: skipped (%s)" % (name, reason)]
    daemon.place_forced(os.path.join(root, "forced", "a"), os.urandom(SIZE))
    daemon.start()
    try:
        port = daemon.port
        rows = []
        for label, path, extra in [
                ("200", "/files/a/img", ()),
                ("fresh file", "/files/fresh/img", ()),
                ("no ETag configured", "/noetag/a/img", ()),
                ("416 bytes=N-", "/files/a/img", (("Range", "bytes=%d-" % SIZE),)),
                ("206 bytes=N-1-", "/files/a/img", (("Range", "bytes=%d-" % (SIZE - 1)),)),
                ("forced coding", "/forced/a/img", ())]:
            status, fields = get(port, path, *extra)
            shown = ", ".join("%s: %s" % (k, fields[k]) for k in (
                "etag", "last-modified", "date", "content-range", "content-encoding")
                if k in fields)
            rows.append("%s | %s | %d | %s" % (name, label, status, shown))
        return rows
    finally:
        daemon.stop()
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    for name in SERVERS:
        for row in observe(name):
            print(row)


if __name__ == "__main__":
    main()
