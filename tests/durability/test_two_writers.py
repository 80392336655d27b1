"""Two processes on one output: the second fails at once (exit 97) naming the first, and
touches nothing; the first ends byte-exact. Issue #20 cases 1 and 2: before the lock, a
second writer with another URL truncated the first one's live .part (exit 0 over a
hole), and two writers started together deleted each other's files (both exit 23)."""
from __future__ import annotations

import os
import sys
import time

import pytest

from tests.faultserver import FaultServer, make_body

from .helpers import digest, listing, run, sha, start, wait_for_bytes

pytestmark = pytest.mark.durability

SIZE = 2 << 20
RATE = "512K"        # the first writer takes ~4 s: long enough to join it mid-transfer
BUSY = 97


@pytest.fixture
def bodies():
    return make_body(SIZE, seed=21), make_body(SIZE, seed=22)


@pytest.fixture
def origin(bodies):
    with FaultServer() as srv:
        srv.add("/img", bodies[0], etag='"a"')
        srv.add("/mirror-img", bodies[1], etag='"b"')
        yield srv


def wait_for_flock(pid: int, timeout: float = 10.0) -> None:
    """Until /proc/locks shows a flock held by `pid` (the device is being written)."""
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        with open("/proc/locks") as handle:
            if any(line.split()[1:2] == ["FLOCK"] and line.split()[4] == str(pid)
                   for line in handle):
                return
        time.sleep(0.02)
    raise AssertionError("process %d never took its lock" % pid)


@pytest.mark.parametrize("second", ["/img", "/mirror-img"])
def test_joining_mid_transfer_is_refused_and_harmless(origin, bodies, tmp_path, second):
    out = str(tmp_path / "out.img")
    first = start(origin.url("/img"), out, "--limit-rate", RATE)
    try:
        wait_for_bytes(out + ".part", 256 << 10)
        held = os.path.getsize(out + ".part")
        joined = run(origin.url(second), out)
        assert first.poll() is None, "the first writer ended before the second was refused"
        assert joined.returncode == BUSY, joined.stderr
        assert "rawfetch process %d" % first.pid in joined.stderr
        assert os.path.getsize(out + ".part") >= held     # not truncated by the second
    finally:
        first_out, first_err = first.communicate(timeout=60)
    assert first.returncode == 0, first_err
    assert digest(out) == sha(bodies[0])
    assert listing(str(tmp_path)) == ["out.img"]


def test_started_together_one_writes_the_other_is_refused(origin, bodies, tmp_path):
    for round_ in range(4):
        directory = tmp_path / str(round_)
        directory.mkdir()
        out = str(directory / "out.img")
        both = [start(origin.url("/img"), out, "--limit-rate", "2M") for _ in range(2)]
        codes = sorted(p.wait(timeout=60) for p in both)
        errors = [p.stderr.read() for p in both]
        for p in both:
            p.stdout.close()
            p.stderr.close()
        assert codes == [0, BUSY], (codes, errors)
        assert digest(out) == sha(bodies[0])
        assert listing(str(directory)) == ["out.img"]


def test_in_place_and_file_mode_on_one_path_exclude_each_other(origin, bodies, tmp_path):
    out = str(tmp_path / "disk.img")
    with open(out, "wb") as handle:
        handle.write(b"\0" * SIZE)
    first = start(origin.url("/img"), out, "--in-place", "--limit-rate", RATE)
    try:
        wait_for_bytes(out + ".part.lock", 1)
        for extra in ((), ("--in-place",)):
            joined = run(origin.url("/mirror-img"), out, *extra)
            assert joined.returncode == BUSY, joined.stderr
        assert first.poll() is None
    finally:
        first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 0, first_err
    assert digest(out) == sha(bodies[0])
    assert listing(str(tmp_path)) == ["disk.img"]


def test_a_block_device_has_one_writer(origin, bodies, tmp_path):
    """A loop device written in place: the first writer holds LOCK_EX on the device (as
    udev expects of a disk being written); a second one exits 97 naming its pid."""
    if os.geteuid() != 0:
        pytest.skip("needs root for losetup")
    from tests.realnet.netns import loop_backing, loop_device
    backing = loop_backing(str(tmp_path))
    with open(backing, "wb") as handle:
        handle.write(b"\0" * (4 << 20))
    with loop_device(backing) as device:
        if device is None:
            pytest.skip("losetup unusable here")
        first = start(origin.url("/img"), device, "--limit-rate", RATE)
        try:
            wait_for_flock(first.pid)
            joined = run(origin.url("/mirror-img"), device)
            assert first.poll() is None, "the first writer ended before the second was refused"
            assert joined.returncode == BUSY, joined.stderr
            assert "process %d" % first.pid in joined.stderr
        finally:
            first_err = first.communicate(timeout=60)[1]
        assert first.returncode == 0, first_err
        with open(device, "rb") as handle:
            assert sha(handle.read(SIZE)) == sha(bodies[0])


def test_library_caller_gets_output_busy(origin, bodies, tmp_path):
    """rawfetch.download() in an agent's process, while a command writes the same PATH:
    OutputBusy (exit_code 97, not retryable) before any request, nothing touched."""
    import rawfetch
    out = str(tmp_path / "out.img")
    first = start(origin.url("/img"), out, "--limit-rate", RATE)
    try:
        wait_for_bytes(out + ".part", 128 << 10)
        asked = len(origin.requests)
        with pytest.raises(rawfetch.OutputBusy) as info:
            rawfetch.download(origin.url("/mirror-img"), out)
        assert info.value.exit_code == BUSY and not info.value.retryable
        assert "rawfetch process %d" % first.pid in str(info.value)
        assert len(origin.requests) == asked
    finally:
        first_err = first.communicate(timeout=60)[1]
    assert first.returncode == 0, first_err
    assert digest(out) == sha(bodies[0])


def test_in_place_in_a_read_only_directory_locks_the_file_itself(origin, bodies):
    """No PATH.part.lock can be created beside a writable file in a directory its writer
    may not write: in place then locks the file's own fd (no file-mode writer can work
    there either), and a second writer is still refused."""
    import shutil
    import subprocess
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root to run the writers as another user (setpriv)")
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("setpriv (util-linux) is not installed")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run(as_nobody + [sys.executable, "-c", ""], stderr=subprocess.DEVNULL,
                      timeout=30).returncode != 0:
        pytest.skip("user nobody cannot run %s (a directory on its path is private)"
                    % sys.executable)
    directory = tempfile.mkdtemp(prefix="rawfetch-durability-")
    try:
        os.chmod(directory, 0o755)
        out = os.path.join(directory, "disk.img")
        with open(out, "wb") as handle:
            handle.write(b"\xaa" * SIZE)
        os.chown(out, 65534, 65534)
        from .helpers import command, env
        first = subprocess.Popen(as_nobody + command(origin.url("/img"), out, "--in-place",
                                                     "--limit-rate", RATE),
                                 env=env(), stderr=subprocess.PIPE, universal_newlines=True)
        try:
            wait_for_flock(first.pid)
            joined = run(origin.url("/mirror-img"), out, "--in-place", prefix=as_nobody)
            assert joined.returncode == BUSY, joined.stderr
            assert "process %d" % first.pid in joined.stderr
        finally:
            first_err = first.communicate(timeout=60)[1]
        assert first.returncode == 0, first_err
        assert digest(out) == sha(bodies[0])
        assert listing(directory) == ["disk.img"]
    finally:
        shutil.rmtree(directory)
