"""Run a download command (rawfetch, curl, wget) in a namespace under a fault schedule.

Why: the tests and tools/peers.py measure the same thing the same way: exit code, wall
time, and whether the bytes on disk are exactly the server's, with a hard timeout on every
process so that a hung client is reported, never waited for.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from tests.realnet.netns import PORT, SERVER_ADDRS, Schedule, owner_env
from tests.realnet.servers import ROOT, sha256_file

MiB = 1 << 20
RAWFETCH = [sys.executable, "-m", "rawfetch"]
LOGCLI = [sys.executable, "-m", "tests.realnet.logcli"]   # same CLI, events on stderr
EVENT_RE = re.compile(r"^event: (\w+) ?(.*)$", re.M)


def client_env() -> Dict[str, str]:
    """The repo on PYTHONPATH (the command runs from this checkout), owner-marked."""
    return owner_env(dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1"))


@dataclass
class Outcome:
    """What one client run did: exit code (None = killed at the timeout), time, bytes."""

    returncode: Optional[int]
    elapsed: float
    stderr: str
    sha256: Optional[str]
    faults: str = ""
    events: List[Dict[str, str]] = field(default_factory=list)

    def errors(self) -> List[str]:
        """Error classes of every failed attempt, in order (from the event log)."""
        return [e.get("error", "") for e in self.events if e["event"] == "error"]

    def named(self, name: str) -> List[Dict[str, str]]:
        return [e for e in self.events if e["event"] == name]

    def explain(self) -> str:
        return "rc=%s in %.2fs; faults: %s; errors: %s; stderr tail: %s" % (
            self.returncode, self.elapsed, self.faults, self.errors(), self.stderr[-600:])


def parse_events(stderr: str) -> List[Dict[str, str]]:
    """`event: NAME k=v k=v` lines (values may hold spaces: split on ` key=`)."""
    events = []
    for name, rest in EVENT_RE.findall(stderr):
        event = {"event": name}
        for part in re.split(r" (?=\w+=)", rest):
            key, _, value = part.partition("=")
            if key:
                event[key] = value
        events.append(event)
    return events


def file_progress(path: str) -> Callable[[], int]:
    """Bytes written so far by a client writing `path` (its .part, or a partial file)."""
    def probe() -> int:
        for candidate in (path + ".part", path):
            try:
                return os.stat(candidate).st_size
            except OSError:
                continue
        return 0
    return probe


def run_client(argv: Sequence[str], timeout: float, prefix: Sequence[str] = (),
               output: Optional[str] = None, schedule: Optional[Schedule] = None,
               stdout: Optional[int] = None, cwd: Optional[str] = None) -> Outcome:
    """Run argv (inside `prefix`, e.g. ip netns exec), faults alongside, killed at timeout."""
    with tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(list(prefix) + list(argv), stdout=stdout or subprocess.DEVNULL,
                                stderr=err, stdin=subprocess.DEVNULL, env=client_env(),
                                cwd=cwd, start_new_session=True)
        try:
            if schedule is not None:
                schedule.start()
            returncode = wait_or_kill(proc, timeout)
            elapsed = time.monotonic() - started
        finally:  # also when the test itself is interrupted (pytest-timeout, Ctrl-C)
            if proc.poll() is None:
                wait_or_kill(proc, 0)
            if schedule is not None:
                schedule.stop()
        err.seek(0)
        text = err.read().decode(errors="replace")
    sha = sha256_file(output) if output and os.path.isfile(output) else None
    return Outcome(returncode, elapsed, text, sha,
                   schedule.describe() if schedule else "", parse_events(text))


def wait_or_kill(proc: "subprocess.Popen[bytes]", timeout: float) -> Optional[int]:
    """The exit code, or None after SIGKILLing the process group at `timeout`."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        return None


def rawfetch_argv(url: str, output: str, *flags: str, events: bool = True) -> List[str]:
    """The rawfetch command line (with the event log when `events`)."""
    return (LOGCLI if events else RAWFETCH) + [url, "-o", output] + list(flags)


# Flags shared by the fault tests: fail fast enough for a fault to be seen within seconds.
FAST = ["--idle-timeout", "1", "--connect-timeout", "1", "--retry-delay", "0.1",
        "--retry-max-delay", "0.5", "--retries", "20"]


def ns_url(name: str, addr: str = SERVER_ADDRS[0], rate: str = "", host: str = "") -> str:
    """URL of a payload on the namespace nginx (paced with nginx limit_rate via ?rate=)."""
    return "http://%s:%d/%s%s" % (host or addr, PORT, name, "?rate=" + rate if rate else "")
