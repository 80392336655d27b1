"""The sinks' state machines (rawfetch/sinks.py): every step outside a table is refused as
InvariantViolation, and the paths a download takes -- fresh, resumed, restarted, failed
with the start wiped or preserved, verified by read-back -- walk exactly the states the
tables name, with the bytes on disk (by digest) what each state promises.

Driven directly, the way pipeline.py calls a sink, on real files in a temp directory;
the same paths end to end through download() are in test_disk.py and tests/durability.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List

import pytest

from rawfetch import errors as E
from rawfetch.judge import Identity
from rawfetch.sinks import (DISK_STEPS, PART_STEPS, DiskState as D, InPlace, PartFile,
                            PartState as P, SafeDisk, Sink, open_output, step)
from tests.faultserver import make_body

MiB = 1 << 20
IMAGE = make_body(2 * MiB + 4321, seed=31)     # not a whole number of MiB
OTHER = make_body(MiB + 99, seed=32)           # what a restart delivers instead
OLD = b"OLD!" * (MiB // 4)                     # one MiB of the "old system"
QCOW = b"QFI\xfb"
IDENTITY = Identity(len(IMAGE), '"v1"', None, None)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def on_disk(path: str, size: int = -1) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(size)


@pytest.fixture
def target(tmp_path) -> str:
    """A 3 MiB file holding the old system."""
    path = str(tmp_path / "disk.img")
    with open(path, "wb") as handle:
        handle.write(OLD * 3)
    return path


def safe_disk(path: str, events: List[str], **options: Any) -> SafeDisk:
    sink = SafeDisk(InPlace(path), emit=lambda name, **_: events.append(name), **options)
    assert sink.state is D.FRESH
    sink.open()
    assert sink.state is D.OPEN
    return sink


def feed(sink: Any, data: bytes, piece: int = 256 << 10) -> None:
    for start in range(0, len(data), piece):
        sink.write(memoryview(data)[start:start + piece])


# ---------------------------------------------------------------- the tables
@pytest.mark.parametrize("table", [DISK_STEPS, PART_STEPS], ids=["SafeDisk", "PartFile"])
def test_every_step_outside_the_table_is_refused(table, tmp_path):
    """All states x all states: a step the table lists is taken, any other raises
    InvariantViolation (exit 96, a rawfetch bug) naming both states."""
    states = list(table)
    assert set(states) == set(type(states[0]))        # every state has its row
    refused = 0
    for now in states:
        for to in states:
            if to in table[now]:
                assert step(table, now, to, "out") is to
                continue
            with pytest.raises(E.InvariantViolation) as caught:
                step(table, now, to, "out")
            assert caught.value.exit_code == 96
            assert now.name in str(caught.value) and to.name in str(caught.value)
            refused += 1
    assert refused > len(states) ** 2 // 2


@pytest.mark.parametrize("table", [DISK_STEPS, PART_STEPS], ids=["SafeDisk", "PartFile"])
def test_every_state_can_end_and_ends_are_final(table):
    """No state is a trap: each reaches a final state (empty row); final means final."""
    finals = {state for state, nexts in table.items() if not nexts}
    for start in table:
        seen, todo = set(), [start]
        while todo:
            state = todo.pop()
            if state not in seen:
                seen.add(state)
                todo.extend(table[state])
        assert seen & finals, start


def test_a_failure_after_zeroing_can_only_end_wiped_or_preserved():
    """Once the target's start was zeroed, no step leads to ABANDONED (which would leave
    a half-written disk without undoing it), except from a streamed target's HEAD_WRITTEN."""
    for state in (D.HOLDING, D.WRITING, D.RESTARTED):
        assert D.ABANDONED not in DISK_STEPS[state]
        assert {D.WIPED, D.WIPE_FAILED, D.PRESERVED} <= DISK_STEPS[state]
    assert D.COMMITTED in DISK_STEPS[D.HEAD_WRITTEN] and len(DISK_STEPS[D.OPEN]) == 4


def test_every_sink_has_the_protocol(target, tmp_path):
    for sink in (PartFile(str(tmp_path / "f"), "http://h/f"), InPlace(target),
                 SafeDisk(InPlace(target))):
        assert isinstance(sink, Sink), type(sink).__name__
    assert isinstance(open_output(str(tmp_path / "g"), "http://h/g", False, True), PartFile)


# ---------------------------------------------------------------- SafeDisk paths
def test_fresh_path_holds_the_head_and_commits_the_exact_image(target):
    events: List[str] = []
    sink = safe_disk(target, events)
    sink.record(IDENTITY)
    sink.expect_size(len(IMAGE))
    sink.write(IMAGE[:3])
    assert sink.state is D.OPEN and on_disk(target) == OLD * 3 and events == []
    sink.write(IMAGE[3:MiB - 1])
    assert sink.state is D.HOLDING and on_disk(target, MiB) == bytes(MiB)
    assert not sink.splice_ready and sink.position() == MiB - 1
    sink.write(IMAGE[MiB - 1:MiB + 10])
    assert sink.state is D.WRITING and sink.splice_ready and sink.position() == MiB + 10
    feed(sink, IMAGE[MiB + 10:])
    assert on_disk(target, MiB) == bytes(MiB)             # the head is still held
    assert sink.commit(len(IMAGE)) is None
    assert sink.state is D.COMMITTED and sha(on_disk(target)) == sha(IMAGE)
    assert events == ["wipe", "head_written"]
    sink.abandon(keep=True)                               # download() calls it again
    assert sink.state is D.COMMITTED and sha(on_disk(target)) == sha(IMAGE)


def test_restarted_path_rechecks_the_head_and_zeroes_only_once(target):
    events: List[str] = []
    sink = safe_disk(target, events)
    feed(sink, IMAGE[:MiB + 5000])
    assert sink.state is D.WRITING
    sink.restart()
    assert sink.state is D.RESTARTED and not sink.splice_ready and sink.position() == 0
    sink.restart()                                       # twice in a row is legal
    assert sink.state is D.RESTARTED
    with pytest.raises(E.UnsupportedImageFormat) as caught:
        sink.write(QCOW + OTHER[4:])                     # the new start is checked again
    assert "nothing was written" not in str(caught.value)
    assert sink.state is D.RESTARTED
    sink.restart()
    feed(sink, OTHER)
    assert sink.state is D.WRITING
    sink.commit(len(OTHER))
    assert sink.state is D.COMMITTED and sha(on_disk(target)) == sha(OTHER)
    assert events == ["wipe", "head_written"]            # zeroed once, not per restart


def test_restart_before_the_check_stays_untouched(target):
    events: List[str] = []
    sink = safe_disk(target, events)
    sink.write(b"QF")
    sink.restart()
    assert sink.state is D.OPEN
    sink.abandon(keep=False)
    assert sink.state is D.ABANDONED and on_disk(target) == OLD * 3 and events == []


def test_failed_path_zeroes_the_start_again(target):
    events: List[str] = []
    sink = safe_disk(target, events)
    feed(sink, IMAGE[:MiB + 4096])
    sink.abandon(keep=True)                              # keep is ignored: not resumable
    assert sink.state is D.WIPED and on_disk(target, MiB) == bytes(MiB)
    assert events == ["wipe", "wipe_on_failure"] and sink.fd == -1
    sink.abandon(keep=False)
    assert events == ["wipe", "wipe_on_failure"]         # the second call does nothing


def test_failed_path_preserved_leaves_the_start_as_it_was(target):
    events: List[str] = []
    sink = safe_disk(target, events, preserve_on_error=True)
    feed(sink, IMAGE[:MiB + 4096])
    sink.abandon(keep=False)
    assert sink.state is D.PRESERVED and "wipe_on_failure" not in events
    assert on_disk(target, MiB + 4096) == bytes(MiB) + IMAGE[MiB:MiB + 4096]


def test_failed_before_any_output_leaves_the_target_untouched(target):
    events: List[str] = []
    sink = safe_disk(target, events)
    with pytest.raises(E.UnsupportedImageFormat) as caught:
        sink.write(QCOW + IMAGE[4:100])
    assert "nothing was written" in str(caught.value) and sink.state is D.OPEN
    sink.abandon(keep=False)
    assert sink.state is D.ABANDONED and on_disk(target) == OLD * 3 and events == []


def test_commit_of_the_wrong_size_wipes(target):
    events: List[str] = []
    sink = safe_disk(target, events)
    feed(sink, IMAGE)
    with pytest.raises(E.LocalWriteError):
        sink.commit(len(IMAGE) + 1)
    assert sink.state is D.WIPED and on_disk(target, MiB) == bytes(MiB)


def test_verified_path_reads_back_and_never_splices(target):
    events: List[str] = []
    sink = safe_disk(target, events, verify_written=True)
    feed(sink, IMAGE)
    assert sink.state is D.WRITING and not sink.splice_ready   # every byte must be digested
    with pytest.raises(E.InvariantViolation):
        sink.spliced(10)
    seconds = sink.commit(len(IMAGE))
    assert sink.state is D.COMMITTED and seconds is not None and seconds >= 0
    assert events == ["wipe", "head_written", "readback"] and sha(on_disk(target)) == sha(IMAGE)


def test_verified_mismatch_wipes_after_the_head_was_written(target):
    events: List[str] = []

    def flip(name: str, **_: Any) -> None:
        events.append(name)
        if name == "head_written":                       # another writer changes MiB 1
            fd = os.open(target, os.O_WRONLY)
            os.pwrite(fd, bytes([IMAGE[MiB + 7] ^ 0xFF]), MiB + 7)
            os.close(fd)

    sink = SafeDisk(InPlace(target), verify_written=True, emit=flip)
    sink.open()
    feed(sink, IMAGE)
    with pytest.raises(E.ReadBackMismatch) as caught:
        sink.commit(len(IMAGE))
    assert "MiB 1" in str(caught.value)
    assert sink.state is D.WIPED and on_disk(target, MiB) == bytes(MiB)
    assert events == ["wipe", "head_written", "readback", "wipe_on_failure"]


def test_small_image_commits_from_holding(target):
    """An image shorter than the held MiB never leaves HOLDING before commit."""
    sink = safe_disk(target, [])
    sink.write(IMAGE[:1000])
    assert sink.state is D.HOLDING
    sink.commit(1000)
    assert sink.state is D.COMMITTED and on_disk(target) == IMAGE[:1000]   # cut to size


def test_stream_target_checks_four_bytes_then_streams():
    sink = safe_disk("/dev/null", [])
    sink.write(IMAGE[:2])
    assert sink.state is D.OPEN and not sink.splice_ready and sink.position() is None
    sink.write(IMAGE[2:10])
    assert sink.state is D.STREAMING and sink.splice_ready
    sink.spliced(100)
    sink.restart()
    assert sink.state is D.OPEN
    with pytest.raises(E.UnsupportedImageFormat):
        sink.write(QCOW)
    sink.restart()
    feed(sink, IMAGE)
    sink.commit(len(IMAGE))
    assert sink.state is D.COMMITTED


# ---------------------------------------------------------------- SafeDisk: calls refused
def test_calls_in_the_wrong_state_are_refused_and_the_disk_still_wiped(target):
    events: List[str] = []
    fresh = SafeDisk(InPlace(target))
    for call in (lambda: fresh.write(b"x"), fresh.restart, lambda: fresh.commit(0),
                 lambda: fresh.spliced(1)):
        with pytest.raises(E.InvariantViolation):
            call()
    assert fresh.state is D.FRESH
    sink = safe_disk(target, events)
    with pytest.raises(E.InvariantViolation):
        sink.open()                                      # opened twice
    feed(sink, IMAGE[:5000])
    with pytest.raises(E.InvariantViolation):
        sink.spliced(4096)                               # the head is still being held
    assert sink.state is D.HOLDING
    sink.abandon(keep=False)                             # the bug is reported, disk safe
    assert sink.state is D.WIPED and on_disk(target, MiB) == bytes(MiB)
    for call in (lambda: sink.write(b"x"), sink.restart, lambda: sink.commit(5000),
                 lambda: sink.spliced(1), sink.open):
        with pytest.raises(E.InvariantViolation):
            call()
    assert sink.state is D.WIPED


def test_no_call_after_commit(target):
    sink = safe_disk(target, [])
    feed(sink, IMAGE)
    sink.commit(len(IMAGE))
    for call in (lambda: sink.write(b"x"), sink.restart, lambda: sink.commit(len(IMAGE)),
                 lambda: sink.spliced(1)):
        with pytest.raises(E.InvariantViolation):
            call()
    assert sink.state is D.COMMITTED and sha(on_disk(target)) == sha(IMAGE)


# ---------------------------------------------------------------- PartFile paths
def test_part_fresh_then_resumed_then_committed(tmp_path):
    path = str(tmp_path / "img")
    first = PartFile(path, "http://h/img")
    assert first.open() == (0, None) and first.state is P.OPEN
    first.record(IDENTITY)
    feed(first, IMAGE[:MiB])
    first.abandon(keep=True)
    assert first.state is P.KEPT and not os.path.exists(path + ".part.lock")
    assert on_disk(path + ".part") == IMAGE[:MiB]

    second = PartFile(path, "http://h/img")
    held, identity = second.open()
    assert (held, identity) == (MiB, IDENTITY) and second.state is P.OPEN
    feed(second, IMAGE[MiB:])
    assert second.position() == len(IMAGE)
    second.commit(len(IMAGE))
    assert second.state is P.COMMITTED and sha(on_disk(path)) == sha(IMAGE)
    assert sorted(os.listdir(str(tmp_path))) == ["img"]
    second.abandon(keep=True)                            # download() calls it again
    assert second.state is P.COMMITTED and sha(on_disk(path)) == sha(IMAGE)


def test_part_restarted_then_failed_discards_everything(tmp_path):
    path = str(tmp_path / "img")
    sink = PartFile(path, "http://h/img")
    sink.open()
    sink.record(IDENTITY)
    feed(sink, IMAGE[:MiB])
    sink.restart()
    assert sink.state is P.OPEN and sink.position() == 0 and sink.claim.verified == 0
    feed(sink, OTHER)
    sink.abandon(keep=False)
    assert sink.state is P.DISCARDED and os.listdir(str(tmp_path)) == []


def test_part_failed_commit_keeps_the_lock_until_abandon(tmp_path):
    """A commit that fails before the rename (here: the size does not add up) leaves the
    .part locked: no second writer may take it before abandon() decides its fate."""
    path = str(tmp_path / "img")
    sink = PartFile(path, "http://h/img")
    sink.open()
    sink.record(IDENTITY)
    feed(sink, IMAGE)
    with pytest.raises(E.LocalWriteError):
        sink.commit(len(IMAGE) + 1)
    assert sink.state is P.OPEN and os.path.exists(path + ".part.lock")
    with pytest.raises(E.OutputBusy):
        PartFile(path, "http://h/img").open()
    sink.abandon(keep=True)
    assert sink.state is P.KEPT and not os.path.exists(path)
    assert sorted(os.listdir(str(tmp_path))) == ["img.part", "img.part.json"]


def test_part_calls_in_the_wrong_state_are_refused(tmp_path):
    path = str(tmp_path / "img")
    sink = PartFile(path, "http://h/img")
    calls: Dict[str, Any] = {
        "write": lambda: sink.write(b"x"), "record": lambda: sink.record(IDENTITY),
        "restart": sink.restart, "spliced": lambda: sink.spliced(1),
        "position": sink.position, "commit": lambda: sink.commit(0)}
    for name, call in calls.items():
        with pytest.raises(E.InvariantViolation):
            call()
    assert os.listdir(str(tmp_path)) == []               # nothing was created
    sink.open()
    with pytest.raises(E.InvariantViolation):
        sink.open()
    sink.record(IDENTITY)
    feed(sink, IMAGE)
    sink.commit(len(IMAGE))
    for name, call in calls.items():
        with pytest.raises(E.InvariantViolation):
            call()
    assert sink.state is P.COMMITTED and sha(on_disk(path)) == sha(IMAGE)


def test_part_abandon_before_open_touches_nothing(tmp_path):
    """Another writer's .part is not ours to remove: abandon() of a sink that never got
    the lock leaves it alone."""
    path = str(tmp_path / "img")
    with open(path + ".part", "wb") as handle:
        handle.write(IMAGE[:1000])
    sink = PartFile(path, "http://h/img")
    sink.abandon(keep=False)
    assert sink.state is P.CLOSED and on_disk(path + ".part") == IMAGE[:1000]


def test_the_documented_tables_are_the_code():
    """docs/sinks.md shows both tables; a step added or dropped in the code without the
    doc (or the other way round) fails here."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "docs", "sinks.md"), encoding="utf-8") as handle:
        text = handle.read()
    block = text[text.index("<!-- states:begin -->"):text.index("<!-- states:end -->")]
    documented: List[Any] = []
    for line in block.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].isupper():
            documented.append((cells[0], cells[1], cells[2]))
    expected = [(state.name, ", ".join(sorted(s.name for s in nexts)) or "(final)", state.value)
                for table in (PART_STEPS, DISK_STEPS) for state, nexts in table.items()]
    assert documented == expected
