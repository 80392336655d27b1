"""Delta re-imaging's plan (issue 24): the survey of a real target file against published
piece hashes, and the Range plan built from it.

Each plan is then applied the way the pipeline will (head kept first, first MiB zeroed
first and written last, only the planned ranges copied from the image) and the target's
sha-256 must equal the image's: a plan that misses a byte fails here. The survey runs on
1, 2 and 3 threads (its "chunkings") and must give the same answer on each.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Iterable, Tuple

import pytest

from rawfetch import delta
from rawfetch.delta import COALESCE_GAP, ByteRange, Plan, hash_target, plan_ranges
from rawfetch.disk import HEAD_HOLD
from rawfetch.errors import InvariantViolation, LocalWriteError
from rawfetch.metalink import Pieces
from rawfetch.metalink.make import describe

pytestmark = pytest.mark.timeout(120)
MiB = 1 << 20
PIECE = 3 * MiB // 2          # not a multiple of delta.READ_BLOCK: reads cross it
COUNT = 12
SIZE = (COUNT - 1) * PIECE + 4321   # a short last piece
THREADS = [1, 2, 3]


def noise(seed: object, size: int) -> bytes:
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, "little")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Tuple[bytes, Pieces]:
    data = noise("image", SIZE)
    path = tmp_path_factory.mktemp("img") / "disk.img"
    path.write_bytes(data)
    item = describe(str(path), ["http://master/disk.img"], piece_size=PIECE)
    return data, item.pieces[0]


def changed(data: bytes, indexes: Iterable[int], length: int = PIECE) -> bytes:
    """The image with one byte in each of these pieces altered (last week's image)."""
    old = bytearray(data)
    for index in indexes:
        old[min(index * length + 99, len(old) - 1)] ^= 0xFF
    return bytes(old)


def apply(plan: Plan, image: bytes, target: Path) -> int:
    """Re-image `target` by the plan as the pipeline will; return the bytes fetched."""
    fetched = 0
    with open(str(target), "r+b") as handle:
        kept = b""
        if plan.head is not None and not plan.head_fetch:
            handle.seek(0)
            kept = handle.read(min(HEAD_HOLD, plan.head.length))   # kept before any write
        if plan.head is not None:
            handle.seek(0)
            handle.write(bytes(min(HEAD_HOLD, plan.size)))          # zeroed first
        for part in plan.requests():
            body = image[part.first:part.last + 1]                  # "the server's bytes"
            assert len(body) == part.length
            fetched += part.length
            if part.first == 0:
                kept, body = body[:HEAD_HOLD], body[HEAD_HOLD:]
                handle.seek(HEAD_HOLD)
            else:
                assert part.first >= HEAD_HOLD
                handle.seek(part.first)
            handle.write(body)
        handle.truncate(len(image))
        if plan.head is not None:
            handle.seek(0)
            handle.write(kept)                                      # written last
    return fetched


def check_shape(plan: Plan) -> None:
    parts = plan.requests()
    assert all(0 <= p.first <= p.last < plan.size for p in parts)
    assert all(a.last + 1 < b.first for a, b in zip(parts, parts[1:]))   # ascending, apart
    if plan.head is not None and not plan.head_fetch:
        assert all(p.first > plan.head.last for p in parts)


@pytest.mark.parametrize("threads", THREADS)
def test_an_identical_target_needs_nothing(published, tmp_path, threads):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(data)
    assert hash_target(str(target), pieces, SIZE, threads) == []
    plan = plan_ranges([], pieces, SIZE)
    assert plan == Plan(SIZE, (), None, False, ()) and plan.fetch_bytes == 0 and not plan.full


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("indexes", [[5], [3, 7], [COUNT - 1], [0], [0, 9], [4, 5, 6]])
def test_changed_pieces_are_found_and_the_plan_rebuilds_the_image(published, tmp_path,
                                                                  threads, indexes):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(changed(data, indexes))
    found = hash_target(str(target), pieces, SIZE, threads)
    assert found == indexes
    plan = plan_ranges(found, pieces, SIZE, coalesce_gap=0)
    check_shape(plan)
    assert plan.head_fetch == (0 in indexes) and plan.head == ByteRange(0, PIECE - 1)
    fetched = apply(plan, data, target)
    assert sha(target.read_bytes()) == sha(data)
    assert fetched == sum(pieces.span(i, SIZE)[1] for i in indexes)   # those pieces only


def test_an_open_fd_is_surveyed_like_a_path(published, tmp_path):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(changed(data, [2]))
    fd = os.open(str(target), os.O_RDONLY)
    try:
        assert hash_target(fd, pieces, SIZE) == [2]
        assert os.lseek(fd, 0, os.SEEK_CUR) == os.lseek(fd, 0, os.SEEK_END)  # pread only
    finally:
        os.close(fd)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("held, first_missing", [(0, 0), (PIECE, 1), (5 * PIECE + 1, 5),
                                                 (SIZE - 1, COUNT - 1)])
def test_a_short_target_lacks_its_missing_and_cut_pieces(published, tmp_path, threads, held,
                                                         first_missing):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(data[:held])
    found = hash_target(str(target), pieces, SIZE, threads)
    assert found == list(range(first_missing, COUNT))
    plan = plan_ranges(found, pieces, SIZE)
    check_shape(plan)
    apply(plan, data, target)
    assert sha(target.read_bytes()) == sha(data)


def test_a_target_larger_than_the_image_is_judged_on_the_image_only(published, tmp_path):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(changed(data, [4]) + noise("tail", 3 * PIECE))
    assert hash_target(str(target), pieces, SIZE) == [4]


@pytest.mark.parametrize("threads", THREADS)
def test_a_garbage_target_becomes_one_full_download(published, tmp_path, threads):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(noise("garbage", SIZE))
    found = hash_target(str(target), pieces, SIZE, threads)
    assert found == list(range(COUNT))
    plan = plan_ranges(found, pieces, SIZE)
    assert plan.full and plan.requests() == (ByteRange(0, SIZE - 1),)
    assert plan.requests()[0].header == "bytes=0-%d" % (SIZE - 1)
    assert apply(plan, data, target) == SIZE and sha(target.read_bytes()) == sha(data)


def test_neighbours_and_small_gaps_coalesce_large_gaps_do_not(published):
    _, pieces = published
    assert plan_ranges([3, 4, 5], pieces, SIZE, coalesce_gap=0).body == \
        (ByteRange(3 * PIECE, 6 * PIECE - 1),)
    apart = plan_ranges([3, 5], pieces, SIZE, coalesce_gap=PIECE - 1).body
    assert apart == (ByteRange(3 * PIECE, 4 * PIECE - 1), ByteRange(5 * PIECE, 6 * PIECE - 1))
    joined = plan_ranges([3, 5], pieces, SIZE, coalesce_gap=PIECE).body
    assert joined == (ByteRange(3 * PIECE, 6 * PIECE - 1),)
    assert plan_ranges([5, 3, 3, 5], pieces, SIZE, coalesce_gap=PIECE) == \
        plan_ranges([3, 5], pieces, SIZE, coalesce_gap=PIECE)   # order and repeats
    assert plan_ranges([COUNT - 1], pieces, SIZE).body == \
        (ByteRange((COUNT - 1) * PIECE, SIZE - 1),)             # the short last piece


def test_the_default_gap_is_one_mib_of_good_bytes():
    pieces = Pieces("sha-256", 256 << 10, bytes(32) * 64)      # 16 MiB in 256 KiB pieces
    size = 16 * MiB
    near = plan_ranges([10, 14], pieces, size).body            # 3 pieces = 768 KiB apart
    assert near == (ByteRange(10 << 18, (15 << 18) - 1),)
    far = plan_ranges([10, 15], pieces, size).body             # 4 pieces = 1 MiB: joined
    assert len(far) == 1 and COALESCE_GAP == MiB
    farther = plan_ranges([10, 16], pieces, size).body         # 5 pieces: apart
    assert len(farther) == 2


def test_too_many_runs_are_merged_across_the_smallest_gaps():
    """Every other piece changed: thousands of runs would be thousands of requests."""
    pieces = Pieces("sha-256", 64 << 10, bytes(32) * 4096)     # 256 MiB in 64 KiB pieces
    size = 4096 * (64 << 10)
    every_other = list(range(16, 4096, 2))
    plan = plan_ranges(every_other, pieces, size, coalesce_gap=0)
    assert len(plan.body) <= delta.MAX_RANGES
    covered = set()
    for part in plan.body:
        covered.update(range(part.first // (64 << 10), part.last // (64 << 10) + 1))
    assert set(every_other) <= covered
    few = plan_ranges(every_other, pieces, size, coalesce_gap=0, max_ranges=4)
    assert len(few.body) <= 4
    wide = plan_ranges([16, 17, 100, 2000, 2001], pieces, size, coalesce_gap=0, max_ranges=2)
    assert wide.body == (ByteRange(16 << 16, (101 << 16) - 1),
                         ByteRange(2000 << 16, (2002 << 16) - 1))   # the big gap stays


def test_head_first_rule_with_pieces_smaller_than_the_first_mib():
    """64 KiB pieces: 16 of them hold the first MiB. One of them differing means the whole
    first MiB is fetched first (the caller holds it and writes it last); none differing
    means it is read from the target and kept, and no request touches it."""
    length = 64 << 10
    pieces = Pieces("sha-256", length, bytes(32) * 64)         # 4 MiB
    size = 64 * length
    plan = plan_ranges([3, 40], pieces, size, coalesce_gap=0)
    assert plan.head == ByteRange(0, MiB - 1) and plan.head_fetch
    assert plan.requests() == (ByteRange(0, MiB - 1), ByteRange(40 * length, 41 * length - 1))
    kept = plan_ranges([40], pieces, size, coalesce_gap=0)
    assert kept.head == ByteRange(0, MiB - 1) and not kept.head_fetch
    assert kept.requests() == (ByteRange(40 * length, 41 * length - 1),)
    touching = plan_ranges([15, 16], pieces, size, coalesce_gap=0)
    assert touching.requests() == (ByteRange(0, 17 * length - 1),)   # head merged, first


def test_an_image_smaller_than_the_first_mib_is_all_head():
    pieces = Pieces("sha-256", 100, bytes(32) * 5)
    plan = plan_ranges([2], pieces, 450, coalesce_gap=0)
    assert plan.head == ByteRange(0, 449) and plan.head_fetch and plan.full


def test_head_rebuilds_the_image_when_only_the_first_piece_is_good(published, tmp_path):
    data, pieces = published
    target = tmp_path / "disk"
    target.write_bytes(changed(data, range(1, COUNT)))
    plan = plan_ranges(hash_target(str(target), pieces, SIZE), pieces, SIZE)
    assert not plan.head_fetch and plan.requests() == (ByteRange(PIECE, SIZE - 1),)
    assert apply(plan, data, target) == SIZE - PIECE and sha(target.read_bytes()) == sha(data)


def test_indexes_outside_the_piece_list_and_a_wrong_size_are_refused(published):
    _, pieces = published
    for bad in ([COUNT], [-1]):
        with pytest.raises(InvariantViolation, match="outside"):
            plan_ranges(bad, pieces, SIZE)
    with pytest.raises(InvariantViolation, match="do not cover"):
        plan_ranges([1], pieces, SIZE + PIECE)
    with pytest.raises(InvariantViolation, match="do not cover"):
        hash_target("/nonexistent", pieces, SIZE - PIECE)


def test_an_unreadable_target_is_a_local_write_error(published, tmp_path):
    _, pieces = published
    with pytest.raises(LocalWriteError, match="missing"):
        hash_target(str(tmp_path / "missing"), pieces, SIZE)
    with pytest.raises(LocalWriteError, match="surveying"):
        hash_target(str(tmp_path), pieces, SIZE)        # a directory: EISDIR on pread


def test_an_empty_image_has_nothing_to_survey_or_plan(tmp_path):
    target = tmp_path / "disk"
    target.write_bytes(b"old")
    pieces = Pieces("sha-256", 1024, b"")
    assert hash_target(str(target), pieces, 0) == []
    assert plan_ranges([], pieces, 0).requests() == ()


def test_the_survey_reads_in_constant_memory(tmp_path):
    """64 MiB in 8 MiB pieces: memory is the read buffers, not the pieces."""
    import tracemalloc
    block = noise("block", MiB)
    target = tmp_path / "disk"
    with open(str(target), "wb") as handle:
        for _ in range(64):
            handle.write(block)
    pieces = Pieces("sha-256", 8 * MiB, hashlib.sha256(block * 8).digest() * 8)
    tracemalloc.start()
    found = hash_target(str(target), pieces, 64 * MiB, threads=2)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert found == [] and peak < 2 * delta.READ_BLOCK + MiB, peak


# ------------------------------------------------------------------ walk: the plan as the survey goes

@pytest.mark.parametrize("seed", range(60))
def test_walk_asks_what_plan_ranges_asks_and_says_only_true_offsets(seed):
    """Random sets of differing pieces (and piece lengths around the 1 MiB head): walk's
    requests are plan_ranges' requests, in order; every offset it yields between them
    is past every range yielded before and before any range still to come, and the
    last one (or the last range) reaches the image's end when the tail is good."""
    rng = random.Random(seed)
    length = rng.choice([64 << 10, 256 << 10, 1 << 20, 3 << 20])
    count = rng.randint(1, 60)
    size = (count - 1) * length + rng.randint(1, length)
    pieces = Pieces("sha-256", length, bytes(32 * count))
    share = rng.choice([0.0, 0.05, 0.3, 0.9, 1.0])
    differing = sorted(i for i in range(count) if rng.random() < share)
    asked = []
    good = 0
    for step in delta.walk(differing.__contains__, pieces, size):
        if isinstance(step, int):
            assert all(r.last < step for r in asked) and step > good
            good = step
        else:
            assert step.first >= good
            asked.append(step)
    assert tuple(asked) == plan_ranges(differing, pieces, size).requests()
    missing = set(differing)
    for r in asked:
        missing -= set(range(r.first // length, r.last // length + 1))
    assert not missing


def test_walk_keeps_the_request_cap():
    """Every other piece differs: past MAX_RANGES // 2 requests the rest is planned at
    once, and the total stays within the cap."""
    count = 4 * delta.MAX_RANGES
    length = 1 << 20
    pieces = Pieces("sha-256", length, bytes(32 * count))
    differing = set(range(0, count, 3))
    asked = [s for s in delta.walk(differing.__contains__, pieces, count * length,
                                   coalesce_gap=0) if not isinstance(s, int)]
    assert len(asked) <= delta.MAX_RANGES
    covered = set()
    for r in asked:
        covered |= set(range(r.first // length, r.last // length + 1))
    assert differing <= covered
