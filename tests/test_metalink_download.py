"""Metalink in real downloads (issue 24): --metalink/metalink= as input, and every piece
checked as it is written into the .part. Real sockets: two in-repo fault servers, one
of them serving a copy with one bit flipped in one piece."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

from rawfetch import files
from rawfetch.errors import MetalinkError, PieceMismatch
from rawfetch.metalink.make import describe, to_xml
from tests.faultserver import FaultServer, actions as A, make_body

MiB = 1 << 20
PIECE = MiB
BAD = 5                                   # the piece the lying mirror corrupts
IMAGE = make_body(6 * MiB + 777, seed=24)
BAD_IMAGE = bytearray(IMAGE)
BAD_IMAGE[BAD * PIECE + 100] ^= 0x01
ROOT = Path(__file__).resolve().parent.parent


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def mirrors(tmp_path) -> Iterator:
    """publish([lying, ...]): one fault server per flag (True: piece BAD corrupted), a
    .meta4 from `make` listing them in that order, ranked 1, 2..."""
    servers: List[FaultServer] = []

    def publish(lying: List[bool], image: bytes = IMAGE) -> Path:
        (tmp_path / "disk.img").write_bytes(image)
        for flag in lying:
            servers.append(FaultServer().start())
            servers[-1].add("/disk.img", bytes(BAD_IMAGE) if flag else image)
        item = describe(str(tmp_path / "disk.img"),
                        [srv.url("/disk.img") for srv in servers], PIECE)
        meta4 = tmp_path / "disk.img.meta4"
        meta4.write_text(to_xml([item]))
        return meta4

    publish.servers = servers   # type: ignore[attr-defined]
    yield publish
    for srv in servers:
        srv.stop()


def ranges(server: FaultServer) -> List[object]:
    return [request.range for request in server.requests]


@contextmanager
def liar_and_good(tmp_path, name: str, data: bytes, bad_at: int,
                  piece: int) -> Iterator[Tuple[FaultServer, FaultServer]]:
    """Two fault servers serving /`name`: the first with the byte at `bad_at` flipped,
    the second as published; tmp_path/x.meta4 lists them in that order, `piece` bytes
    a piece (the published file is tmp_path/`name`)."""
    lying = bytearray(data)
    lying[bad_at] ^= 0x01
    (tmp_path / name).write_bytes(data)
    liar, good = FaultServer().start(), FaultServer().start()
    try:
        liar.add("/" + name, bytes(lying))
        good.add("/" + name, data)
        item = describe(str(tmp_path / name), [liar.url("/" + name), good.url("/" + name)],
                        piece)
        (tmp_path / "x.meta4").write_text(to_xml([item]))
        yield liar, good
    finally:
        liar.stop()
        good.stop()


def test_a_bad_piece_is_refetched_alone_from_the_next_mirror(mirrors, tmp_path):
    meta4 = mirrors([True, False])
    liar, good = mirrors.servers
    events: list = []
    out = tmp_path / "out.img"
    result = files.download(None, out, metalink=str(meta4), on_event=events.append,
                            retry_delay=0.01)
    assert sha(out.read_bytes()) == sha(IMAGE)
    assert ranges(liar) == [None]
    assert ranges(good) == ["bytes=%d-" % (BAD * PIECE)]     # only from the bad piece on
    bad = [e for e in events if e["event"] == "piece_bad"]
    fixed = [e for e in events if e["event"] == "piece_fixed"]
    assert [(e["index"], e["offset"], e["length"], e["url"]) for e in bad] == \
        [(BAD, BAD * PIECE, PIECE, liar.url("/disk.img"))]
    assert [(e["index"], e["url"]) for e in fixed] == [(BAD, good.url("/disk.img"))]
    assert [(s.url, s.start, s.end) for s in result.segments] == [
        (liar.url("/disk.img"), 0, BAD * PIECE), (good.url("/disk.img"), BAD * PIECE, len(IMAGE))]
    assert result.digest == "sha256:" + sha(IMAGE)
    assert not (tmp_path / "out.img.part").exists()


def test_without_the_whole_file_hash_the_pieces_alone_repair(mirrors, tmp_path):
    """The receiving (non-splice) path: no whole-file hash, pieces only; a mirror
    given with --checksum-less metalink still gets the piece refetched."""
    meta4 = mirrors([True, False])
    text = meta4.read_text()
    start = text.index("<hash ")
    meta4.write_text(text[:start] + text[text.index("</hash>") + len("</hash>"):])
    out = tmp_path / "out.img"
    result = files.download(None, out, metalink=str(meta4), retry_delay=0.01)
    assert sha(out.read_bytes()) == sha(IMAGE)
    assert result.digest is None
    assert ranges(mirrors.servers[1]) == ["bytes=%d-" % (BAD * PIECE)]


def test_the_only_mirror_lying_is_retried_then_piece_mismatch(mirrors, tmp_path):
    meta4 = mirrors([True])
    liar = mirrors.servers[0]
    out = tmp_path / "out.img"
    with pytest.raises(PieceMismatch) as caught:
        files.download(None, out, metalink=str(meta4), retries=2, retry_delay=0.01)
    assert caught.value.index == BAD and caught.value.offset == BAD * PIECE
    assert caught.value.exit_code == 99
    assert ranges(liar) == [None] + ["bytes=%d-" % (BAD * PIECE)] * 2   # retries=2
    assert not out.exists()


def test_max_time_bounds_a_lying_mirror(mirrors, tmp_path):
    """Retries to spare, a fixed backoff of 0.4 s: max_time ends the job, with the piece
    error when no backoff fits in what is left (never before 4 backoffs: 1.6 s), or the
    deadline itself when it falls inside an attempt (a loaded machine)."""
    import time
    from rawfetch.errors import DeadlineExceeded
    meta4 = mirrors([True])
    out = tmp_path / "out.img"
    started = time.monotonic()
    with pytest.raises((PieceMismatch, DeadlineExceeded)) as caught:
        files.download(None, out, metalink=str(meta4), retries=1000, retry_delay=0.4,
                       retry_max_delay=0.4, retry_jitter=False, max_time=2.0)
    assert time.monotonic() - started >= 1.6
    assert "max_time" in str(caught.value)
    assert 2 <= len(mirrors.servers[0].requests) <= 6     # 2 s / 0.4 s backoff, at most
    assert not out.exists()


def test_the_command_fetches_a_metalink_from_a_url_and_exits_99_on_a_lying_mirror(
        mirrors, tmp_path):
    meta4 = mirrors([True])
    mirrors.servers[0].add("/disk.img.meta4", meta4.read_bytes())
    out = tmp_path / "got.img"
    done = subprocess.run([sys.executable, "-m", "rawfetch", "--metalink",
                           mirrors.servers[0].url("/disk.img.meta4"), "-o", str(out),
                           "--retries", "1", "--retry-delay", "0.01"],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))
    assert done.returncode == 99, done.stderr
    assert "piece 5" in done.stderr and not out.exists()


def test_the_command_downloads_from_a_metalink_file_alone(mirrors, tmp_path):
    meta4 = mirrors([False])
    out = tmp_path / "got.img"
    done = subprocess.run([sys.executable, "-m", "rawfetch", "--metalink", str(meta4),
                           "-o", str(out)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sha(out.read_bytes()) == sha(IMAGE)


HOSTILE = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
           b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
           b'<metalink xmlns="urn:ietf:params:xml:ns:metalink"><file name="a">'
           b'<url>http://127.0.0.1:1/&lol2;</url></file></metalink>')


def test_a_hostile_metalink_from_a_url_is_refused_before_any_image_request(tmp_path):
    with FaultServer() as server:
        server.add("/evil.meta4", HOSTILE)
        with pytest.raises(MetalinkError) as caught:
            files.download(None, tmp_path / "out", metalink=server.url("/evil.meta4"))
        assert [r.path for r in server.requests] == ["/evil.meta4"]
    assert caught.value.exit_code == 98 and "DOCTYPE" in str(caught.value).upper()
    assert not (tmp_path / "out").exists()


def test_a_huge_metalink_from_a_url_is_refused_at_the_cap(tmp_path):
    from rawfetch.metalink import MAX_DOCUMENT_BYTES
    with FaultServer() as server:
        server.add("/big.meta4", b"<metalink>" + b" " * (MAX_DOCUMENT_BYTES + MiB))
        with pytest.raises(MetalinkError):
            files.download(None, tmp_path / "out", metalink=server.url("/big.meta4"))


def test_a_mirror_serving_another_size_is_left_for_the_next(mirrors, tmp_path):
    meta4 = mirrors([False, False])
    wrong, good = mirrors.servers
    wrong.add("/disk.img", IMAGE + b"extra")
    out = tmp_path / "out.img"
    events: list = []
    files.download(None, out, metalink=str(meta4), on_event=events.append)
    assert sha(out.read_bytes()) == sha(IMAGE)
    errors = [e for e in events if e["event"] == "error"]
    assert errors and "Metalink says %d" % len(IMAGE) in errors[0]["message"]
    assert len(good.requests) == 1


def test_an_explicit_checksum_contradicting_the_metalink_fetches_nothing(mirrors, tmp_path):
    meta4 = mirrors([False])
    with pytest.raises(MetalinkError):
        files.download(None, tmp_path / "out", metalink=str(meta4),
                       checksum="sha256:" + "0" * 64)
    assert mirrors.servers[0].requests == []


def test_a_part_with_a_bad_piece_from_a_crashed_run_is_cut_back_to_it(mirrors, tmp_path):
    """An earlier run left 4 pieces + a bit, piece 2 wrong: this run asks from piece 2."""
    meta4 = mirrors([False])
    out = tmp_path / "out.img"
    held = bytearray(IMAGE[:4 * PIECE + 1000])
    held[2 * PIECE + 7] ^= 0x80
    part = Path(str(out) + ".part")     # what a crash leaves: the .part and its sidecar
    from rawfetch import sidecar as sc
    from rawfetch.judge import Identity
    part.write_bytes(bytes(held))
    server = mirrors.servers[0]
    sc.write(str(part) + ".json", server.url("/disk.img"),
             Identity(len(IMAGE), server.resource("/disk.img").etag, None), len(held))
    before = len(server.requests)
    events: list = []
    result = files.download(None, out, metalink=str(meta4), on_event=events.append)
    assert sha(out.read_bytes()) == sha(IMAGE)
    assert ranges(server)[before:] == ["bytes=%d-" % (2 * PIECE)]
    assert result.resumed_from == 2 * PIECE
    assert [(e["index"], e["url"]) for e in events if e["event"] == "piece_bad"] == \
        [(2, "an earlier run")]


def test_the_timeline_marks_the_bad_piece_and_its_fix(mirrors, tmp_path):
    from rawfetch import timeline as T
    meta4 = mirrors([True, False])
    liar, good = mirrors.servers
    events: list = []
    files.download(None, tmp_path / "out.img", metalink=str(meta4), on_event=events.append,
                   retry_delay=0.01)
    line = T.build_timeline(events)
    assert [(m.offset, m.label) for m in line.pieces] == [
        (BAD * PIECE, "piece 5 bad from %s" % T._short(liar.url("/disk.img"))),
        (BAD * PIECE, "piece 5 fixed by %s" % T._short(good.url("/disk.img")))]
    assert "1 bad pieces" in T.title_lines(line)[1]
    pytest.importorskip("matplotlib")
    from tests.test_timeline import has_colour, read_png
    picture = str(tmp_path / "timeline.png")
    T.draw(line, picture)
    colours = set(read_png(picture)[2])
    assert has_colour(colours, T.PIECE_FIXED_COLOUR) and has_colour(colours, T.ERROR_COLOUR)


@pytest.mark.parametrize("bad_at", [BAD * PIECE + 100, 100, PIECE // 2 + 3])
@pytest.mark.parametrize("piece", [PIECE, 256 << 10])
def test_in_place_a_bad_piece_is_rewritten_from_the_next_mirror(mirrors, tmp_path, bad_at,
                                                                 piece):
    """--in-place onto a longer file holding other bytes: the delta re-imaging path
    (docs/delta.md) finds every piece different and fetches the image as one closed
    range; after a bad piece past the held first MiB, inside it, or piece 0, the next
    mirror is asked for the rest of the range from that piece's first byte. The target
    ends byte-exact."""
    with liar_and_good(tmp_path, "disk.img", IMAGE, bad_at, piece) as (liar, good):
        target = tmp_path / "target"
        target.write_bytes(b"\x5a" * (len(IMAGE) + 12345))
        events: list = []
        files.download(None, target, metalink=str(tmp_path / "x.meta4"), in_place=True,
                       on_event=events.append, retry_delay=0.01)
        assert sha(target.read_bytes()) == sha(IMAGE)
        start = bad_at - bad_at % piece
        # the rest of the one range, from the bad piece's first byte (inside the held
        # first MiB too: its verified pieces are kept)
        assert ranges(good) == ["bytes=%d-%d" % (start, len(IMAGE) - 1)]
        assert [e["offset"] for e in events if e["event"] == "piece_bad"] == [start]
        assert [e["index"] for e in events if e["event"] == "piece_fixed"] == [start // piece]


def test_to_stdout_holds_each_piece_back_until_it_verifies(mirrors, tmp_path):
    """-o -: bytes written cannot be taken back, so each piece is held until it verifies;
    the bad one is dropped and fetched from the next mirror; stdout is byte-exact."""
    meta4 = mirrors([True, False])
    liar, good = mirrors.servers
    done = subprocess.run([sys.executable, "-m", "rawfetch", "--metalink", str(meta4),
                           "-o", "-", "--retry-delay", "0.01", "--log-json",
                           str(tmp_path / "log.jsonl")],
                          capture_output=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sha(done.stdout) == sha(IMAGE)
    assert ranges(good) == ["bytes=%d-" % (BAD * PIECE)]
    log = (tmp_path / "log.jsonl").read_text()
    assert '"piece_bad"' in log and '"piece_fixed"' in log


def test_a_decoder_checks_the_pieces_of_the_published_bytes(tmp_path):
    """--decompress xz: the pieces are of the .xz as published; a bad one is held back,
    dropped and refetched before the decoder sees it."""
    import lzma
    packed = lzma.compress(IMAGE, preset=0)
    with liar_and_good(tmp_path, "disk.img.xz", packed, len(packed) // 2, 64 << 10) as (
            liar, good):
        out = tmp_path / "disk.img"
        events: list = []
        result = files.download(None, out, metalink=str(tmp_path / "x.meta4"),
                                decompress="xz", on_event=events.append, retry_delay=0.01)
        assert sha(out.read_bytes()) == sha(IMAGE)
        bad_start = (len(packed) // 2) // (64 << 10) * (64 << 10)
        assert ranges(good) == ["bytes=%d-" % bad_start]
        assert result.digest == "sha256:" + sha(packed)
        assert [e["offset"] for e in events if e["event"] == "piece_bad"] == [bad_start]


def test_pieces_too_long_to_hold_are_left_to_the_whole_file_hash(tmp_path):
    from rawfetch.piececheck import MAX_HELD_PIECE
    image = make_body(MAX_HELD_PIECE * 2 + 5, seed=3)
    (tmp_path / "big.img").write_bytes(image)
    with FaultServer() as server:
        server.add("/big.img", image)
        item = describe(str(tmp_path / "big.img"), [server.url("/big.img")],
                        MAX_HELD_PIECE * 2)
        (tmp_path / "x.meta4").write_text(to_xml([item]))
        events: list = []
        out = tmp_path / "out"
        files.download(None, out, metalink=str(tmp_path / "x.meta4"), decompress="auto",
                       on_event=events.append)
    assert sha(out.read_bytes()) == sha(image)
    assert [e["length"] for e in events if e["event"] == "pieces_unchecked"] == [
        MAX_HELD_PIECE * 2]


def test_open_takes_the_mirrors_and_hash_of_a_metalink(mirrors, tmp_path):
    """rawfetch.open(None, metalink=...): the first mirror 404s, the Metalink's second
    serves; the whole-file hash is verified at the end (pieces are not checked there)."""
    import rawfetch
    meta4 = mirrors([False, False])
    mirrors.servers[0].add("/disk.img", b"gone", etag=None)
    mirrors.servers[0].script([A.status(404)], path="/disk.img")
    events: list = []
    with rawfetch.open(None, metalink=str(meta4), on_event=events.append) as stream:
        data = stream.read()
    assert sha(data) == sha(IMAGE) and stream.digest == "sha256:" + sha(IMAGE)
    assert [e["event"] for e in events if e["event"] == "pieces_unchecked"] == [
        "pieces_unchecked"]


def test_an_entry_point_that_would_ignore_a_metalink_refuses_it():
    from rawfetch.errors import InvalidRequest
    from rawfetch.options import Options
    from rawfetch.resume import open_stream
    with pytest.raises(InvalidRequest, match="metalink"):
        open_stream("http://127.0.0.1:9/x", Options(metalink="x.meta4"))


def test_an_explicit_url_comes_first_and_the_metalink_mirrors_follow(mirrors, tmp_path):
    """`rawfetch URL --metalink FILE`: the operator's URL is asked first (here it is
    gone: 404), then the Metalink's mirror serves; -O without a URL is a usage error."""
    meta4 = mirrors([False])
    with FaultServer() as dead:
        dead.add("/disk.img", b"", etag=None)
        dead.script([A.status(404)],
                    path="/disk.img")
        out = tmp_path / "got.img"
        done = subprocess.run([sys.executable, "-m", "rawfetch", dead.url("/disk.img"),
                               "--metalink", str(meta4), "-o", str(out)],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert [r.path for r in dead.requests] == ["/disk.img"]
    assert sha(out.read_bytes()) == sha(IMAGE)
    assert ranges(mirrors.servers[0]) == [None]
    usage = subprocess.run([sys.executable, "-m", "rawfetch", "--metalink", str(meta4), "-O"],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))
    assert usage.returncode == 2 and "-O takes its name from the URL" in usage.stderr


def test_metalink_location_puts_that_countrys_mirrors_first(mirrors, tmp_path):
    """--metalink-location de: the mirror at location="de" (ranked 2) is asked first and
    serves every byte; the one ranked 1 elsewhere is never asked. Without the option the
    rank decides. A location that is not two letters, or one without a Metalink, is a
    usage error (exit 3) before any request."""
    from dataclasses import replace
    from rawfetch.metalink import load
    meta4 = mirrors([False, False])
    first, second = mirrors.servers
    item = load(str(meta4))
    placed = (replace(item.mirrors[0], location="us"), replace(item.mirrors[1], location="de"))
    meta4.write_text(to_xml([replace(item, mirrors=placed)]))

    def fetch(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rawfetch", "--metalink", str(meta4),
                               "-o", str(tmp_path / "got.img"), *extra],
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))

    done = fetch("--metalink-location", "DE")
    assert done.returncode == 0, done.stderr
    assert sha((tmp_path / "got.img").read_bytes()) == sha(IMAGE)
    assert (ranges(first), ranges(second)) == ([], [None])
    (tmp_path / "got.img").unlink()
    done = fetch()
    assert done.returncode == 0, done.stderr
    assert (ranges(first), ranges(second)) == ([None], [None])
    for bad in (["--metalink-location", "deu"], ["--metalink-location", "d1"]):
        refused = fetch(*bad)
        assert refused.returncode == 3 and "ISO 3166-1" in refused.stderr, refused.stderr
    alone = subprocess.run([sys.executable, "-m", "rawfetch", first.url("/disk.img"), "-o",
                            str(tmp_path / "x.img"), "--metalink-location", "de"],
                           capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(tmp_path))
    assert alone.returncode == 3 and "metalink_location needs metalink" in alone.stderr
    assert (ranges(first), ranges(second)) == ([None], [None])
