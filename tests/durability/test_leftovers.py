"""Damaged leftovers of an earlier run, symlinks and hard links where rawfetch writes:
nothing doubtful is trusted (restart from zero, with a `leftover` event saying why),
bytes past the verified length are cut away before the Range, and no link is followed.
Each case asserts the final digest, the exit code, the Range the server saw, the event
and what is left on disk."""
from __future__ import annotations

import json
import os

import pytest

from tests.faultserver import FaultServer, actions as A, make_body

from .helpers import digest, events, listing, run, sha

pytestmark = pytest.mark.durability

SIZE = 2 << 20
CUT_AT = 900000      # the first run is cut (FIN) here: a charged attempt, under 1 MiB


@pytest.fixture
def body() -> bytes:
    return make_body(SIZE, seed=23)


@pytest.fixture
def origin(body):
    with FaultServer() as srv:
        srv.add("/img", body, etag='"d1"')
        yield srv


def leave_verified_part(origin, out: str) -> int:
    """A real earlier run, cut by the server: returns the verified length it recorded."""
    origin.script([A.fin(at=CUT_AT)])
    first = run(origin.url("/img"), out, "--retries", "0")
    assert first.returncode == 18, first.stderr
    with open(out + ".part.json") as handle:
        verified = json.load(handle)["verified"]
    assert verified == os.path.getsize(out + ".part") == CUT_AT
    origin.script([A.normal()])
    return verified


def rerun(origin, out: str, log: str):
    asked = len(origin.requests)
    done = run(origin.url("/img"), out, "--log-json", log)
    return done, [r.range for r in origin.requests[asked:]]


def rewrite_sidecar(out: str, **changes) -> None:
    path = out + ".part.json"
    with open(path) as handle:
        data = json.load(handle)
    data.update(changes)
    with open(path, "w") as handle:
        json.dump(data, handle)


DAMAGE = {
    "truncated": (lambda out: _cut_file(out + ".part.json", 20), "not valid JSON"),
    "garbage": (lambda out: _write(out + ".part.json", os.urandom(200)), "not valid JSON"),
    "another URL": (lambda out: rewrite_sidecar(out, url="http://127.0.0.1:9/other.img"),
                    "another URL"),
    "claims more than the .part holds": (lambda out: _cut_file(out + ".part", 1000),
                                         "claims %d verified bytes" % CUT_AT),
    "an older format (no verified length)": (
        lambda out: rewrite_sidecar(out, format=1, verified=None), "format 1"),
    "verified past the total": (lambda out: rewrite_sidecar(out, verified=SIZE + 1),
                                "claims %d verified bytes" % (SIZE + 1)),
    "missing": (lambda out: os.unlink(out + ".part.json"), "no sidecar"),
}


def _cut_file(path: str, size: int) -> None:
    os.truncate(path, size)


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_doubtful_sidecar_restarts_from_zero_and_says_why(origin, body, tmp_path, case):
    out, log = str(tmp_path / "out.img"), str(tmp_path.parent / (tmp_path.name + ".jsonl"))
    leave_verified_part(origin, out)
    damage, why = DAMAGE[case]
    damage(out)
    done, ranges = rerun(origin, out, log)
    assert done.returncode == 0, done.stderr
    assert digest(out) == sha(body)
    assert ranges == [None], "a doubtful .part was resumed"
    [said] = events(log, "leftover")
    assert said["action"] == "discarded" and why in said["why"], said
    assert listing(str(tmp_path)) == ["out.img"]


@pytest.mark.parametrize("tail", [b"\0" * 65536, os.urandom(65536)], ids=["zeros", "garbage"])
def test_bytes_past_the_verified_length_are_cut_before_the_range(origin, body, tmp_path,
                                                                  tail):
    """Issue #20 case 3: 64 KiB appended to the .part (or a zero-filled tail after a power
    cut) used to be trusted: Range after them, exit 0 with wrong bytes."""
    out, log = str(tmp_path / "out.img"), str(tmp_path.parent / (tmp_path.name + ".jsonl"))
    verified = leave_verified_part(origin, out)
    with open(out + ".part", "ab") as handle:
        handle.write(tail)
    done, ranges = rerun(origin, out, log)
    assert done.returncode == 0, done.stderr
    assert digest(out) == sha(body)
    assert ranges == ["bytes=%d-" % verified]
    [said] = events(log, "leftover")
    assert said["action"] == "cut" and said["kept"] == verified
    assert said["size"] == verified + len(tail)
    assert listing(str(tmp_path)) == ["out.img"]


def test_sidecar_total_disagreeing_with_the_server_restarts(origin, body, tmp_path):
    """Issue #20 case 5: same ETag, another total in the sidecar: the server's well-formed
    206 carries its own total; rawfetch restarts from zero instead of exit 8 for ever."""
    out, log = str(tmp_path / "out.img"), str(tmp_path.parent / (tmp_path.name + ".jsonl"))
    leave_verified_part(origin, out)
    rewrite_sidecar(out, total=SIZE + 4096)
    done, ranges = rerun(origin, out, log)
    assert done.returncode == 0, done.stderr
    assert digest(out) == sha(body)
    assert ranges[-1] is None and len(ranges) <= 2
    assert events(log, "restart")
    assert listing(str(tmp_path)) == ["out.img"]


def test_symlinked_part_is_refused_and_its_target_untouched(origin, tmp_path):
    """Issue #20 case 4: PATH.part -> someone's file used to be truncated then
    overwritten with the image."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 1000)
    out = str(tmp_path / "out.img")
    os.symlink(str(victim), out + ".part")
    done = run(origin.url("/img"), out)
    assert done.returncode == 23, done.stderr
    assert "symbolic link" in done.stderr
    assert victim.read_bytes() == b"precious" * 1000
    assert listing(str(tmp_path)) == ["out.img.part", "victim"]
    assert len(origin.requests) == 0     # refused before any connection


def test_hard_linked_part_is_refused(origin, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious" * 1000)
    out = str(tmp_path / "out.img")
    os.link(str(victim), out + ".part")
    done = run(origin.url("/img"), out)
    assert done.returncode == 23 and "hard links" in done.stderr, done.stderr
    assert victim.read_bytes() == b"precious" * 1000


def test_symlinked_sidecar_and_temporary_are_not_followed(origin, body, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out, log = str(tmp_path / "out.img"), str(tmp_path.parent / (tmp_path.name + ".jsonl"))
    leave_verified_part(origin, out)
    os.unlink(out + ".part.json")
    os.symlink(str(victim), out + ".part.json")
    os.symlink(str(victim), out + ".part.json.1.dead.tmp")   # a killed writer's name
    done, ranges = rerun(origin, out, log)
    assert done.returncode == 0, done.stderr
    assert digest(out) == sha(body) and ranges == [None]
    assert victim.read_bytes() == b"precious"
    assert listing(str(tmp_path)) == ["out.img", "victim"]   # the stale temporary removed


def test_output_symlink_is_followed_like_curl(origin, body, tmp_path):
    """PATH a symlink to a file: the target gets the image (via target.part beside it,
    renamed onto it), PATH stays the same symlink, like curl -o writing through it."""
    elsewhere = tmp_path / "store"
    elsewhere.mkdir()
    target = elsewhere / "img"
    target.write_bytes(b"old")
    link = tmp_path / "out.img"
    os.symlink(str(target), str(link))
    done = run(origin.url("/img"), str(link))
    assert done.returncode == 0, done.stderr
    assert os.path.islink(str(link)) and os.readlink(str(link)) == str(target)
    assert digest(str(target)) == sha(body)
    assert listing(str(elsewhere)) == ["img"] and listing(str(tmp_path)) == ["out.img", "store"]


def test_dangling_output_symlink_is_refused(origin, tmp_path):
    link = tmp_path / "out.img"
    os.symlink(str(tmp_path / "nowhere"), str(link))
    done = run(origin.url("/img"), str(link))
    assert done.returncode == 23 and "dangling symlink" in done.stderr, done.stderr
    assert listing(str(tmp_path)) == ["out.img"] and not os.path.exists(str(link))


def test_symlinked_lock_file_is_refused_and_its_target_untouched(origin, tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = str(tmp_path / "out.img")
    os.symlink(str(victim), out + ".part.lock")
    done = run(origin.url("/img"), out)
    assert done.returncode == 23, done.stderr
    assert victim.read_bytes() == b"precious" and len(origin.requests) == 0
    assert listing(str(tmp_path)) == ["out.img.part.lock", "victim"]


def test_in_place_success_removes_stale_temporaries(origin, body, tmp_path):
    """Sidecar temporaries a killed file-mode run left beside PATH go when an in-place
    write of PATH succeeds (it holds PATH's lock: no live writer can own them)."""
    out = tmp_path / "disk.img"
    out.write_bytes(b"\xaa" * (SIZE + 4096))
    (tmp_path / "disk.img.part.json.4242.deadbeef.tmp").write_bytes(b"{")
    done = run(origin.url("/img"), str(out), "--in-place")
    assert done.returncode == 0, done.stderr
    assert digest(str(out)) == sha(body)
    assert listing(str(tmp_path)) == ["disk.img"]
