"""Real servers started by the tests: nginx (generated config) and `python3 -m http.server`.

Why: rawfetch's resume rules must hold against what real servers actually send (nginx's
Range/ETag/If-Range handling, http.server ignoring Range). Both run on loopback or inside a
server namespace, with every path (pid, logs, temp dirs) in a per-test directory, and are
always stopped by their fixture.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from tests.faultserver import make_body
from tests.realnet.netns import PREFIX, owner_env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_TIMEOUT = 10.0   # s; a server that is not listening by then failed
STOP_TIMEOUT = 5.0     # s; graceful stop, then SIGKILL of its whole process group
CHUNK = 1 << 24
PUBLISHED_AGO = 3600.0  # s: payload mtimes lie this far back, so that their Last-Modified
                        # and nginx's mtime-based ETag are strong validators (issue 23)

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format rf '$status $server_addr "$request_uri" "$http_range" '
                  '"$http_if_range" $body_bytes_sent';
    access_log {dir}/access.log rf;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    sendfile on;
    send_timeout 10s;
    reset_timedout_connection on;
    default_type application/octet-stream;
    types {{ }}
    # ?rate=32m paces one response (nginx limit_rate): long enough for a fault to land.
    map $arg_rate $rf_rate {{ default 0; "~^(?<r>[0-9]+[km]?)$" $r; }}
    server {{
        listen {listen};
        root {root};
        limit_rate $rf_rate;
    }}
}}
"""


def free_port(host: str = "127.0.0.1") -> int:
    """An ephemeral port that was free a moment ago (callers retry on a lost race)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def write_payload(path: str, size: int, seed: int) -> str:
    """Write make_body(size, seed) to `path`; return its sha256 hex."""
    data = make_body(size, seed)
    with open(path, "wb") as handle:
        handle.write(data)
    stamp = time.time() - PUBLISHED_AGO   # an image published a while ago, as on a mirror
    os.utime(path, (stamp, stamp))
    return hashlib.sha256(data).hexdigest()


def replace_file(path: str, size: int, seed: int) -> str:
    """Atomically put new content at `path` with a clearly different mtime (new ETag).

    An open fd (nginx's sendfile) keeps serving the old inode, as on a real mirror."""
    sha = write_payload(path + ".new", size, seed)
    _publish(path + ".new", path)
    return sha


def swap_in(path: str, source: str) -> None:
    """Publish a copy of `source` at `path` atomically, with a new mtime (new ETag)."""
    shutil.copyfile(source, path + ".new")
    _publish(path + ".new", path)


def _publish(staged: str, path: str) -> None:
    # nginx's ETag is mtime-size: make sure it changes, and stays in the past (a
    # Last-Modified after the response's Date is no strong validator: RFC 9110 s8.8.2.2)
    stamp = os.stat(path).st_mtime + 60 if os.path.exists(path) else time.time() - 60
    os.utime(staged, (stamp, stamp))
    os.replace(staged, path)


def sha256_file(path: str, limit: Optional[int] = None) -> str:
    """sha256 of a file (or of its first `limit` bytes, for a block device)."""
    digest = hashlib.sha256()
    left = limit
    with open(path, "rb") as handle:
        while left is None or left > 0:
            block = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def _children(pid: int) -> List[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _stop_process(proc: "subprocess.Popen[bytes]", sig: int) -> None:
    """Signal, wait, then SIGKILL the whole process group (workers included)."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(STOP_TIMEOUT)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


class Nginx:
    """nginx in the foreground (`daemon off`) with a generated config in `workdir`."""

    def __init__(self, workdir: str, docroot: str, listen: str,
                 prefix: Sequence[str] = ()) -> None:
        # rf<pid>ng in the path shows in nginx's process title: a sweep can find it
        self.workdir = os.path.join(workdir, "%s%dng" % (PREFIX, os.getpid()))
        self.docroot, self.listen = docroot, listen
        self.prefix = list(prefix)          # e.g. ["ip", "netns", "exec", NS]
        self.conf = os.path.join(self.workdir, "nginx.conf")
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> "Nginx":
        os.makedirs(os.path.join(self.workdir, "tmp"), exist_ok=True)
        with open(self.conf, "w") as handle:
            handle.write(NGINX_CONF.format(dir=self.workdir, root=self.docroot,
                                           listen=self.listen))
        log = open(os.path.join(self.workdir, "stderr.log"), "ab")
        self.proc = subprocess.Popen(
            self.prefix + ["nginx", "-c", self.conf, "-p", self.workdir],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=owner_env(),
            start_new_session=True)
        log.close()
        return self

    def wait_ready(self, probe: Optional[Callable[[], bool]] = None) -> None:
        """Wait for the pid file (written after bind); raise with the error log if it died."""
        pidfile = os.path.join(self.workdir, "nginx.pid")
        end = time.monotonic() + START_TIMEOUT
        assert self.proc is not None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("nginx exited: %s" % self.error_log())
            if os.path.exists(pidfile) and self.workers() and (probe is None or probe()):
                return
            time.sleep(0.02)
        raise RuntimeError("nginx not ready: %s" % self.error_log())

    def error_log(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            try:
                with open(os.path.join(self.workdir, name)) as handle:
                    text += handle.read()[-2000:]
            except OSError:
                pass
        return text

    def workers(self) -> List[int]:
        return _children(self.proc.pid) if self.proc is not None else []

    def kill_workers(self) -> None:
        """SIGKILL the worker mid-transfer (a crash); wait for the master's new worker."""
        old = self.workers()
        for pid in old:
            os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            fresh = [p for p in self.workers() if p not in old]
            if fresh:
                return
            time.sleep(0.01)
        raise RuntimeError("nginx did not respawn its worker")

    def access_log(self) -> List[Dict[str, str]]:
        """Parsed access log: status, addr, uri, range, if_range, bytes per request."""
        rows = []
        try:
            with open(os.path.join(self.workdir, "access.log")) as handle:
                lines = handle.read().splitlines()
        except OSError:
            return []
        for line in lines:
            status, addr, rest = line.split(" ", 2)
            quoted = [q.replace("\\x22", '"') for q in rest.split('"')]  # nginx escapes "
            rows.append({"status": status, "addr": addr, "uri": quoted[1],
                         "range": quoted[3], "if_range": quoted[5],
                         "bytes": quoted[6].strip()})
        return rows

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM)


def start_loopback_nginx(workdir: str, docroot: str) -> Tuple[Nginx, int]:
    """nginx on 127.0.0.1 at an ephemeral port; retried if the port was taken meanwhile."""
    for _ in range(5):
        port = free_port()
        server = Nginx(workdir, docroot, "127.0.0.1:%d" % port).start()
        try:
            server.wait_ready(lambda: accepts("127.0.0.1", port))
            return server, port
        except RuntimeError:
            server.stop()
    raise RuntimeError("could not start nginx on loopback: %s" % server.error_log())


def accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


class HttpServer:
    """`python3 -m http.server` (ignores Range, sends Last-Modified), restartable."""

    def __init__(self, docroot: str, bind: str, port: int, log: str,
                 prefix: Sequence[str] = ()) -> None:
        self.docroot, self.bind, self.port, self.log = docroot, bind, port, log
        self.prefix = list(prefix)
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    def start(self) -> "HttpServer":
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            self.prefix + [sys.executable, "-m", "http.server", "--bind", self.bind,
                           "--directory", self.docroot, str(self.port)],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=owner_env(),
            start_new_session=True)
        out.close()
        return self

    def wait_ready(self, probe: Callable[[], bool]) -> None:
        end = time.monotonic() + START_TIMEOUT
        assert self.proc is not None
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("http.server exited: see %s" % self.log)
            if probe():
                return
            time.sleep(0.02)
        raise RuntimeError("http.server not ready")

    def crash_and_restart(self) -> None:
        """SIGKILL mid-transfer (connections die with it), then serve again on the port."""
        assert self.proc is not None
        _stop_process(self.proc, signal.SIGKILL)
        self.start()
        self.wait_ready(lambda: accepts(self.bind, self.port))

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM)
