"""A seeded, stdlib-only mutation fuzzer for the sans-IO response parser.

Valid responses (Content-Length, chunked, close-delimited, 1xx, trailers, HTTP/1.0, HEAD)
and the hostile catalogue are mutated at random (bit flips, inserted, deleted, duplicated
and swapped ranges, spliced CR/LF/NUL/digits/'-'/';'/header fragments, truncation). For
every case the parser (HeadParser + body_reader + reader.feed + reader.eof) must:
  * give the same result fed whole, one byte at a time and in random pieces (same head and
    body, or the same error class);
  * raise nothing but rawfetch.FetchError subclasses;
  * never deliver more body than it was given, and for Content-Length exactly the length.

The URL side gets the same treatment: mutated URLs and redirect Locations must parse or
raise InvalidRequest, and whatever parses must survive a round trip and be sendable.

Longer runs: RAWFETCH_FUZZ_CASES=200000 RAWFETCH_FUZZ_SEED=7 python3 -m pytest tests/test_fuzz.py
(see docs/security.md; tests/fuzz_atheris.py is the coverage-guided variant).
"""
from __future__ import annotations

import os
import random
from collections import Counter
from typing import Callable, Iterable, List, Tuple

import pytest

from rawfetch.errors import FetchError, InvalidRequest
from rawfetch.http11 import (MERGE_BELOW, ChunkedReader, ContentLengthReader, HeadParser,
                             body_reader, build_request)
from rawfetch.url import URL, join_url, parse_url
from tests.test_catalogue import CASES as CATALOGUE

pytestmark = pytest.mark.timeout(60)

FUZZ_CASES = int(os.environ.get("RAWFETCH_FUZZ_CASES", "5000"))
FUZZ_SEED = int(os.environ.get("RAWFETCH_FUZZ_SEED", "20261124"))
SEED_CAP = 2048          # bytes; keeps byte-at-a-time feeding cheap

Outcome = Tuple[object, ...]

VALID_SEEDS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: \"v1\"\r\n\r\nhello",
    b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-4/5\r\nContent-Length: 3\r\n\r\nllo",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n"
    b"0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n"
    b"X-Checksum: abc\r\nX-Other: \xe9\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nclose-delimited body\r\n\r\nmore",
    b"HTTP/1.0 200 OK\r\n\r\nold style",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n",
    b"HTTP/1.1 302 Found\r\nLocation: /next\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200\nContent-Length: 3\nX-A: b\n\nabc",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabcEXTRA",
]
SEEDS = VALID_SEEDS + [case.data for case in CATALOGUE if len(case.data) <= SEED_CAP]

TOKENS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x00", b"0", b"1", b"9", b"f", b"-", b"+",
          b";", b",", b" ", b"\t", b":", b"0x", b"_", b"\x7f", b"\xff", b"ffffffffffffffff",
          b"99999999999999999999", b"Content-Length: 3\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Transfer-Encoding: gzip\r\n", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.0 ",
          b"0\r\n\r\n", b"5\r\nhello\r\n", b"X-T: v\r\n"]


# ---------------------------------------------------------------- mutations

def _span(rng: random.Random, data: bytes) -> Tuple[int, int]:
    start = rng.randrange(len(data) + 1)
    return start, min(len(data), start + rng.choice((1, 1, 2, 4, 16, 64)))


def flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    i = rng.randrange(len(data))
    value = data[i] ^ (1 << rng.randrange(8)) if rng.random() < 0.5 else rng.randrange(256)
    return data[:i] + bytes([value]) + data[i + 1:]


def insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    piece = rng.choice(TOKENS) if rng.random() < 0.7 else bytes(
        rng.randrange(256) for _ in range(rng.randrange(1, 8)))
    return data[:at] + piece * rng.choice((1, 1, 1, 3, 50)) + data[at:]


def delete(rng: random.Random, data: bytes) -> bytes:
    start, end = _span(rng, data)
    return data[:start] + data[end:]


def duplicate(rng: random.Random, data: bytes) -> bytes:
    start, end = _span(rng, data)
    return data[:end] + data[start:end] * rng.choice((1, 2, 20)) + data[end:]


def swap(rng: random.Random, data: bytes) -> bytes:
    a, b = sorted((_span(rng, data), _span(rng, data)))
    if a[1] > b[0]:
        return data
    return data[:a[0]] + data[b[0]:b[1]] + data[a[1]:b[0]] + data[a[0]:a[1]] + data[b[1]:]


def replace(rng: random.Random, data: bytes) -> bytes:
    start, end = _span(rng, data)
    return data[:start] + rng.choice(TOKENS) + data[end:]


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data) + 1)]


MUTATORS: List[Callable[[random.Random, bytes], bytes]] = [
    flip, flip, insert, insert, delete, duplicate, swap, replace, replace, truncate]


def mutate(rng: random.Random, data: bytes) -> bytes:
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5))):
        data = rng.choice(MUTATORS)(rng, data)
    return data


def cases(seed: int, count: int) -> Iterable[Tuple[bytes, str]]:
    rng = random.Random(seed)
    for _ in range(count):
        seeds = VALID_SEEDS if rng.random() < 0.6 else SEEDS
        yield mutate(rng, rng.choice(seeds)), "HEAD" if rng.random() < 0.1 else "GET"


# ---------------------------------------------------------------- the parser under test

def parse(pieces: Iterable[bytes], method: str) -> Outcome:
    """Feed pieces; ("ok", head fields, body) / ("no-head",) / ("error", class name).
    Pieces after the body completes are still fed: the reader must ignore them."""
    parser = HeadParser()
    head = reader = None
    body = bytearray()
    given = 0
    try:
        for piece in pieces:
            given += len(piece)
            if reader is None:
                head, piece = parser.feed(piece)
                if head is None:
                    continue
                reader = body_reader(method, head)
            for view in reader.feed(piece):
                body += view
        if reader is None:
            return ("no-head",)
        if not reader.complete:
            reader.eof()
    except FetchError as exc:
        return ("error", type(exc).__name__)
    assert reader.complete and len(body) <= given
    if isinstance(reader, ContentLengthReader):
        assert len(body) == reader.length == reader.received
    return ("ok", head.version, head.status, head.reason, tuple(head.headers.items()),
            head.interim, bytes(body))


def random_pieces(rng: random.Random, data: bytes) -> List[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randrange(1, 6))))
    bounds = [0] + cuts + [len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def check_case(data: bytes, method: str, rng: random.Random) -> Outcome:
    """The outcome, after asserting that every way of feeding agrees; any non-FetchError
    escapes with the data in the message (the reproducer)."""
    try:
        whole = parse([data], method)
        bytewise = parse([data[i:i + 1] for i in range(len(data))], method)
        pieces = parse(random_pieces(rng, data), method) if len(data) > 1 else whole
    except Exception as exc:  # noqa: BLE001 - the point is to catch anything else
        raise AssertionError("%s: %s on %s %r" % (type(exc).__name__, exc, method, data)) from exc
    assert whole == bytewise == pieces, "split-dependent result for %s %r:\n%r\n%r\n%r" % (
        method, data, whole, bytewise, pieces)
    return whole


# ---------------------------------------------------------------- tests

def test_seeds_parse_as_catalogued():
    rng = random.Random(0)
    for data in VALID_SEEDS:
        assert check_case(data, "GET", rng)[0] == "ok", data
    for case in CATALOGUE:
        got = check_case(case.data, case.method, rng)
        if isinstance(case.expected, type):
            assert got in (("error", case.expected.__name__), ("no-head",)), case.id
        else:
            assert got[0] == "ok" and got[2] == case.expected.status, case.id


def test_mutations_are_deterministic_and_mutate():
    first = list(cases(FUZZ_SEED, 200))
    assert first == list(cases(FUZZ_SEED, 200))
    assert first != list(cases(FUZZ_SEED + 1, 200))
    assert sum(data not in SEEDS for data, _ in first) > 150


def test_mutation_fuzz(capsys):
    """FUZZ_CASES mutated responses: split-independent, FetchError-only, body bounded."""
    rng = random.Random(FUZZ_SEED ^ 0x5EED)
    kinds: Counter = Counter()
    for data, method in cases(FUZZ_SEED, FUZZ_CASES):
        outcome = check_case(data, method, rng)
        kinds[outcome[1] if outcome[0] == "error" else outcome[0]] += 1
    with capsys.disabled():
        print("\nfuzz seed=%d cases=%d outcomes=%s" % (FUZZ_SEED, FUZZ_CASES, dict(kinds)))
    # Not degenerate: the mutations reach every kind of outcome.
    for kind in ("ok", "no-head", "ProtocolError", "IncompleteBody"):
        assert kinds[kind] >= FUZZ_CASES // 100, kinds


def test_chunk_merging_keeps_every_byte_in_order():
    """Small chunk pieces are copied together, big ones passed as views: same bytes."""
    rng = random.Random(FUZZ_SEED)
    for _ in range(30):
        sizes = [rng.choice((1, 2, MERGE_BELOW - 1, MERGE_BELOW, MERGE_BELOW + 1, 9000))
                 for _ in range(rng.randrange(1, 12))]
        chunks = [bytes(rng.randrange(256) for _ in range(size)) for size in sizes]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        reader = ChunkedReader()
        body = b"".join(bytes(view) for piece in random_pieces(rng, wire)
                        for view in reader.feed(piece))
        assert reader.complete and body == b"".join(chunks)


# ---------------------------------------------------------------- URLs

URL_SEEDS = ["http://example.com/", "https://user:pw@example.com:8443/a/b?c=d#f",
             "http://[::1]:80/x", "http://b\u00fccher.example/\u00fc?q=\u2603",
             "HTTP://EXAMPLE.COM:80", "http://127.0.0.1:8080/img?x=1",
             "https://[fe80::1%25eth0]/", "http://a.b.c.d/%41%zz"]
LOCATIONS = ["/next", "next", "../up", "//other.example/x", "?q", "#f", "https://x.example:444/p",
             "http://[::1]/", "", ".", "/\u00fc", "http://u:p@h/"]
URL_TOKENS = [":", "@", "[", "]", "%", "/", "?", "#", "\\", "\u00fc", "\u3002", "\uff0f",
              "\uff20", "\u0085", "0", "9", "99999", "xn--", "..", ".", "%25", "%0d%0a", "\u200b",
              "\u00df", "\u0130", "\ufeff", "\U0001f600", "\u2024", "\uff0e", "\u00a0", "-", "_",
              "~", "'", '"', "<", ">", "{", "|", "\r", "\n", "\t", " ", "\x00", "\x7f"]


def mutate_text(rng: random.Random, text: str) -> str:
    for _ in range(rng.choice((1, 1, 2, 3))):
        i = rng.randrange(len(text) + 1)
        j = min(len(text), i + rng.choice((0, 1, 2, 5)))
        roll = rng.random()
        if roll < 0.5:
            text = text[:i] + rng.choice(URL_TOKENS) + text[j:]
        elif roll < 0.7:
            text = text[:i] + text[j:]
        elif roll < 0.85:
            text = text[:i] + chr(rng.randrange(0x20, 0x3000)) + text[i:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


def sendable(url: URL) -> None:
    """What parses is plain ASCII, survives a round trip and can be put on the wire."""
    assert url.host.isascii() and url.target.isascii(), url
    assert url.target.startswith("/") and not any(c <= " " or c == "\x7f" for c in url.target)
    assert parse_url(str(url))[:4] == url[:4], url
    build_request("GET", url.target, url.host_header)


def test_url_fuzz():
    rng = random.Random(FUZZ_SEED)
    accepted = refused = 0
    for _ in range(FUZZ_CASES):
        text = mutate_text(rng, rng.choice(URL_SEEDS))
        try:
            url = parse_url(text)
        except InvalidRequest:
            url, refused = None, refused + 1
        else:
            accepted += 1
            sendable(url)
        location = mutate_text(rng, rng.choice(LOCATIONS))
        try:
            sendable(join_url(url or parse_url("http://h/x"), location))
        except InvalidRequest:
            pass
    assert accepted > FUZZ_CASES // 10 and refused > FUZZ_CASES // 10
