"""Which stdlib modules rawfetch really imports: found by running it, not by guessing.

Why tracing: a ramdisk that carries the whole stdlib is ~40 MiB of Python nobody runs,
and a hand-written list rots the day a lazy import moves. So the recipe runs the real
`rawfetch` command under the interpreter it will ship, with `-X importtime`, through
the paths a provisioning run takes (the --cmdline path, a plain download onto a device
with --verify-written and a SHA256SUMS, resumes after a reset, gz/xz/bz2 decompression (multi-block xz on the decode pool too),
https with certificate checks, a host name that needs IDNA, and the error exits), and
collects every module the interpreter reports. The servers are the in-repo fault server
on loopback, run by the building interpreter (the traced one needs nothing but itself).
"""
from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, Iterator, List, Sequence, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(os.path.dirname(HERE))
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|( *)(\S+)\s*$")
PYTHON_FLAGS = ("-S", "-B")          # exactly what /init runs the interpreter with
RUN_TIMEOUT = 60.0                   # s per traced run (each is a loopback transfer)
TRACE_SIZE = 3 << 20                 # bytes: enough for a resume after a reset at 1 MiB


def guest_env(pythonpath: str) -> Dict[str, str]:
    """The environment /init gives the interpreter: no locale, nothing inherited."""
    return {"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath, "HOME": "/"}


def imported_names(stderr: str) -> List[str]:
    """Module names from `-X importtime` output, in import order."""
    names = []
    for line in stderr.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            names.append(match.group(2))
    return names


@contextlib.contextmanager
def _servers(workdir: str) -> Iterator[Tuple[object, object, Dict[str, bytes]]]:
    """A plain and a TLS fault server on loopback with the traced payloads."""
    sys.path.insert(0, CHECKOUT)
    from tests.faultserver import FaultServer, actions as A, make_body
    from tests.xzmake import xz_blocks
    payload = make_body(TRACE_SIZE)
    files = {"/img": payload, "/img.gz": gzip.compress(payload, 1),
             "/img.xz": lzma.compress(payload, preset=0), "/img.bz2": bz2.compress(payload, 1),
             "/blocks.xz": xz_blocks(payload, 1 << 20)}   # what xz -T0 writes: the pool path
    import hashlib
    sums = "%s  img\n" % hashlib.sha256(payload).hexdigest()
    with FaultServer() as plain, FaultServer(tls="ok") as tls:
        for srv in (plain, tls):
            for path, data in files.items():
                srv.add(path, data)
            srv.add("/SHA256SUMS", sums.encode())
        plain.script([A.rst(at=1 << 20), A.normal()], path="/img")
        yield plain, tls, files


def _runs(plain: object, tls: object, workdir: str) -> List[Tuple[List[str], Sequence[int]]]:
    """(rawfetch argv, acceptable exit codes) for every path worth tracing."""
    out = os.path.join(workdir, "out")
    disk = os.path.join(workdir, "disk")
    with open(disk, "wb") as handle:
        handle.truncate(TRACE_SIZE + (1 << 20))
    cmdline = os.path.join(workdir, "cmdline")
    with open(cmdline, "w") as handle:
        handle.write("console=ttyS0 rawfetch.url=%s rawfetch.output=%s rawfetch.in-place "
                     "rawfetch.checksum-url=%s rawfetch.verify-written rawfetch.retry-delay=0.1"
                     "\n" % (plain.url("/img"), disk, plain.url("/SHA256SUMS")))  # type: ignore
    port = plain.port  # type: ignore[attr-defined]
    runs: List[Tuple[List[str], Sequence[int]]] = [
        (["--cmdline", cmdline], (0,)),
        (["http://localhost:%d/img.gz" % port, "-o", out, "--decompress", "auto",
          "--progress", "--log-json", "-"], (0,)),
        (["http://localhost:%d/img.xz" % port, "-o", out, "--decompress", "auto"], (0,)),
        (["http://localhost:%d/img.bz2" % port, "-o", out, "--decompress", "auto"], (0,)),
        (["http://localhost:%d/blocks.xz" % port, "-o", out, "--decompress", "xz",
          "--decode-threads", "2"], (0,)),
        ([tls.url("/img"), "-o", out, "--cacert", tls.ca_path,  # type: ignore
          "--checksum-url", tls.url("/SHA256SUMS")], (0,)),  # type: ignore
        ([tls.url("/img"), "-o", out, "--retries", "0"], (60,)),  # type: ignore
        (["http://localhost:%d/missing" % port, "-o", out, "--retries", "0"], (22,)),
        (["http://127.0.0.1:1/img", "-o", out, "--retries", "0"], (7,)),
        (["--cmdline", os.path.join(workdir, "absent")], (2,)),
    ]
    return runs


def _piped(cmd: Sequence[str], cwd: str) -> Tuple[int, str]:
    proc = subprocess.run(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=guest_env(CHECKOUT), timeout=RUN_TIMEOUT, cwd=cwd)
    return proc.returncode, proc.stderr.decode(errors="replace")


def _on_pty(cmd: Sequence[str], cwd: str) -> Tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal (progress line and all)."""
    import pty
    import threading
    master, slave = pty.openpty()
    chunks: List[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:     # EIO: the child side closed; cleanup, not an I/O failure
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(list(cmd), stdout=slave, stderr=slave, env=guest_env(CHECKOUT),
                              timeout=RUN_TIMEOUT, cwd=cwd)
    finally:
        os.close(slave)
        reader.join(RUN_TIMEOUT)
        os.close(master)
    return proc.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")


def trace(python: str, workdir: str = "") -> Set[str]:
    """Every module name the traced runs imported under `python`."""
    names: Set[str] = set()
    with tempfile.TemporaryDirectory(dir=workdir or None) as tmp, _servers(tmp) as (plain, tls,
                                                                                _files):
        for index, (argv, codes) in enumerate(_runs(plain, tls, tmp)):
            cmd = [python, *PYTHON_FLAGS, "-X", "importtime", "-m", "rawfetch", *argv]
            # the first run (--cmdline, as /init runs it) has a terminal, as on a console
            returncode, stderr = _on_pty(cmd, tmp) if index == 0 else _piped(cmd, tmp)
            if returncode not in codes:
                raise RuntimeError("traced run %s exited %d, expected %s:\n%s"
                                   % (argv, returncode, codes, stderr[-2000:]))
            names.update(imported_names(stderr))
    return {name for name in names if name != "rawfetch" and not name.startswith("rawfetch.")}


if __name__ == "__main__":
    for module in sorted(trace(sys.argv[1] if len(sys.argv) > 1 else sys.executable)):
        print(module)
