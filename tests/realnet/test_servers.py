"""Real servers on loopback: nginx (Range, ETag, If-Range) and http.server (ignores Range).

Why: the resume rules were written against the in-repo fault server; here the other side
is what production runs. Mid-transfer failures come from the servers themselves: an nginx
worker SIGKILLed (its master respawns one) or http.server killed and restarted, while the
client is paced by its own progress callback so that the crash lands mid-body.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Any, Callable, Dict, List

import pytest

import rawfetch
from tests.realnet.harness import MiB, RAWFETCH, client_env, run_client
from tests.realnet.servers import HttpServer, accepts, free_port, replace_file, \
    sha256_file, write_payload

pytestmark = [pytest.mark.realnet, pytest.mark.timeout(60)]
OPTS: Dict[str, Any] = dict(retry_delay=0.05, retry_max_delay=0.2, idle_timeout=5,
                            max_time=45)
CRASH_AT = 16 * MiB


def crash_once(action: Callable[[], None], at: int = CRASH_AT) -> Callable[[Any], None]:
    """A progress callback: pace the client (~200 MiB/s) and run `action` once at `at`."""
    state: List[int] = []

    def progress(stream: Any) -> None:
        time.sleep(0.005)
        if not state and stream.offset >= at:
            state.append(stream.offset)
            action()
    return progress


def test_nginx_command_download_is_byte_exact(lo_nginx, payloads, tmp_path):
    """The real command against nginx (sendfile): one 200, exact bytes, within 20 s."""
    server, base = lo_nginx
    out = str(tmp_path / "img")
    result = run_client(RAWFETCH + [base + "/img128", "-o", out, "-q"], timeout=20, output=out)
    assert result.returncode == 0, result.explain()
    assert result.sha256 == payloads.sha["img128"] and result.elapsed < 20
    assert [r["status"] for r in server.access_log()] == ["200"]


def test_nginx_worker_crash_resumes_with_if_range(lo_nginx, payloads, tmp_path):
    """A worker killed mid-body: the next request is Range + If-Range(ETag), nginx 206.
    Bound: 15 s."""
    server, base = lo_nginx
    events: List[dict] = []
    result = rawfetch.download(base + "/img64", str(tmp_path / "img"), on_event=events.append,
                               progress=crash_once(server.kill_workers), **OPTS)
    assert sha256_file(str(tmp_path / "img")) == payloads.sha["img64"]
    assert result.attempts == 2 and result.restarts == 0 and result.elapsed < 15
    resumed = [e for e in events if e["event"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["offset"] >= CRASH_AT
    last = server.access_log()[-1]
    assert last["status"] == "206" and last["range"] == "bytes=%d-" % resumed[0]["offset"]
    assert last["if_range"].startswith('"') and last["if_range"] != "-"


def test_http_server_crash_resume_skips_prefix(payloads, tmp_path):
    """http.server ignores Range: the retry gets 200 + same Last-Modified, the held prefix
    is read and discarded (README: skip-prefix), the file is still exact. Bound: 15 s."""
    port = free_port()
    server = HttpServer(payloads.directory, "127.0.0.1", port, str(tmp_path / "http.log"))
    try:
        server.start().wait_ready(lambda: accepts("127.0.0.1", port))
        events: List[dict] = []
        url = "http://127.0.0.1:%d/img64" % port
        result = rawfetch.download(url, str(tmp_path / "img"), on_event=events.append,
                                   progress=crash_once(server.crash_and_restart), **OPTS)
    finally:
        server.stop()
    assert sha256_file(str(tmp_path / "img")) == payloads.sha["img64"]
    resumed = [e for e in events if e["event"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["skipped"] == resumed[0]["offset"] >= CRASH_AT
    statuses = [e["status"] for e in events if e["event"] == "response"]
    assert statuses[-1] == 200 and result.restarts == 0 and result.elapsed < 15


def test_http_server_command_download(payloads, tmp_path):
    """HTTP/1.0 with Last-Modified and no ETag: the command gets exact bytes. Bound: 20 s."""
    port = free_port()
    server = HttpServer(payloads.directory, "127.0.0.1", port, str(tmp_path / "http.log"))
    out = str(tmp_path / "img")
    try:
        server.start().wait_ready(lambda: accepts("127.0.0.1", port))
        result = run_client(RAWFETCH + ["http://127.0.0.1:%d/img64" % port, "-o", out, "-q"],
                            timeout=20, output=out)
    finally:
        server.stop()
    assert result.returncode == 0 and result.sha256 == payloads.sha["img64"], result.explain()


def test_nginx_file_replaced_mid_download_restarts_cleanly(lo_nginx, docroot, tmp_path):
    """The file is replaced on disk, then the worker dies: If-Range no longer matches, nginx
    sends 200 with the new ETag, download() truncates and ends with the NEW content.
    Bound: 15 s."""
    server, base = lo_nginx
    path = os.path.join(docroot, "changing")
    write_payload(path, 64 * MiB, seed=11)
    new_sha: List[str] = []

    def swap() -> None:
        new_sha.append(replace_file(path, 64 * MiB, seed=12))
        server.kill_workers()
    events: List[dict] = []
    result = rawfetch.download(base + "/changing", str(tmp_path / "img"),
                               on_event=events.append, progress=crash_once(swap), **OPTS)
    assert result.restarts == 1 and sha256_file(str(tmp_path / "img")) == new_sha[0]
    assert result.elapsed < 15
    assert [e for e in events if e["event"] == "restart"]
    assert server.access_log()[-1]["status"] == "200" and server.access_log()[-1]["range"]


def test_stream_raises_resource_changed(lo_nginx, docroot):
    """A stream cannot take bytes back: a changed file mid-stream is ResourceChanged (91),
    raised on the first retry. Bound: 15 s."""
    server, base = lo_nginx
    path = os.path.join(docroot, "changing")
    write_payload(path, 64 * MiB, seed=21)
    started = time.monotonic()
    with pytest.raises(rawfetch.ResourceChanged) as info:
        with rawfetch.open(base + "/changing", **OPTS) as stream:
            for _chunk in stream:
                if stream.tell() >= CRASH_AT and not os.path.exists(path + ".done"):
                    replace_file(path, 64 * MiB, seed=22)
                    open(path + ".done", "w").close()
                    server.kill_workers()
    assert info.value.exit_code == 91 and stream.tell() >= CRASH_AT
    assert time.monotonic() - started < 15


def _verified(out: str) -> int:
    """The bytes the sidecar says were fsynced: what a later run resumes from (README,
    File mode: guarantees and limits); 0 before the first checkpoint."""
    try:
        with open(out + ".part.json") as handle:
            return json.load(handle)["verified"]
    except (OSError, ValueError, KeyError):  # cleanup-grade probe: not written yet
        return 0


def _killed_run(url: str, out: str, at: int, sig: int = signal.SIGKILL) -> int:
    """Start the command paced by nginx, send `sig` once its sidecar verifies `at` bytes
    (a checkpoint every 2 s); return the verified bytes a rerun resumes from."""
    proc = subprocess.Popen(RAWFETCH + [url, "-o", out, "-q"], env=client_env(),
                            stderr=subprocess.PIPE, start_new_session=True)
    end = time.monotonic() + 20
    try:
        while _verified(out) < at and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.01)
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    if sig == signal.SIGINT:   # README: exit 130, one line, no traceback
        assert proc.returncode == 130 and err == b"rawfetch: interrupted\n", err
    held = _verified(out)
    assert at <= held <= os.path.getsize(out + ".part") and held < 64 * MiB
    return held


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_command_resumes_next_run_with_206(sig, lo_nginx, payloads, tmp_path):
    """kill -9 (or Ctrl-C: exit 130) mid-transfer, run again: the .part is continued
    from exactly the length its sidecar verified. Bound: 20 s per run."""
    server, base = lo_nginx
    out = str(tmp_path / "img")
    held = _killed_run(base + "/img64?rate=16m", out, 8 * MiB, sig)
    result = run_client(RAWFETCH + [base + "/img64?rate=16m", "-o", out, "-q"], timeout=20,
                        output=out)
    assert result.returncode == 0 and result.sha256 == payloads.sha["img64"], result.explain()
    last = server.access_log()[-1]
    assert last["status"] == "206" and last["range"] == "bytes=%d-" % held
    assert int(last["bytes"]) == 64 * MiB - held


def test_file_replaced_between_runs_restarts_cleanly(lo_nginx, docroot, tmp_path):
    """kill -9, the file changes on the server, run again: the old .part is not spliced
    (If-Range fails, nginx sends 200, the command restarts). Bound: 20 s per run."""
    server, base = lo_nginx
    path = os.path.join(docroot, "changing")
    write_payload(path, 64 * MiB, seed=31)
    out = str(tmp_path / "img")
    url = base + "/changing?rate=16m"   # slow enough for a checkpoint before the kill
    _killed_run(url, out, 8 * MiB)
    new_sha = replace_file(path, 64 * MiB, seed=32)
    result = run_client(RAWFETCH + [url, "-o", out, "-q"], timeout=20, output=out)
    assert result.returncode == 0 and result.sha256 == new_sha, result.explain()
    last = server.access_log()[-1]
    assert last["status"] == "200" and last["if_range"] != "-" and last["range"] != "-"
