"""The `rawfetch` command as a user runs it: exit codes, one-line errors, stdout mode."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from tests.faultserver import actions as A
from tests.inprocess import run_cli
from tests.timing_options import QUICK_ARGV, STEP, TICK

# The command runs in-process (tests/inprocess.py); tests with a stall or a timeout take
# the `vclock` fixture, so those take virtual seconds. spawn() runs on the real clock.
pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def spawn(*args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
    """`python -m rawfetch ARGS` as a real child process."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "rawfetch", *args], stdout=stdout,
                          stderr=subprocess.PIPE, env=env, timeout=50)


# The same command in this process (tests/inprocess.py): same entry point, exit code and
# output bytes, on the test's clock. spawn() keeps the checks of the process itself.
run = run_cli


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("rawfetch: error"), err
    return err


def test_download_through_faults_prints_verified_digest(vclock, server, body, tmp_path):
    server.script([A.rst(at=100000), A.stall(at=1000), A.normal()])
    digest = hashlib.sha256(body).hexdigest()
    out = tmp_path / "img"
    proc = run(server.url("/img"), "-o", str(out), "--sha256", digest, *QUICK_ARGV,
               "--idle-timeout", "0.3")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == body
    assert ("sha256:" + digest) in proc.stderr.decode()


def test_stdout_through_faults_has_no_duplicated_bytes(server, body):
    server.script([A.fin(at=70000), A.rst(at=90000), A.normal(ignore_range=True)])
    proc = spawn(server.url("/img"), "-o", "-", "-q", *QUICK_ARGV)   # a real pipe on fd 1
    assert proc.returncode == 0 and proc.stdout == body


@pytest.mark.parametrize("action,code", [
    (A.status(404), 22), (A.fin(at=10), 18), (A.redirect(302, "/img"), 47),
    (A.raw(b"garbage\r\n\r\n"), 8), (A.stall(at=10), 28)])
def test_exit_codes_follow_curl(vclock, server, tmp_path, action, code):
    server.script([action])
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--retries", "1",
               "--max-redirs", "2", "--idle-timeout", "0.2", "--retry-delay", "0.01")
    assert proc.returncode == code
    assert server.url("/img") in one_line_error(proc)
    assert not (tmp_path / "img").exists()


def test_connect_refused_exit_7_and_dns_exit_6(vclock, tmp_path):
    log = tmp_path / "events.jsonl"
    proc = run("http://no-such-host.invalid/x", "-o", str(tmp_path / "x"), "--retries", "5",
               "--log-json", str(log))
    assert proc.returncode == 6 and "hint" in one_line_error(proc)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    failures = [e for e in events if e["event"] == "error"]
    assert len(failures) == 1 and not failures[0]["retryable"]   # NXDOMAIN burns no retries
    assert not any(e["event"] == "backoff" for e in events)
    proc = run("http://127.0.0.1:9/x", "-o", str(tmp_path / "x"), "--retries", "1",
               "--retry-delay", "0.01")
    assert proc.returncode == 7


def test_checksum_mismatch_exit_90(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--md5", "0" * 32)
    assert proc.returncode == 90 and not (tmp_path / "img").exists()
    one_line_error(proc)


def test_certificate_error_exit_60(make_server, tmp_path, body):
    srv = make_server(tls="ok")
    srv.add("/img", body)
    proc = run(srv.url("/img"), "-o", str(tmp_path / "img"))
    assert proc.returncode == 60
    proc = run(srv.url("/img"), "-o", str(tmp_path / "img"), "--cacert", srv.ca_path)
    assert proc.returncode == 0 and (tmp_path / "img").read_bytes() == body


def test_usage_errors_exit_2(tmp_path):
    assert run("http://x/").returncode == 2
    assert run("http://x/", "-o", "f", "--idle-timeout", "soon").returncode == 2
    assert run("http://x/", "-o", "f", "--retries", "-1").returncode == 2


def test_invalid_url_and_header_exit_3_without_connecting(server, tmp_path):
    proc = run("ftp://x/y", "-o", str(tmp_path / "x"))
    assert proc.returncode == 3
    proc = run(server.url("/img"), "-o", str(tmp_path / "x"), "-H", "X-A: b\x01c")
    assert proc.returncode == 3 and server.connection_count == 0


def test_headers_resolve_and_fractional_seconds(server, body, tmp_path):
    url = "http://img.test:%d/img" % server.port
    proc = run(url, "-o", str(tmp_path / "img"), "-H", "X-Agent: node-7",
               "--resolve", "img.test:%d:127.0.0.1" % server.port, "--connect-timeout", "0.5",
               "--max-time", "20.5")
    assert proc.returncode == 0, proc.stderr
    seen = server.requests[0].headers
    assert seen["x-agent"] == "node-7" and seen["host"] == "img.test:%d" % server.port


def test_max_time_bounds_the_command(vclock, server, tmp_path):
    server.script([A.stall(at=1000)])
    idle = 30.0   # what would end the stall without max_time (also exit 28)
    watch = vclock.stopwatch()
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--max-time", "1",
               "--idle-timeout", str(idle), "--speed-limit", "0")
    elapsed = watch.stop()   # max_time, not the idle timeout (also exit 28)
    assert proc.returncode == 28 and 1.0 - TICK <= elapsed < 1.0 + STEP < idle
    assert "max_time" in one_line_error(proc)


def test_write_error_to_full_device_exit_23(server):
    with open("/dev/full", "wb") as full:
        proc = run(server.url("/img"), "-o", "-", stdout=full)
    assert proc.returncode == 23
    one_line_error(proc)


def test_progress_line_when_asked(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "--progress")
    err = proc.stderr.decode()
    assert proc.returncode == 0 and "attempt 1" in err and "saved" in err


def test_quiet_prints_nothing_on_success(server, tmp_path):
    proc = run(server.url("/img"), "-o", str(tmp_path / "img"), "-q")
    assert proc.returncode == 0 and proc.stderr == b""
