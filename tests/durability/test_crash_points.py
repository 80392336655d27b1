"""kill -9 at exact system calls: before the Nth fsync, rename, unlink, ftruncate or
pwrite64 of a run, for every N the run makes (counted first under strace), the process
dies (strace -e inject=SYSCALL:signal=SIGKILL:when=N). After each death nothing false is
kept (helpers.assert_nothing_false); the next plain run ends byte-exact (by digest) and
leaves only PATH.

strace traces the command's main thread only (no -f): on these data paths (plain HTTP,
no checksum: splice into the file) that thread makes every file call, so the count N is
the same from run to run -- except for the timed checkpoint (sidecar.CHECKPOINT_SECONDS):
a run slowed past it by a loaded machine makes one fsync and one rename more. A run that
ends before its Nth call (exit 0) must then be byte-exact, and is not counted as killed.
"""
from __future__ import annotations

import os
import re
import subprocess
from typing import List, Sequence, Tuple

import pytest

from tests.faultserver import FaultServer, actions as A, make_body

from .helpers import KILLED, assert_nothing_false, digest, env, listing, need, run, sha

pytestmark = pytest.mark.durability

SIZE = 2 << 20          # two MiB: a head (first MiB, in place) and a tail
CUT_AT = 900000         # where the server cuts the first run (under 1 MiB: a charged attempt)
SYSCALLS = ("fsync", "rename", "unlink", "ftruncate", "pwrite64")


@pytest.fixture
def body() -> bytes:
    return make_body(SIZE, seed=20)


@pytest.fixture
def origin(body):
    with FaultServer() as srv:
        srv.add("/img", body, etag='"d1"')
        yield srv


def count_calls(argv: List[str], syscall: str, tmp: str) -> Tuple[int, int]:
    """How many times the command's main thread makes `syscall` in an undisturbed run,
    and that run's exit code."""
    trace = os.path.join(tmp, "trace-%s" % syscall)
    done = subprocess.run([need("strace"), "-qq", "-o", trace, "-e", "trace=" + syscall]
                          + argv, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=60, check=False)
    with open(trace) as handle:
        return sum(1 for line in handle if re.match(syscall + r"\(", line)), done.returncode


def kill_at(argv: Sequence[str], syscall: str, when: int) -> int:
    done = subprocess.run([need("strace"), "-qq", "-o", os.devnull, "-e",
                           "inject=%s:signal=SIGKILL:when=%d" % (syscall, when)] + list(argv),
                          env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=60)
    return done.returncode


def crash_everywhere(origin, body, tmp_path, prepare, argv_extra=(), script=None):
    """For each syscall and each N: prepare the directory, run killed at call N, check
    nothing false is kept, run again undisturbed, check the digest and the leftovers."""
    from .helpers import command
    url = origin.url("/img")
    checked = 0
    for syscall in SYSCALLS:
        work = tmp_path / ("count-" + syscall)
        work.mkdir()
        out = str(work / "out.img")
        prepare(out)
        origin.script(script or [A.normal()])
        argv = command(url, out, *argv_extra)
        calls, undisturbed = count_calls(argv, syscall, str(tmp_path))
        for when in range(1, calls + 1):
            case = tmp_path / ("%s-%d" % (syscall, when))
            case.mkdir()
            out = str(case / "out.img")
            prepare(out)
            origin.script(script or [A.normal()])
            code = kill_at(command(url, out, *argv_extra), syscall, when)
            killed = code in KILLED
            # Not killed: this run made fewer calls (no timed checkpoint); it must have
            # ended as the undisturbed run did, and is checked the same way below.
            assert killed or (when > 1 and code == undisturbed), \
                "%s #%d: not killed (exit %s)" % (syscall, when, code)
            assert_nothing_false(out, body)
            origin.script([A.normal()])
            again = run(url, out, *argv_extra)
            assert again.returncode == 0, (syscall, when, again.stderr)
            assert digest(out) == sha(body), (syscall, when)
            assert listing(str(case)) == ["out.img"], (syscall, when)
            checked += killed
    return checked


def test_fresh_download_killed_at_every_file_call(origin, body, tmp_path):
    checked = crash_everywhere(origin, body, tmp_path, prepare=lambda out: None)
    assert checked >= 8   # lock, .part, sidecar, commit: at least this many calls


def test_resume_killed_at_every_file_call(origin, body, tmp_path):
    """The leftovers of a run the server cut (FIN) at CUT_AT (a verified .part), resumed and
    killed at every call: the cut-back, the Range, the commit."""
    url = origin.url("/img")

    def prepare(out: str) -> None:
        origin.script([A.fin(at=CUT_AT)])
        first = run(url, out, "--retries", "0")
        assert first.returncode != 0 and os.path.getsize(out + ".part") >= CUT_AT
    checked = crash_everywhere(origin, body, tmp_path, prepare)
    assert checked >= 8


def test_cut_run_killed_while_saving_its_state(origin, body, tmp_path):
    """The run the server cuts is killed while it saves its resume state (its last
    checkpoint: fsync, sidecar temporary, rename)."""
    checked = crash_everywhere(origin, body, tmp_path, prepare=lambda out: None,
                               argv_extra=("--retries", "0"),
                               script=[A.fin(at=CUT_AT)])
    assert checked >= 5


def test_in_place_killed_at_every_file_call(origin, body, tmp_path):
    """--in-place over a larger old file: after any kill the file never has the new head
    over a wrong tail (the old file's bytes past the image's end, or its old middle)."""
    old = b"\xaa" * (SIZE + (1 << 20))
    url = origin.url("/img")
    from .helpers import command
    checked = 0
    for syscall in SYSCALLS:
        work = tmp_path / ("count-" + syscall)
        work.mkdir()
        (work / "disk.img").write_bytes(old)
        calls, undisturbed = count_calls(command(url, str(work / "disk.img"), "--in-place"),
                                         syscall, str(tmp_path))
        for when in range(1, calls + 1):
            case = tmp_path / ("%s-%d" % (syscall, when))
            case.mkdir()
            out = case / "disk.img"
            out.write_bytes(old)
            code = kill_at(command(url, str(out), "--in-place"), syscall, when)
            killed = code in KILLED   # else fewer calls this time: see the module's docstring
            assert killed or (when > 1 and code == undisturbed), \
                "%s #%d: not killed (exit %s)" % (syscall, when, code)
            now = out.read_bytes()
            if now[:1 << 20] == body[:1 << 20]:
                assert sha(now) == sha(body), "%s #%d: valid head over a wrong tail" % (
                    syscall, when)
            again = run(url, str(out), "--in-place")
            assert again.returncode == 0, again.stderr
            assert digest(str(out)) == sha(body)
            assert listing(str(case)) == ["disk.img"]
            checked += killed
    assert checked >= 5
