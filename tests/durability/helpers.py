"""Run the real rawfetch command in its own process and look at what it leaves on disk.

Every durability test kills or races real processes: no mocks. The command runs with
PYTHONDONTWRITEBYTECODE so Python itself makes no rename/unlink calls that would shift
the count of a crash point.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = ("--retry-delay", "0.01", "--retry-max-delay", "0.05", "--idle-timeout", "3",
         "--connect-timeout", "3", "-q")
RUN_TIMEOUT = 60          # one command; any hang fails the test long before pytest's 120 s
KILLED = (-9, 137)        # SIGKILL as subprocess reports it, directly or through strace


def env() -> Dict[str, str]:
    out = dict(os.environ, PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")
    out.pop("RAWFETCH_DEBUG", None)
    return out


def command(url: str, out: str, *extra: str) -> List[str]:
    return [sys.executable, "-m", "rawfetch", url, "-o", out] + list(QUICK) + list(extra)


def run(url: str, out: str, *extra: str, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(list(prefix) + command(url, out, *extra), env=env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=RUN_TIMEOUT, universal_newlines=True)


def start(url: str, out: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(command(url, out, *extra), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def wait_for_bytes(path: str, at_least: int, timeout: float = 10.0) -> None:
    """Until a running job's `path` (its .part) holds `at_least` bytes: a moment mid-transfer
    to signal it or to start a second writer; AssertionError after `timeout` seconds."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        if os.path.exists(path) and os.path.getsize(path) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError("%s never reached %d bytes" % (path, at_least))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        return sha(handle.read())


def listing(directory: str) -> List[str]:
    return sorted(os.listdir(directory))


def events(log: str, name: Optional[str] = None) -> List[Dict[str, Any]]:
    if not os.path.exists(log):
        return []
    with open(log) as handle:
        found = [json.loads(line) for line in handle if line.strip()]
    return [e for e in found if name is None or e["event"] == name]


def assert_nothing_false(out: str, body: bytes) -> None:
    """After any crash: PATH is absent or exactly the body, and the sidecar claims only
    bytes the .part really holds, and they are the body's."""
    if os.path.exists(out):
        assert digest(out) == sha(body), "a wrong final file was kept"
    part, side = out + ".part", out + ".part.json"
    if not os.path.exists(side) or not os.path.exists(part):
        return
    with open(side) as handle:
        claim = json.load(handle)    # renamed into place whole: never half-written
    with open(part, "rb") as handle:
        held = handle.read()
    verified = claim["verified"]
    assert verified <= len(held), "sidecar claims %d, .part holds %d" % (verified, len(held))
    assert held[:verified] == body[:verified], "the verified bytes are not the body's"


def need(tool: str) -> str:
    from shutil import which
    found = which(tool)
    if not found:
        pytest.skip("%s is not installed (apt-get install %s; .ci/run does)" % (tool, tool))
    return found
