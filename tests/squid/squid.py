"""Start and stop a real squid with a generated config; read its access log.

Why this shape (copied from the nginx tier): every path squid writes (pid, logs, cache
state) lives in one temp dir of ours, the process is marked with our pid (a later run
kills it if we die: tests.realnet.netns.kill_orphans), runs in its own process group
(`squid -N`, its auth helpers with it) and is stopped by pid, SIGKILL as a last resort.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional

from tests.realnet.netns import owner_env
from tests.realnet.servers import _stop_process, accepts, free_port

START_TIMEOUT = 15.0     # s; squid parses its config and binds within a second or two
LOG_SETTLE = 5.0         # s; squid writes an access-log line when a transaction ends
NCSA_HELPERS = ("/usr/lib/squid/basic_ncsa_auth", "/usr/lib/squid3/basic_ncsa_auth")
CACHE_USER = "proxy"     # Debian's squid user; squid refuses to keep running as root

# Settings that make a 64 MiB object cacheable in memory and let one origin fetch serve
# every client that asks for it meanwhile (README "Operations notes" quotes them).
CACHE_SETTINGS = """\
cache_mem 256 MB
maximum_object_size_in_memory 128 MB
maximum_object_size 128 MB
collapsed_forwarding {collapse}
refresh_pattern . 60 50% 1440
"""

SQUID_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
access_log stdio:{dir}/access.log squid
cache_store_log none
coredump_dir {dir}
{user}
visible_hostname rawfetch-test
shutdown_lifetime 0 seconds
pinger_enable off
netdb_filename none
icp_port 0
htcp_port 0
logfile_rotate 0
{cache}
{auth}
acl loopback src 127.0.0.1/32 ::1
{access}
http_access deny all
"""

AUTH = """\
auth_param basic program {helper} {dir}/htpasswd
auth_param basic realm rawfetch-test
auth_param basic children 2
acl authenticated proxy_auth REQUIRED
"""


@dataclass
class LogLine:
    """One access-log line (squid's native format)."""
    code: str        # e.g. TCP_MISS/200
    size: int        # bytes sent to the client
    method: str
    url: str
    user: str

    @property
    def status(self) -> int:
        return int(self.code.rpartition("/")[2])


def find_squid() -> Optional[str]:
    return shutil.which("squid") or next(
        (p for p in ("/usr/sbin/squid", "/usr/local/sbin/squid") if os.access(p, os.X_OK)),
        None)


def ncsa_helper() -> Optional[str]:
    return next((p for p in NCSA_HELPERS if os.access(p, os.X_OK)), None)


def missing_requirements() -> Optional[str]:
    """Why the squid tier cannot run here, or None."""
    if find_squid() is None:
        return "the squid tier needs squid (apt-get install squid)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(CACHE_USER)
        except KeyError:
            return "squid as root needs the %r user (Debian's squid package)" % CACHE_USER
    return None


def htpasswd_line(user: str, password: str) -> str:
    """An htpasswd line basic_ncsa_auth accepts (apr1 MD5 crypt via openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("openssl is needed to write the htpasswd file")
    hashed = subprocess.run([openssl, "passwd", "-apr1", password], stdout=subprocess.PIPE,
                            check=True, timeout=10).stdout.decode().strip()
    return "%s:%s\n" % (user, hashed)


class Squid:
    """`squid -N -f <generated conf>` on 127.0.0.1 at a free port."""

    def __init__(self, users: Optional[dict] = None, cache: bool = True,
                 collapse: bool = True) -> None:
        self.users = users            # {"user": "password"} -> Basic auth required
        self.cache = cache
        self.collapse = collapse      # collapsed_forwarding (off only to show its effect)
        self.workdir = tempfile.mkdtemp(prefix="rfsquid%d-" % os.getpid())
        self.port = 0
        self.proc: Optional["subprocess.Popen[bytes]"] = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def _config(self) -> str:
        auth = access = ""
        if self.users:
            helper = ncsa_helper()
            if helper is None:
                raise RuntimeError("basic_ncsa_auth not found in %s" % (NCSA_HELPERS,))
            with open(os.path.join(self.workdir, "htpasswd"), "w") as handle:
                handle.writelines(htpasswd_line(u, p) for u, p in self.users.items())
            auth = AUTH.format(helper=helper, dir=self.workdir)
            access = "http_access allow loopback authenticated"
        else:
            access = "http_access allow loopback"
        user = "cache_effective_user %s" % CACHE_USER if os.geteuid() == 0 else ""
        return SQUID_CONF.format(port=self.port, dir=self.workdir, user=user, auth=auth,
                                 access=access, cache=CACHE_SETTINGS.format(
                                     collapse="on" if self.collapse else "off")
                                 if self.cache else "cache deny all")

    def start(self) -> "Squid":
        """Start on a free port (retried if another process took it meanwhile)."""
        for _ in range(5):
            self.port = free_port()
            conf = os.path.join(self.workdir, "squid.conf")
            with open(conf, "w") as handle:
                handle.write(self._config())
            self._own_workdir()
            log = open(os.path.join(self.workdir, "stderr.log"), "ab")
            self.proc = subprocess.Popen([find_squid() or "squid", "-N", "-f", conf],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         env=owner_env(), start_new_session=True)
            log.close()
            if self._wait_ready():
                return self
            self.stop(remove=False)
        raise RuntimeError("squid did not start: %s" % self.error_log())

    def _own_workdir(self) -> None:
        """Squid drops to CACHE_USER when started as root: it must write its logs here."""
        os.chmod(self.workdir, 0o755)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(CACHE_USER)
            for root, _dirs, files in os.walk(self.workdir):
                os.chown(root, entry.pw_uid, entry.pw_gid)
                for name in files:
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                return False
            if accepts("127.0.0.1", self.port) and "Accepting HTTP" in self.error_log():
                return True
            time.sleep(0.05)
        return False

    def error_log(self) -> str:
        text = ""
        for name in ("stderr.log", "cache.log"):
            try:
                with open(os.path.join(self.workdir, name)) as handle:
                    text += handle.read()[-3000:]
            except OSError:
                pass
        return text

    def access_log(self, expect: int = 0) -> List[LogLine]:
        """Parsed access log; with `expect`, wait up to LOG_SETTLE for that many lines."""
        end = time.monotonic() + (LOG_SETTLE if expect else 0)
        while True:
            lines = self._read_log()
            if len(lines) >= expect or time.monotonic() >= end:
                return lines
            time.sleep(0.05)

    def _read_log(self) -> List[LogLine]:
        try:
            with open(os.path.join(self.workdir, "access.log")) as handle:
                rows = [line.split() for line in handle if line.strip()]
        except OSError:
            return []
        # "error:transaction-end-before-headers" lines are readiness probes (connect+close)
        return [LogLine(r[3], int(r[4]), r[5], r[6], r[7]) for r in rows
                if len(r) >= 8 and not r[6].startswith("error:")]

    def stop(self, remove: bool = True) -> None:
        if self.proc is not None:
            _stop_process(self.proc, signal.SIGTERM)
            self.proc = None
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "Squid":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
