"""fuel-agent 11.0.0 installed from PyPI into a venv, and the scenarios run through its own
code (tests/agents/fuel_drive.py in a subprocess of the venv's python) against the in-repo
fault server: shared by tests/agents/test_fuel.py and tests/agents/fuel_table.py.

Every scenario states what a demanding operator expects of fuel-agent + rawfetch: the
bytes on the target (by sha256), the exception class fuel-agent's caller sees, the
requests the server saw, and time bounds derived from the configured timeouts.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.faultserver import FaultServer, actions as A, make_body

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DRIVER = os.path.join(ROOT, "tests", "agents", "fuel_drive.py")
FUEL_AGENT = "fuel-agent==11.0.0"
# The operator's one-line switch, word for word as docs/fuel.md gives it (a test checks).
ADOPTION_LINE = "from rawfetch.compat.fuel import HttpUrl, GunzipStream  # noqa"
PIP_TIMEOUT = 300          # s; a cold install took ~10 s here, a slow mirror gets 30x
RUN_CAP = 60.0             # s; one scenario's subprocess (stock runs may be unbounded)
PYPI_DOWN_MARKERS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in "
                     "name resolution", "Network is unreachable", "No matching distribution",
                     "Could not fetch URL", "ConnectTimeoutError")

IMAGE = make_body(2 << 20, seed=19)
NEW_IMAGE = make_body(2 << 20, seed=20)     # the image after a replace on the server
GZ = gzip.compress(IMAGE, compresslevel=1)
GZ_TRUNCATED = GZ[:len(GZ) - 4096]          # cut inside the deflate data, trailer gone
CUT = 700_000                               # where a connection breaks mid-body
QUICK_CONF = {"http_request_timeout": 2.0, "http_max_retries": 3, "http_retry_delay": 0.2}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the venv
class Unavailable(Exception):
    """fuel-agent cannot be installed here for a reason that is not the code's fault."""


def build_venv(where: str) -> str:
    """A venv under `where` with fuel-agent 11.0.0 from PyPI; returns its python.
    Raises Unavailable when PyPI cannot be reached."""
    base = shutil.which("python3.11") or sys.executable
    venv = os.path.join(where, "fuel-venv")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        subprocess.run([base, "-m", "venv", venv], check=True, timeout=120)
    proc = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           FUEL_AGENT], capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        if any(marker in proc.stderr for marker in PYPI_DOWN_MARKERS):
            raise Unavailable("PyPI unreachable, %s not installed: %s"
                              % (FUEL_AGENT, " | ".join(tail)))
        raise RuntimeError("pip install %s failed: %s" % (FUEL_AGENT, "\n".join(tail)))
    check = subprocess.run([python, "-c", "import fuel_agent.manager"], capture_output=True,
                           text=True, timeout=60)
    if check.returncode != 0:
        raise RuntimeError("fuel-agent does not import: %s" % check.stderr[-400:])
    return python


@pytest.fixture(scope="session")
def fuel_python(tmp_path_factory: Any) -> str:
    """The fuel-agent venv's python, built once per pytest session."""
    try:
        return build_venv(str(tmp_path_factory.mktemp("fuel-agent")))
    except Unavailable as exc:
        pytest.skip(str(exc))


# ------------------------------------------------------------- block devices
def _losetup(backing: str) -> str:
    return subprocess.run(["losetup", "-f", "--show", backing], check=True,
                          capture_output=True, text=True, timeout=30).stdout.strip()


def _detach(device: str) -> None:
    subprocess.run(["losetup", "-d", device], capture_output=True, timeout=30)


def _need_root_losetup() -> None:
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("loop devices need root and losetup")


@pytest.fixture(scope="session")
def loop_device(tmp_path_factory: Any) -> Iterator[str]:
    """An 8 MiB loop device (fuel-agent's do_copyimage writes only to block devices)."""
    _need_root_losetup()
    backing = str(tmp_path_factory.mktemp("fuel-loop") / "disk")
    with open(backing, "wb") as handle:
        handle.truncate(8 << 20)
    device = _losetup(backing)
    yield device
    _detach(device)


def failing_device(where: str) -> str:
    """A loop device whose backing file lives on a 1 MiB tmpfs: buffered writes succeed,
    writeback past 1 MiB fails (ENOSPC in the backing store), so fsync answers EIO, as a
    dying disk does. The tmpfs is mounted in a private mount namespace that ends at once;
    the loop device keeps it alive until detached."""
    script = ("mount -t tmpfs -o size=1m fuelEIO {d} && truncate -s 8M {d}/back && "
              "losetup -f --show {d}/back").format(d=where)
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        pytest.skip("cannot build a loop device on a full tmpfs: %s" % proc.stderr.strip())
    return proc.stdout.strip()


@pytest.fixture
def eio_device(tmp_path: Any) -> Iterator[str]:
    _need_root_losetup()
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed for a private tmpfs")
    device = failing_device(str(tmp_path))
    yield device
    _detach(device)


def zero_device(device: str) -> None:
    """A previous scenario's image must not make a short write look complete."""
    with open(device, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(0)
        block = bytes(1 << 20)
        for _ in range(size // len(block)):
            handle.write(block)
        handle.flush()
        os.fsync(handle.fileno())


# ----------------------------------------------------------------- scenarios
@dataclass(frozen=True)
class Scenario:
    """One fault, and what fuel-agent + rawfetch must make of it."""

    name: str
    script: Callable[[], List[Any]]      # the server's actions, connection by connection
    served: bytes = IMAGE                 # what the server holds at /img
    container: str = "raw"                # fuel-agent's image.container
    conf: Dict[str, Any] = field(default_factory=lambda: dict(QUICK_CONF))
    md5: Optional[str] = None             # image.md5 (of the raw image), with image.size
    stop_server_after: Optional[float] = None   # s after the first request: server down
    want_bytes: Optional[bytes] = IMAGE   # what the target must hold (None: anything)
    want_error: Optional[str] = None      # fuel-agent's class name the caller must see
    want_requests: Tuple[int, int] = (1, 1)   # inclusive bounds on requests seen
    want_seconds: Tuple[float, float] = (0.0, 20.0)
    check_ranges: bool = False            # every retry after the first resumes with Range


MD5 = hashlib.md5(IMAGE).hexdigest()
SCENARIOS: List[Scenario] = [
    Scenario("clean", lambda: [A.normal()]),
    Scenario("FIN mid-body", lambda: [A.fin(at=CUT), A.normal()], want_requests=(2, 2),
             check_ranges=True),
    Scenario("RST mid-body", lambda: [A.rst(at=CUT), A.normal()], want_requests=(2, 2),
             check_ranges=True),
    Scenario("stall, http_request_timeout=3", lambda: [A.stall(at=CUT), A.normal()],
             conf=dict(QUICK_CONF, http_request_timeout=3.0), want_requests=(2, 2),
             want_seconds=(3.0, 8.0), check_ranges=True),
    Scenario("trickle 2 B/s, http_request_timeout=1",
             lambda: [A.trickle(at=CUT, gap=0.5, step=1), A.normal()],
             conf=dict(QUICK_CONF, http_request_timeout=1.0), want_requests=(2, 2),
             want_seconds=(2.0, 12.0), check_ranges=True),
    Scenario("503 + Retry-After: 2", lambda: [A.status(503, {"Retry-After": "2"}), A.normal()],
             want_requests=(2, 2), want_seconds=(2.0, 10.0)),
    Scenario("404", lambda: [A.status(404)], want_bytes=None,
             want_error="HttpUrlConnectionError"),
    Scenario("md5 right", lambda: [A.normal()], md5=MD5),
    Scenario("md5 wrong", lambda: [A.normal()], md5="0" * 32, want_bytes=None,
             want_error="ImageChecksumMismatchError"),
    Scenario("Range ignored (200 full body)",
             lambda: [A.fin(at=CUT), A.normal(ignore_range=True)], want_requests=(2, 2)),
    Scenario("image replaced between attempts",
             lambda: [A.fin(at=CUT), A.replace(NEW_IMAGE, then=A.normal())],
             want_bytes=NEW_IMAGE, want_requests=(2, 3)),
    Scenario("server down mid-body, http_max_retries=3",
             lambda: [A.stall(at=CUT)], stop_server_after=0.5, want_bytes=None,
             want_error="HttpUrlConnectionError", want_seconds=(0.0, 15.0)),
    Scenario("RST at every byte 0, http_max_retries=3", lambda: [A.rst(at=0)],
             want_bytes=None, want_error="HttpUrlConnectionError", want_requests=(4, 4)),
    Scenario("http_max_retries=0 (for ever), 5 x 503",
             lambda: [A.status(503)] * 5 + [A.normal()],
             conf=dict(QUICK_CONF, http_max_retries=0), want_requests=(6, 6)),
    Scenario("gzip", lambda: [A.normal()], served=GZ, container="gzip"),
    Scenario("gzip, FIN mid-body", lambda: [A.fin(at=CUT), A.normal()], served=GZ,
             container="gzip", want_requests=(2, 2), check_ranges=True),
    Scenario("gzip truncated", lambda: [A.normal()], served=GZ_TRUNCATED, container="gzip",
             want_bytes=None, want_error="WrongImageDataError"),
]
BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
# Every scenario runs again through Manager.do_copyimage() onto a loop device (root).
ON_LOOP_DEVICE = tuple(BY_NAME)


# ------------------------------------------------------------------- running
@dataclass
class Outcome:
    """What one run showed: fuel_drive's JSON plus the requests the server saw."""

    result: Dict[str, Any]
    requests: List[Any]
    capped: Optional[float] = None    # the cap (s) when the run had to be killed

    @property
    def error_class(self) -> Optional[str]:
        error = self.result.get("error")
        return error.rsplit(".", 1)[-1] if error else None


def run(python: str, scenario: Scenario, mode: str, target: str, via: str = "chain",
        cap: float = RUN_CAP) -> Outcome:
    """Serve the scenario, run fuel_drive.py in the venv, return what happened."""
    with FaultServer() as server:
        server.add("/img", scenario.served, etag='"v1"')
        server.script(scenario.script())
        stopper = _stop_later(server, scenario.stop_server_after)
        spec = {"mode": mode, "rawfetch_path": ROOT, "adoption": ADOPTION_LINE,
                "conf": scenario.conf, "uri": server.url("/img"), "target": target,
                "container": scenario.container, "via": via,
                "size": len(IMAGE) if scenario.md5 else None, "md5": scenario.md5,
                "expect_len": len(scenario.want_bytes or IMAGE)}
        env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
        try:
            proc = subprocess.run([python, DRIVER, json.dumps(spec)], capture_output=True,
                                  text=True, timeout=cap, env=env)
        except subprocess.TimeoutExpired:
            return Outcome({"error": None, "elapsed": cap}, list(server.requests), cap)
        finally:
            if stopper is not None:
                stopper.join()
        if proc.returncode != 0 or not proc.stdout.strip():
            raise RuntimeError("fuel_drive failed (%d): %s" % (proc.returncode,
                                                               proc.stderr[-2000:]))
        return Outcome(json.loads(proc.stdout.strip().splitlines()[-1]),
                       list(server.requests))


def _stop_later(server: FaultServer, after: Optional[float]) -> Optional[threading.Thread]:
    if after is None:
        return None

    def stop() -> None:
        if server.wait_requests(1, timeout=30):
            threading.Event().wait(after)
        server.stop()

    thread = threading.Thread(target=stop, daemon=True)
    thread.start()
    return thread


def problems(scenario: Scenario, outcome: Outcome) -> List[str]:
    """Every way `outcome` misses what the scenario demands ([] = all met)."""
    found: List[str] = []
    result = outcome.result
    if outcome.capped:
        return ["no result within %d s (unbounded)" % outcome.capped]
    if outcome.error_class != scenario.want_error:
        found.append("error %s, wanted %s (%s)" % (outcome.error_class or "none",
                                                   scenario.want_error or "none",
                                                   (result.get("message") or "")[:160]))
    if scenario.want_bytes is not None and result["digest"] != sha256(scenario.want_bytes):
        found.append("wrong bytes on the target")
    low, high = scenario.want_requests
    if not low <= len(outcome.requests) <= high:
        found.append("%d requests, wanted %d..%d" % (len(outcome.requests), low, high))
    if scenario.check_ranges and any(r.range is None for r in outcome.requests[1:]):
        found.append("a retry did not resume with Range")
    earliest, latest = scenario.want_seconds
    if not earliest <= result["elapsed"] <= latest:
        found.append("took %.1f s, wanted %.1f..%.1f" % (result["elapsed"], earliest, latest))
    return found


def temporary_target(directory: Optional[str] = None) -> str:
    return os.path.join(directory or tempfile.mkdtemp(prefix="fuel-target-"), "disk.img")
