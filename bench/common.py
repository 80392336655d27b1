"""Bench plumbing: nginx on loopback, generated files, a per-process measurer, stats.

Nothing here is imported by rawfetch; the bench needs only the standard library plus
nginx and (optional) a C compiler, trustme, curl, wget, requests, urllib3.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import IO, Dict, NamedTuple, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PY = os.path.realpath(sys.executable)   # the real binary: a pyenv shim is a bash script
MiB = 1 << 20
GiB = 1 << 30


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.I)
    if not m:
        raise ValueError("bad size %r (e.g. 64M, 1G)" % text)
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB}[m.group(2).upper()]


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024
    return str(n)


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Children:
    """Where measured processes get rawfetch from, and where they start. They start in
    the (empty) work dir, never in a checkout: `python -m`/`-c` put the cwd first on
    sys.path, so a checkout's rawfetch/ would shadow the tree being measured."""
    tree = REPO
    cwd = HERE


def configure_children(tree: str, cwd: str) -> None:
    _Children.tree = os.path.abspath(tree)
    _Children.cwd = cwd


def rawfetch_tree() -> str:
    """The checkout whose rawfetch/ package is measured (run.py --rawfetch-tree)."""
    return _Children.tree


def child_cwd() -> str:
    return _Children.cwd


def env_for_children() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_Children.tree, HERE])
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # peers and rawfetch both load cached .pyc
    env.pop("PYTHONTRACEMALLOC", None)
    return env


# ----------------------------------------------------------------------- data files
def make_file(path: str, size: int) -> str:
    """A file of `size` pseudo-random bytes (a 16 MiB random block, each MiB stamped with
    its index so no two MiB are equal); returns its sha256 hex."""
    block = bytearray(os.urandom(16 * MiB))
    digest = hashlib.sha256()
    with open(path, "wb", buffering=0) as f:
        done = 0
        i = 0
        while done < size:
            n = min(16 * MiB, size - done)
            for k in range(0, n, MiB):
                block[k:k + 8] = (i * 16 + k // MiB).to_bytes(8, "little")
            view = memoryview(block)[:n]
            f.write(view)
            digest.update(view)
            done += n
            i += 1
    return digest.hexdigest()


def make_sparse(path: str, size: int) -> str:
    """A sparse file of zeros (no disk use); returns its sha256 hex (computed cheaply)."""
    with open(path, "wb") as f:
        f.truncate(size)
    digest = hashlib.sha256()
    zeros = bytes(16 * MiB)
    left = size
    while left:
        n = min(len(zeros), left)
        digest.update(zeros[:n])
        left -= n
    return digest.hexdigest()


# ----------------------------------------------------------------------- nginx

NGINX_START_TIMEOUT = 10.0   # s: nginx listens within milliseconds; 10 s means it is broken
NGINX_CONF = """%(user)s
worker_processes 1;
daemon off;
pid %(w)s/nginx.pid;
error_log %(w)s/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5;
    types { }
    default_type application/octet-stream;
    client_body_temp_path %(w)s/body;
    proxy_temp_path %(w)s/proxy;
    fastcgi_temp_path %(w)s/fastcgi;
    uwsgi_temp_path %(w)s/uwsgi;
    scgi_temp_path %(w)s/scgi;
    server {
        listen 127.0.0.1:%(port)d;
        root %(root)s;
    }%(tls)s
}
"""
NGINX_TLS_SERVER = """
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s;
        ssl_certificate_key %s;
        ssl_protocols TLSv1.2 TLSv1.3;
        root %s;
    }"""

class Nginx:
    """nginx on 127.0.0.1 with a generated config: one plain and one TLS server block
    (trustme certificate), sendfile on, serving `root`. Started in the foreground as our
    child; stopped with SIGQUIT then SIGKILL."""

    def __init__(self, root: str, workdir: str, tls: bool = True) -> None:
        self.root = root
        self.workdir = workdir
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.cafile: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists(
            "/usr/sbin/nginx") else None)

    def url(self, name: str, tls: bool = False) -> str:
        if tls:
            return "https://127.0.0.1:%d/%s" % (self.tls_port, name)
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def _tls_files(self) -> Optional[Sequence[str]]:
        try:
            import trustme
        except ImportError:
            return None
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.cafile = os.path.join(self.workdir, "ca.pem")
        ca.cert_pem.write_to_path(self.cafile)
        crt = os.path.join(self.workdir, "server.pem")
        key = os.path.join(self.workdir, "server.key")
        cert.private_key_pem.write_to_path(key)
        with open(crt, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
        return crt, key

    def start(self) -> "Nginx":
        if self.binary is None:
            raise RuntimeError("nginx not found (apt-get install -y nginx-light)")
        path = self._write_conf()
        w = self.workdir
        log = open(os.path.join(w, "nginx.stderr"), "wb")
        self.proc = subprocess.Popen([self.binary, "-e", os.path.join(w, "error.log"),
                                      "-p", w, "-c", path], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + NGINX_START_TIMEOUT
        for port in filter(None, (self.port, self.tls_port)):
            self._wait_listening(port, deadline)
        return self

    def _write_conf(self) -> str:
        files = self._tls_files() if self.tls_port else None
        tls_block = ""
        if files is None:
            self.tls_port = None
        else:
            tls_block = NGINX_TLS_SERVER % (self.tls_port, files[0], files[1], self.root)
        w = self.workdir
        conf = NGINX_CONF % {"user": "user root;" if os.geteuid() == 0 else "", "w": w,
                             "port": self.port, "root": self.root, "tls": tls_block}
        path = os.path.join(w, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def _wait_listening(self, port: int, deadline: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                with open(os.path.join(self.workdir, "nginx.stderr")) as f:
                    raise RuntimeError("nginx exited: %s" % f.read()[-2000:])
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen on %d" % port) from None
                time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def version(self) -> str:
        if self.binary is None:
            return "not installed"
        out = subprocess.run([self.binary, "-v"], capture_output=True, text=True)
        return (out.stderr or out.stdout).strip().replace("nginx version: ", "")


# ----------------------------------------------------------------------- measuring
class Sample(NamedTuple):
    wall: float      # s
    cpu: float       # s, user + sys of the child (and its waited-for children)
    user: float
    sys: float
    rss: int         # KiB, peak RSS of the child
    code: int


class ClientFailed(RuntimeError):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Launcher:
    """Run a command as a whole process and measure it (see launch.c for why C)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.result = os.path.join(workdir, "launch.result")
        self.binary: Optional[str] = None
        self.note = ""
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc:
            out = os.path.join(workdir, "launch")
            r = subprocess.run([cc, "-O2", "-o", out, os.path.join(HERE, "launch.c")],
                               capture_output=True)
            if r.returncode == 0:
                self.binary = out
        if self.binary is None:
            self.note = ("no C compiler: clients spawned straight from the harness, so "
                         "peak RSS includes the harness's own high-water mark")

    def run(self, argv: Sequence[str], stdout: str = os.devnull, env: Optional[dict] = None,
            timeout: float = 300) -> Sample:
        """Run argv to completion (killed after `timeout` s); a non-zero exit raises
        ClientFailed with the tail of its stderr."""
        env = env or env_for_children()
        errpath = os.path.join(self.workdir, "client.stderr")
        with open(stdout, "wb") as out, open(errpath, "wb") as err:
            if self.binary:
                sample = self._launch(argv, out, err, env, timeout)
            else:
                sample = self._direct(argv, out, err, env)
        if sample.code != 0:
            with open(errpath, "rb") as f:
                tail = f.read()[-800:].decode("utf-8", "replace")
            raise ClientFailed("%s exited %d: %s" % (" ".join(argv[:3]), sample.code, tail),
                               sample.code)
        return sample

    def _launch(self, argv: Sequence[str], out: IO[bytes], err: IO[bytes], env: dict,
                timeout: float) -> Sample:
        assert self.binary is not None
        proc = subprocess.Popen([self.binary, self.result] + list(argv), stdout=out,
                                stderr=err, env=env, start_new_session=True,
                                stdin=subprocess.DEVNULL, cwd=child_cwd())
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # our own process group only
            proc.wait()
            raise ClientFailed("%s timed out after %ss" % (" ".join(argv[:3]), timeout),
                               -9) from None
        if proc.returncode:
            raise RuntimeError("launcher failed (%d)" % proc.returncode)
        with open(self.result) as f:
            wall, ut, st, rss, code = (int(x) for x in f.read().split())
        return Sample(wall / 1e6, (ut + st) / 1e6, ut / 1e6, st / 1e6, rss, code)

    @staticmethod
    def _direct(argv: Sequence[str], out: IO[bytes], err: IO[bytes], env: dict) -> Sample:
        """No C compiler: spawn from here (peak RSS then includes the harness's own)."""
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=err, env=env,
                                stdin=subprocess.DEVNULL, cwd=child_cwd())
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        return Sample(wall, ru.ru_utime + ru.ru_stime, ru.ru_utime, ru.ru_stime,
                      ru.ru_maxrss, proc.returncode)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def drop_file(path: str) -> None:
    for p in (path, path + ".part", path + ".part.json"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


# ----------------------------------------------------------------------- machine facts
def machine_facts() -> Dict[str, str]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        found = [fl for fl in ("sha_ni", "avx2", "aes") if re.search(r"\b%s\b" % fl, text)]
        flags = " ".join(found)
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = human(int(f.readline().split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return {"nproc": str(os.cpu_count()), "cpu": model, "cpu flags": flags, "memory": mem,
            "kernel": platform.release(), "python": "%s (%s)" % (platform.python_version(), PY)}


def tool_version(argv: Sequence[str], pattern: str = r"[\d.]+") -> str:
    if not shutil.which(argv[0]):
        return "not installed"
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).splitlines()
    first = text[0] if text else ""
    m = re.search(pattern, first)
    return m.group(0) if m else first.strip()


def module_version(name: str) -> Optional[str]:
    r = subprocess.run([PY, "-c", "import %s as m; print(m.__version__)" % name],
                       capture_output=True, text=True, env=env_for_children(),
                       cwd=child_cwd())
    return r.stdout.strip() if r.returncode == 0 else None


def tmpdir_on_tmp(prefix: str = "rawfetch-bench-") -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=tempfile.gettempdir())
