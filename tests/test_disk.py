"""Disks never left half-written (issue 12 items 3-5): SafeDisk over real files, fed from
the fault server through tests.disk_helpers.feed (download()'s in-place path).

What a user cares about: after a kill or a failure the target's first MiB is zero (it
cannot boot a half-written system); after success it holds the image exactly; a qcow2 or
VMDK image is refused with the target byte-identical; a read-back that differs is exit 93
naming the MiB. The target starts as an "old system" (a non-zero pattern) so that zeros
and untouched bytes can be told apart.
"""
from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

from rawfetch import errors as E
from rawfetch.cli import build_parser, options_from
from rawfetch.disk import HEAD_HOLD, WrittenDigest, first_difference, read_back
from rawfetch.options import Options
from rawfetch.sinks import InPlace, SafeDisk
from tests.disk_helpers import feed, flip_byte_after
from tests.faultserver import actions as A, make_body
from tests.timing_options import QUICK

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
IMAGE = make_body(3 * MiB + 12345, seed=21)   # not a whole number of MiB
OLD = b"OLD!" * (MiB // 4)                      # one MiB of the "old system"
KILL_WAIT = 30.0   # s; generous bound for a loopback child to receive 2 MiB on 2 busy cores


def names(events: List[Dict[str, Any]]) -> List[str]:
    return [e["event"] for e in events]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def target(tmp_path) -> str:
    """A 4 MiB file holding the old system."""
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as handle:
        handle.write(OLD * 4)
    return path


@pytest.fixture
def srv(make_server):
    server = make_server()
    server.add("/img", IMAGE, etag='"v1"')
    return server


def read(path: str, start: int = 0, size: int = -1) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(start)
        return handle.read(size)


# ---------------------------------------------------------------- success
def test_success_holds_the_head_back_then_writes_the_exact_image(srv, target):
    """Through two cuts: while the tail is being written the first MiB on disk is zero;
    at the end the file is the image (cut to its size) and the events say wipe, then
    head_written."""
    # a FIN cuts at exactly 1.5 MiB; the reset then lands inside the resumed rest
    # (1.5 MiB + 12,345 bytes) whatever a reset discards in flight
    srv.script([A.fin(at=MiB + MiB // 2), A.rst(at=MiB + 100), A.normal()])
    seen_while_writing: List[bytes] = []

    def look(stream: Any) -> None:
        if stream.offset >= 2 * MiB and not seen_while_writing:
            seen_while_writing.append(read(target, 0, HEAD_HOLD))

    events: List[Dict[str, Any]] = []
    sink = feed(srv.url("/img"), target, events, progress=look, **QUICK)
    assert seen_while_writing == [bytes(HEAD_HOLD)]
    assert digest(read(target)) == digest(IMAGE)
    order = [n for n in names(events) if n in ("wipe", "resume", "head_written")]
    assert order == ["wipe", "resume", "resume", "head_written"]
    assert events[names(events).index("wipe")]["bytes"] == HEAD_HOLD
    assert sink.readback_seconds is None and "readback" not in names(events)


@pytest.mark.parametrize("size", [3, 100000])
def test_image_smaller_than_the_held_head(make_server, target, size):
    """An image under 1 MiB (even under the 4 signature bytes) is written whole at
    commit and the file is cut to it."""
    server = make_server()
    server.add("/small", IMAGE[:size], etag='"s"')
    events: List[Dict[str, Any]] = []
    feed(server.url("/small"), target, events, **QUICK)
    assert read(target) == IMAGE[:size]
    assert [n for n in names(events) if n != "done"][-1] == "head_written"
    assert "wipe" in names(events)


def test_restart_from_zero_drops_the_held_head(srv, target):
    """The object changes mid-transfer: the download restarts and the disk ends with the
    NEW image, its head included."""
    new = make_body(2 * MiB + 7, seed=22)
    srv.script([A.rst(at=MiB + 4096), A.replace(new, then=A.normal())])
    events: List[Dict[str, Any]] = []
    feed(srv.url("/img"), target, events, **QUICK)
    assert digest(read(target)) == digest(new)
    assert names(events).count("restart") == 1 and names(events).count("wipe") == 1


# ---------------------------------------------------------------- kill and failure
def test_killed_midway_leaves_the_first_mib_zero(srv, target):
    """A child writing the image is SIGKILLed once it holds 2 MiB (the server stalls
    there): nothing can clean up, yet the first MiB is zero and the second is the
    image's (writing had begun)."""
    srv.script([A.stall(at=2 * MiB)])
    child = subprocess.Popen([sys.executable, "-m", "tests.disk_helpers", srv.url("/img"),
                              target], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert _wait_for_position(child, 2 * MiB) == 2 * MiB
        # delivered is not yet written (a worker thread writes): kill once MiB 1 is on
        # disk, so writing has provably begun when the kill lands
        deadline = time.monotonic() + KILL_WAIT
        while read(target, MiB, MiB) != IMAGE[MiB:2 * MiB] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert read(target, 0, MiB) == bytes(MiB)
    assert read(target, MiB, MiB) == IMAGE[MiB:2 * MiB]
    assert read(target, 2 * MiB) == OLD * 2


def _wait_for_position(child: subprocess.Popen, wanted: int) -> int:
    """Read the child's "bytes written" lines until `wanted` (or KILL_WAIT passes)."""
    deadline = time.monotonic() + KILL_WAIT
    position, pending = 0, b""
    while position < wanted and time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 0.5)
        if ready:
            data = os.read(child.stdout.fileno(), 4096)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            position = max([position] + [int(line) for line in lines if line])
    return position


@pytest.mark.parametrize("script,error", [
    ([A.fin(at=2 * MiB + 10), A.status(404)], E.HTTPStatusError),
    ([A.fin(at=2 * MiB + 10), A.fin(at=0)], E.IncompleteBody),   # budget exhausted
])
def test_failure_after_writing_began_zeroes_the_start_again(srv, target, script, error):
    events: List[Dict[str, Any]] = []
    srv.script(script)
    with pytest.raises(error) as caught:
        feed(srv.url("/img"), target, events, **dict(QUICK, retries=2))
    assert caught.value.exit_code == error.exit_code
    assert read(target, 0, MiB) == bytes(MiB)
    assert read(target, MiB, MiB) == IMAGE[MiB:2 * MiB]
    order = [n for n in names(events) if n in ("wipe", "error", "wipe_on_failure")]
    assert order[0] == "wipe" and order[-1] == "wipe_on_failure"
    assert events[-1]["ok"] is True and events[-1]["bytes"] == HEAD_HOLD


def test_failure_before_any_output_leaves_the_target_untouched(srv, target):
    """A 404 at the first attempt: nothing arrived, so nothing was zeroed either."""
    srv.script([A.status(404)])
    events: List[Dict[str, Any]] = []
    with pytest.raises(E.HTTPStatusError):
        feed(srv.url("/img"), target, events, **QUICK)
    assert read(target) == OLD * 4
    assert "wipe" not in names(events) and "wipe_on_failure" not in names(events)


def test_preserve_on_error_skips_the_zeroing(srv, target):
    """The same failure with preserve_on_error: no wipe_on_failure; what was written
    stays (the held head never reached the disk, so the start is the first wipe's)."""
    srv.script([A.fin(at=2 * MiB + 10), A.status(404)])
    events: List[Dict[str, Any]] = []
    with pytest.raises(E.HTTPStatusError):
        feed(srv.url("/img"), target, events, preserve_on_error=True, **QUICK)
    assert "wipe" in names(events) and "wipe_on_failure" not in names(events)
    assert read(target, MiB, MiB) == IMAGE[MiB:2 * MiB]


# ---------------------------------------------------------------- foreign formats
@pytest.mark.parametrize("magic,name", [(b"QFI\xfb", "qcow2"), (b"KDMV", "VMDK")])
def test_qcow2_and_vmdk_are_refused_with_the_target_untouched(make_server, target, magic,
                                                              name):
    server = make_server()
    server.add("/img", magic + IMAGE[4:], etag='"q"')
    before = digest(read(target))
    events: List[Dict[str, Any]] = []
    with pytest.raises(E.UnsupportedImageFormat) as caught:
        feed(server.url("/img"), target, events, **QUICK)
    assert caught.value.exit_code == 95
    assert "image is %s, not raw" % name in str(caught.value)
    assert "nothing was written" in str(caught.value)
    assert digest(read(target)) == before
    assert not {"wipe", "wipe_on_failure", "head_written"} & set(names(events))


def test_restart_into_a_qcow2_is_refused_and_zeroes_the_start(srv, target):
    """The object is replaced by a qcow2 mid-transfer: its first bytes are checked again
    after the restart; writing had begun, so the start is zeroed again."""
    srv.script([A.fin(at=2 * MiB), A.replace(b"QFI\xfb" + IMAGE[4:], then=A.normal())])
    events: List[Dict[str, Any]] = []
    with pytest.raises(E.UnsupportedImageFormat) as caught:
        feed(srv.url("/img"), target, events, **QUICK)
    assert "nothing was written" not in str(caught.value)
    assert read(target, 0, MiB) == bytes(MiB)
    order = [n for n in names(events) if n in ("wipe", "restart", "wipe_on_failure")]
    assert order == ["wipe", "restart", "wipe_on_failure"]


def test_allow_any_format_writes_a_qcow2_byte_exact(make_server, target):
    server = make_server()
    server.add("/img", b"QFI\xfb" + IMAGE[4:], etag='"q"')
    feed(server.url("/img"), target, allow_any_format=True, **QUICK)
    assert digest(read(target)) == digest(b"QFI\xfb" + IMAGE[4:])


def test_signature_split_over_writes_is_checked_before_the_wipe(target):
    """The magic arrives one byte at a time: nothing is zeroed until all 4 are known;
    a raw image is wiped at its 4th byte, a qcow2 one refused with the file untouched."""
    events: List[str] = []
    raw = SafeDisk(InPlace(target), emit=lambda name, **_: events.append(name))
    raw.open()
    for byte in (b"Q", b"F", b"I"):
        raw.write(byte)
        assert events == [] and read(target) == OLD * 4
    raw.write(b"X")
    assert events == ["wipe"] and read(target, 0, MiB) == bytes(MiB)
    raw.abandon(keep=False)
    assert events == ["wipe", "wipe_on_failure"]

    with open(target, "wb") as handle:
        handle.write(OLD * 4)
    qcow = SafeDisk(InPlace(target), emit=lambda name, **_: events.append(name))
    qcow.open()
    qcow.write(b"QF")
    with pytest.raises(E.UnsupportedImageFormat):
        qcow.write(b"I\xfb" + bytes(100))
    qcow.abandon(keep=False)
    assert read(target) == OLD * 4 and events == ["wipe", "wipe_on_failure"]


# ---------------------------------------------------------------- read-back
def test_read_back_passes_and_reports_its_time(srv, target):
    events: List[Dict[str, Any]] = []
    sink = feed(srv.url("/img"), target, events, verify_written=True, **QUICK)
    assert digest(read(target)) == digest(IMAGE)
    readback = [e for e in events if e["event"] == "readback"]
    assert len(readback) == 1 and readback[0]["ok"] is True
    assert readback[0]["bytes"] == len(IMAGE) and readback[0]["seconds"] >= 0
    assert sink.readback_seconds == readback[0]["seconds"]
    assert names(events).index("head_written") < names(events).index("readback")


@pytest.mark.parametrize("preserve", [False, True])
def test_read_back_mismatch_names_the_mib_and_zeroes_the_start(srv, target, preserve):
    """A byte changed between the final fsync and the read-back: exit 93 naming MiB 2;
    the start (already the image's head) is zeroed again, unless preserve_on_error."""
    events: List[Dict[str, Any]] = []
    hook = flip_byte_after("head_written", target, 2 * MiB + 77, IMAGE[2 * MiB + 77])
    with pytest.raises(E.ReadBackMismatch) as caught:
        feed(srv.url("/img"), target, events, on_disk_event=hook, verify_written=True,
             preserve_on_error=preserve, **QUICK)
    assert caught.value.exit_code == 93
    assert "MiB 2 (bytes %d-%d)" % (2 * MiB, 3 * MiB - 1) in str(caught.value)
    readback = [e for e in events if e["event"] == "readback"]
    assert readback[0]["ok"] is False
    if preserve:
        assert read(target, 0, MiB) == IMAGE[:MiB] and "wipe_on_failure" not in names(events)
    else:
        assert read(target, 0, MiB) == bytes(MiB) and names(events)[-1] == "wipe_on_failure"


def test_first_difference_on_two_files(tmp_path):
    """The comparison itself: same bytes -> None; one byte off in MiB 3 -> 3; a copy
    short by its last MiB -> 4 (the MiB the read-back did not get)."""
    data = make_body(5 * MiB, seed=23)
    written = WrittenDigest()
    written.update(data)
    paths = {}
    for name, content in (("same", data), ("flip", data[:3 * MiB + 5] + b"\0"
                                            + data[3 * MiB + 6:]), ("short", data[:4 * MiB])):
        paths[name] = str(tmp_path / name)
        with open(paths[name], "wb") as handle:
            handle.write(content)
    assert first_difference(written, read_back(paths["same"], len(data))) is None
    assert first_difference(written, read_back(paths["flip"], len(data))) == 3
    assert first_difference(written, read_back(paths["short"], len(data))) == 4


# ---------------------------------------------------------------- other targets, options
def test_character_device_only_gets_the_format_check(srv):
    """/dev/null cannot be written at offsets: no wipe, the bytes just stream; a qcow2
    is still refused; read-back is refused up front (nothing to read)."""
    events: List[Dict[str, Any]] = []
    sink = feed(srv.url("/img"), "/dev/null", events, **QUICK)
    assert sink.taken == len(IMAGE) and "wipe" not in names(events)
    with pytest.raises(E.InvalidRequest):
        feed(srv.url("/img"), "/dev/null", verify_written=True, **QUICK)
    qcow = SafeDisk(InPlace("/dev/null"))
    qcow.open()
    with pytest.raises(E.UnsupportedImageFormat):
        qcow.write(b"QFI\xfb")
    qcow.abandon(keep=False)


def test_expect_size_never_refuses_a_regular_file(target):
    """Files grow: only a block device has a size to exceed (see the realnet tier)."""
    sink = SafeDisk(InPlace(target))
    sink.open()
    sink.expect_size(1 << 40)
    sink.abandon(keep=False)
    assert read(target) == OLD * 4


def test_cli_flags_and_options():
    args = build_parser().parse_args(["http://h/i", "-o", "/dev/sdx", "--preserve-on-error",
                                      "--allow-any-format", "--verify-written"])
    options = options_from(args)
    assert options["preserve_on_error"] and options["allow_any_format"]
    assert options["verify_written"]
    plain = options_from(build_parser().parse_args(["http://h/i", "-o", "x"]))
    assert not (plain["preserve_on_error"] or plain["allow_any_format"]
                or plain["verify_written"])
    assert Options(**options).verify_written is True
    with pytest.raises(E.InvalidRequest):
        Options(verify_written="yes")
