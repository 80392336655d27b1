"""The timeline picture: events -> segments (pure), and a real PNG from a real faulty
download through the fault server, read back with zlib/struct (no PIL)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from typing import List, Set, Tuple

import pytest

from rawfetch import timeline as T
from tests.conftest import BODY_SIZE
from tests.inprocess import run_main
from tests.faultserver import FaultServer, actions as A, make_body

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
M1, M2 = "http://m1/img", "http://m2/img"


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


needs_matplotlib = pytest.mark.skipif(
    not have_matplotlib(), reason="matplotlib missing: " + T.INSTALL_LINE)


def ev(name: str, time: float, **fields) -> dict:
    return dict(event=name, time=1000.0 + time, url=fields.pop("url", M1), **fields)


STORY = [   # a mirror that resets then 404s, a master that stalls, is busy, changes
    ev("request", 0.0, attempt=1, offset=0, range=None),
    ev("response", 0.1, status=200, attempt=1),
    ev("progress", 0.5, attempt=1, offset=400),
    ev("error", 1.0, error="ReceiveError", message="reset", offset=1000, attempt=1),
    ev("backoff", 1.0, seconds=0.0, attempt=1),
    ev("request", 1.0, attempt=2, offset=1000, range="bytes=1000-"),
    ev("error", 1.1, error="HTTPStatusError", message="HTTP 404 Not Found", offset=1000),
    ev("mirror", 1.1, previous=M1, mirror=M2, offset=1000, why="HTTPStatusError"),
    ev("request", 1.1, url=M2, attempt=3, offset=1000, range="bytes=1000-"),
    ev("resume", 1.2, url=M2, offset=1000, total=5000),
    ev("progress", 1.5, url=M2, attempt=99, offset=4999),    # another attempt's: ignored
    ev("error", 2.0, url=M2, error="IdleTimeout", message="silent", offset=2000),
    ev("backoff", 2.0, url=M2, seconds=0.5, attempt=3),
    ev("request", 2.5, url=M2, attempt=4, offset=2000, range="bytes=2000-"),
    ev("restart", 2.6, url=M2, why="ETag changed"),
    ev("resume", 2.7, url=M2, offset=0, total=5000, skipped=0),
    ev("done", 4.0, path="/x", bytes=5000, attempts=4, refetched=0, elapsed=4.0),
]


def test_build_timeline_segments_marks_and_totals():
    tl = T.build_timeline(STORY)
    assert tl.url == M1 and tl.outcome == "done" and tl.mirrors == [M1, M2]
    assert [(a.number, a.url, a.ended) for a in tl.attempts] == [
        (1, M1, "ReceiveError"), (2, M1, "HTTPStatusError"), (3, M2, "IdleTimeout"),
        (4, M2, "done")]
    assert tl.attempts[0].points == [(0.0, 0), (0.5, 400), (1.0, 1000)]
    assert tl.attempts[2].points == [(pytest.approx(1.1), 1000), (pytest.approx(1.2), 1000),
                                     (2.0, 2000)]
    # the restart is a drop to zero inside attempt 4, which then ends at the done bytes
    assert [p[1] for p in tl.attempts[3].points] == [2000, 2000, 0, 0, 5000]
    assert [(m.offset, m.label) for m in tl.errors] == [
        (1000, "ReceiveError"), (1000, "HTTPStatusError 404"), (2000, "IdleTimeout")]
    assert [(m.offset, m.label) for m in tl.restarts] == [(2000, "restart: ETag changed")]
    assert [(m.offset, m.label) for m in tl.switches] == [(1000, "to m2/img")]
    assert tl.backoffs == [T.Span(2.0, 2.5)]              # zero-second sleeps are not drawn
    assert tl.totals == dict(attempts=4, resumes=2, restarts=1, switches=1, refetched=0,
                             bytes=5000, elapsed=4.0)
    url, summary = T.title_lines(tl)
    assert url == M1 and summary.startswith("done: 4.9 KiB in 4.0 s")
    assert "4 attempts, 2 resumes, 1 restarts, 1 mirror switches, 0 B re-fetched" in summary


def test_failed_and_cut_logs_say_so():
    failed = STORY[:4]
    tl = T.build_timeline(failed)
    assert tl.outcome == "FAILED: ReceiveError at 1000 B"
    assert tl.totals["bytes"] == 1000 and tl.totals["elapsed"] == 1.0
    killed = T.build_timeline(STORY[:3])
    assert killed.outcome.startswith("log ends mid-attempt")
    assert killed.attempts[0].points[-1] == (0.5, 400)
    skipped = T.build_timeline(STORY[:2] + [ev("resume", 0.2, offset=0, skipped=777)])
    assert skipped.totals["refetched"] == 777


def test_split_runs_one_log_many_downloads():
    second = [dict(e, time=e["time"] + 100) for e in STORY]
    runs = T.split_runs(STORY + second)
    assert [len(r) for r in runs] == [len(STORY), len(STORY)]
    assert T.split_runs([ev("resolve", 0.0)]) == []


def test_read_events_refuses_what_is_not_a_log():
    lines = [json.dumps(e) for e in STORY[:2]]
    assert T.read_events(lines + ["", "  "]) == STORY[:2]
    with pytest.raises(T.TimelineError, match="line 2 is not JSON"):
        T.read_events([lines[0], "{oops", lines[1]])
    with pytest.raises(T.TimelineError, match="line 1 is not a rawfetch event"):
        T.read_events(['{"event": "request"}'])
    with pytest.raises(T.TimelineError, match="no request event"):
        T.build_timeline([ev("resolve", 0.0)])


def test_cluster_marks_counts_a_stall_at_the_same_offset():
    marks = [(T.Mark(10.0 + i * 0.01, 5000, "IdleTimeout"), True) for i in range(4)]
    marks += [(T.Mark(10.02, 5000, "to m2/img"), False), (T.Mark(50.0, 9000, "LowSpeed"), True)]
    merged = T.cluster_marks(marks, dt=0.5, doffset=100)
    assert [(m.label, is_error) for m, is_error in merged] == [
        ("IdleTimeout x4\nto m2/img", True), ("LowSpeed", True)]


# ---------------------------------------------------------------- the command, for real
def draw(*args: str):
    """`python -m rawfetch.timeline ARGS` in this process (tests/inprocess.py): the same
    main(), exit code and output, without importing matplotlib again per picture."""
    return run_main(T.main, *args)


def command(*args: str, python: Tuple[str, ...] = (sys.executable,)):
    return subprocess.run(list(python) + ["-m", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=100)


@pytest.fixture(scope="module")
def faulty_log(tmp_path_factory) -> str:
    """--log-json of a real download (the command in its own process, on the real clock),
    made once for the module's readers: a mirror that resets then 404s, then a master
    that is busy (503), stalls and cuts, before it completes."""
    body = make_body(BODY_SIZE, seed=1)
    folder = tmp_path_factory.mktemp("faulty")
    with FaultServer() as mirror, FaultServer() as master:
        for server in (mirror, master):
            server.add("/img", body, etag='"v1"')
        mirror.script([A.rst(at=len(body) // 8), A.status(404)])
        master.script([A.status(503, {"Retry-After": "0"}), A.stall(at=len(body) // 5),
                       A.fin(at=len(body) // 3), A.normal()])
        log = str(folder / "events.jsonl")
        proc = command("rawfetch", mirror.url("/img"), master.url("/img"), "-o",
                       str(folder / "img"), "--log-json", log, "--idle-timeout", "0.3",
                       "--retry-delay", "0.05", "--retry-max-delay", "0.2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (folder / "img").read_bytes() == body
    return log


@needs_matplotlib
def test_png_of_a_real_faulty_download(faulty_log, tmp_path):
    picture = str(tmp_path / "timeline.png")
    proc = draw(faulty_log, "-o", picture)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == picture
    width, height, pixels = read_png(picture)
    assert (width, height) == T.DEFAULT_SIZE
    colours = set(pixels)
    assert len(colours) > 20                                   # not a blank canvas
    non_white = sum(1 for p in pixels if p[:3] != (255, 255, 255))
    assert non_white > 0.02 * width * height
    for wanted in (T.MIRROR_COLOURS[0], T.MIRROR_COLOURS[1], T.ERROR_COLOUR):
        assert has_colour(colours, wanted), wanted             # both mirrors and errors drawn
    assert not has_colour(colours, T.MIRROR_COLOURS[2])        # there were only two


@needs_matplotlib
def test_svg_and_size_option(faulty_log, tmp_path):
    picture = str(tmp_path / "timeline.svg")
    proc = draw(faulty_log, "-o", picture, "--size", "640x320")
    assert proc.returncode == 0, proc.stderr
    with open(picture, encoding="utf-8") as handle:
        text = handle.read()
    assert text.startswith("<?xml") and "<svg" in text and 'width="460.8pt"' in text
    png = str(tmp_path / "small.png")
    assert draw(faulty_log, "-o", png, "--size", "640x320"
                   ).returncode == 0
    assert read_png(png)[:2] == (640, 320)


def test_without_matplotlib_exit_2_with_the_install_line(faulty_log, tmp_path):
    """python -S leaves site-packages (and so matplotlib) out: the real missing case."""
    probe = subprocess.run([sys.executable, "-S", "-c", "import matplotlib"],
                           stderr=subprocess.DEVNULL)
    if probe.returncode == 0:
        pytest.skip("matplotlib importable even without site-packages")
    proc = command("rawfetch.timeline", faulty_log, "-o", str(tmp_path / "t.png"),
                   python=(sys.executable, "-S"))
    assert proc.returncode == 2
    assert proc.stderr.decode() == ("rawfetch-timeline: matplotlib is needed to draw: %s\n"
                                    % T.INSTALL_LINE)
    assert not (tmp_path / "t.png").exists()


@needs_matplotlib
@pytest.mark.parametrize("content,code,message", [
    ("{not json\n", 1, "line 1 is not JSON"),
    ('{"event": "resolve", "time": 1}\n', 1, "holds no download"),
])
def test_bad_logs_fail_in_one_line(tmp_path, content, code, message):
    log = tmp_path / "events.jsonl"
    log.write_text(content)
    proc = draw(str(log), "-o", str(tmp_path / "t.png"))
    err = proc.stderr.decode()
    assert proc.returncode == code and message in err and err.count("\n") == 1


def test_missing_log_and_bad_arguments(tmp_path):
    proc = draw(str(tmp_path / "none.jsonl"), "-o", "t.png")
    assert proc.returncode in (1, 2) and b"Traceback" not in proc.stderr
    assert draw("x.jsonl").returncode == 2          # no -o
    assert draw("x", "-o", "t.png", "--size", "big").returncode == 2


# ---------------------------------------------------------------- PNG, by hand
def read_png(path: str) -> Tuple[int, int, List[Tuple[int, ...]]]:
    """Width, height and RGB(A) pixels of an 8-bit non-interlaced PNG."""
    with open(path, "rb") as handle:
        data = handle.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    channels = 4 if colour_type == 6 else 3
    rows = unfilter(zlib.decompress(idat), width * channels, channels, height)
    pixels = [tuple(row[i:i + channels]) for row in rows for i in range(0, len(row), channels)]
    return width, height, pixels


def unfilter(raw: bytes, stride: int, bpp: int, height: int) -> List[bytearray]:
    rows: List[bytearray] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        row = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = row[i - bpp] if i >= bpp else 0
            up = previous[i]
            corner = previous[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + (0, left, up, (left + up) // 2, paeth(left, up, corner))[kind]
                      ) & 0xFF
        rows.append(row)
        previous = row
    return rows


def paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def has_colour(colours: Set[Tuple[int, ...]], hex_colour: str, slack: int = 6) -> bool:
    want = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return any(all(abs(c[i] - want[i]) <= slack for i in range(3)) for c in colours)
