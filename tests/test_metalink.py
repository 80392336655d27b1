"""Metalink 4 (issue 24, the standalone part): `python3 -m rawfetch.metalink make` and
`metalink.load()` round trip; every hostile or inconsistent document is a MetalinkError
(exit 98) after a bounded number of bytes read and bounded memory; and Debian's aria2c
downloads and verifies an image from a generated .meta4 served by the fault server."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

from rawfetch import metalink as M
from rawfetch.metalink.make import MAKE_READ_BLOCK, describe, to_xml
from rawfetch.errors import FetchError, MetalinkError
from tests.faultserver import FaultServer, make_body

pytestmark = pytest.mark.timeout(120)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = M.NAMESPACE
SHA = "ab" * 32            # a well-formed sha-256
URL = "http://master/img"
MiB = 1 << 20


def doc(body: str, prolog: str = "") -> bytes:
    return ('<?xml version="1.0" encoding="UTF-8"?>\n%s<metalink xmlns="%s">%s</metalink>'
            % (prolog, NS, body)).encode()


def one_file(inner: str, name: str = "img") -> bytes:
    return doc('<file name="%s">%s</file>' % (name, inner))


def run_module(*args: str, env_extra: Optional[dict] = None,
               **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "rawfetch.metalink", *args], env=env,
                          capture_output=True, timeout=120, **kwargs)


def piece_digests(data: bytes, length: int) -> bytes:
    return b"".join(hashlib.sha256(data[at:at + length]).digest()
                    for at in range(0, len(data), length))


# ---------------------------------------------------------------- round trip

@pytest.mark.parametrize("size, piece", [(10 * MiB + 12345, 4 * MiB), (8 * MiB, 1 * MiB),
                                         (1000, 4 * MiB), (1, 1)])
def test_make_then_load_gives_back_the_image_digests_and_mirrors(tmp_path, size, piece):
    image = make_body(size, seed=size)
    (tmp_path / "disk.img").write_bytes(image)
    urls = ["http://master/images/disk.img", "https://peer:8443/disk.img?x=1&y=2"]
    made = run_module("make", str(tmp_path / "disk.img"), "--url", urls[0], "--url",
                      urls[1], "--piece-size", str(piece))
    assert made.returncode == 0, made.stderr
    item = M.load(made.stdout)
    assert (item.name, item.size) == ("disk.img", size)
    assert item.checksum() == "sha256:" + hashlib.sha256(image).hexdigest()
    pieces = item.best_pieces()
    assert (pieces.type, pieces.length) == ("sha-256", piece)
    assert pieces.digests == piece_digests(image, piece)
    assert [(m.url, m.priority) for m in item.mirrors] == [(urls[0], 1), (urls[1], 2)]
    assert to_xml([item], generator="rawfetch/%s" % __import__("rawfetch").__version__
                    ).encode() == made.stdout   # parse and print are inverse


def test_load_reads_bytes_paths_and_binary_files_alike(tmp_path):
    data = one_file("<size>3</size><url>%s</url>" % URL)
    (tmp_path / "m.meta4").write_bytes(data)
    with open(tmp_path / "m.meta4", "rb") as handle:
        from_file = M.load(handle)
    assert M.load(data) == M.load(str(tmp_path / "m.meta4")) == \
        M.load(tmp_path / "m.meta4") == from_file == M.load(bytearray(data))


def test_an_empty_image_has_no_pieces_and_the_empty_digest(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    item = M.load(to_xml([describe(str(tmp_path / "empty"), [URL])]).encode())
    assert (item.size, item.pieces) == (0, ())
    assert item.checksum() == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_make_hashes_a_large_image_in_constant_memory(tmp_path):
    image = tmp_path / "big"
    with open(image, "wb") as out:
        for seed in range(48):
            out.write(make_body(MiB, seed))
    tracemalloc.start()
    try:
        item = describe(str(image), [URL], piece_size=MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert item.best_pieces().digest(47) == hashlib.sha256(make_body(MiB, 47)).digest()
    assert peak < MAKE_READ_BLOCK + MiB   # one read buffer, never the 48 MiB image


@pytest.mark.parametrize("args, words", [
    (["--url", "ftp://master/img"], "unsupported URL scheme"),
    (["--url", URL, "--piece-size", "0"], "piece size"),
    (["--url", URL, "--name", "../etc/img"], "unsafe file name"),
    (["--url", "http://master/a b"], "contains"),
])
def test_make_refuses_bad_arguments_with_a_usage_error(tmp_path, args, words):
    (tmp_path / "img").write_bytes(b"x")
    made = run_module("make", str(tmp_path / "img"), *args)
    assert (made.returncode, made.stdout) == (2, b"")
    assert words in made.stderr.decode() and b"Traceback" not in made.stderr


def test_make_names_an_unreadable_image_in_one_line(tmp_path):
    made = run_module("make", str(tmp_path / "missing"), "--url", URL)
    assert (made.returncode, made.stdout) == (2, b"")
    assert made.stderr.decode().count("\n") == 1 and "missing" in made.stderr.decode()


# ---------------------------------------------------------------- what is read

RICH = doc("""
  <generator>someone/1.0</generator>
  <origin dynamic="true">http://master/all.meta4</origin>
  <file name="a.img">
    <ext:note xmlns:ext="urn:example:ext"><hash type="sha-256">not read</hash></ext:note>
    <size> 5 </size>
    <hash type="sha-1">%s</hash>
    <hash type="SHA-256">%s</hash>
    <hash type="tiger">whatever is not known is skipped</hash>
    <pieces length="4" type="sha-1"><hash>%s</hash><hash>%s</hash></pieces>
    <pieces length="2" type="sha-256"><hash>%s</hash><hash>%s</hash><hash>%s</hash></pieces>
    <metaurl mediatype="torrent">http://master/a.torrent</metaurl>
    <url location="DE" priority="20">http://de.mirror/a.img</url>
    <url>http://unranked/a.img</url>
    <url priority="1">ftp://ftp.mirror/a.img</url>
    <url priority="10">https://master/a.img</url>
  </file>
  <file name="dir/b.img"><url>http://master/b.img</url></file>
""" % ("11" * 20, SHA.upper(), "22" * 20, "33" * 20, "44" * 32, "55" * 32, "66" * 32))


def test_a_full_rfc_5854_document_is_read_and_the_rest_skipped():
    item = M.load(RICH, "a.img")
    assert item.size == 5
    assert item.hashes == (("sha-1", "11" * 20), ("sha-256", SHA))
    assert item.checksum() == "sha256:" + SHA          # the strongest known
    best = item.best_pieces()
    assert (best.type, best.length, best.count) == ("sha-256", 2, 3)
    assert best.digest(2) == bytes.fromhex("66" * 32) and best.span(2, 5) == (4, 1)
    assert [m.url for m in item.mirrors] == ["http://de.mirror/a.img", "http://unranked/a.img",
                                             "https://master/a.img"]   # document order
    assert item.mirrors[0] == M.Mirror("http://de.mirror/a.img", 20, "de")
    assert item.urls() == ["https://master/a.img", "http://de.mirror/a.img",
                           "http://unranked/a.img"]                     # by priority
    assert item.skipped_urls == ("ftp://ftp.mirror/a.img",)
    assert M.load(RICH, "dir/b.img").mirrors == (M.Mirror("http://master/b.img"),)


@pytest.mark.parametrize("name, words", [(None, "describes 2 files"),
                                         ("c.img", "no file named 'c.img'")])
def test_several_files_need_a_name_that_matches_one(name, words):
    with pytest.raises(MetalinkError, match=words):
        M.load(RICH, name)


@pytest.mark.parametrize("codec", ["utf-8", "utf-16", "utf-16-be", "iso-8859-1"])
def test_documents_in_the_encodings_expat_decodes_are_read(codec):
    text = one_file("<url>%s</url>" % URL, name="d\u00efsk.img").decode()
    declared = {"utf-16-be": "UTF-16"}.get(codec, codec)
    data = text.replace("UTF-8", declared).encode(codec)
    assert M.load(data).name == "d\u00efsk.img"


def test_a_file_inside_a_file_is_skipped_not_read_into_its_parent():
    item = M.load(one_file('<file name="b"><size>7</size><hash type="sha-256">%s</hash>'
                           '</file><url>%s</url>' % (SHA, URL), name="a"))
    assert (item.name, item.size, item.hashes) == ("a", None, ())


def test_two_files_of_one_name_are_ambiguous():
    twice = doc('<file name="x"><url>%s</url></file>' % URL * 2)
    with pytest.raises(MetalinkError, match="2 files named 'x'"):
        M.load(twice, "x")


# ---------------------------------------------------------------- hostile documents

BILLION_LAUGHS = doc('<file name="&lol9;"><url>%s</url></file>' % URL, prolog=(
    '<!DOCTYPE metalink [<!ENTITY lol "lol">'
    + "".join('<!ENTITY lol%d "%s">' % (n, ("&lol%s;" % (n - 1 or "")) * 10)
              for n in range(1, 10)) + "]>\n"))


class Endless(io.RawIOBase):
    """A binary file of `head`, then `body` repeated `times` times (None: forever), then
    `tail`; made on the fly, never held. `served` counts what the reader took."""

    def __init__(self, head: bytes, body: bytes, tail: bytes = b"",
                 times: Optional[int] = None) -> None:
        self.parts = self._parts(head, body, tail, times)
        self.pending = b""
        self.served = 0

    @staticmethod
    def _parts(head: bytes, body: bytes, tail: bytes, times: Optional[int]) -> Iterator[bytes]:
        yield head
        count = 0
        block = body * max(1, 65536 // len(body))
        per = len(block) // len(body)
        while times is None or count < times:
            take = per if times is None else min(per, times - count)
            yield block if take == per else body * take
            count += take
        yield tail

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while len(self.pending) < size:
            chunk = next(self.parts, b"")
            if not chunk:
                break
            self.pending += chunk
        out, self.pending = self.pending[:size], self.pending[size:]
        self.served += len(out)
        return out


def refused(source, words: str, limit: int = 6 * M.READ_CHUNK) -> MetalinkError:
    """load() must raise MetalinkError naming `words`, its peak memory under `limit` (by
    default a few read chunks: the one read, expat's copy of it and that copy's growth)."""
    tracemalloc.start()
    try:
        with pytest.raises(MetalinkError, match=words) as caught:
            M.load(source)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < limit, "refusing took %d bytes" % peak
    assert caught.value.exit_code == 98 and isinstance(caught.value, FetchError)
    return caught.value


ENTITY_CASES = {
    "billion-laughs": BILLION_LAUGHS,
    "external-entity": doc('<file name="&xxe;"><url>%s</url></file>' % URL,
                           '<!DOCTYPE metalink [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'),
    "external-dtd": doc("", '<!DOCTYPE metalink SYSTEM "http://127.0.0.1:1/evil.dtd">\n'),
    "parameter-entity": doc("", '<!DOCTYPE m [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'),
    "empty-doctype": doc("", "<!DOCTYPE metalink>\n"),
}


@pytest.mark.parametrize("case", sorted(ENTITY_CASES))
def test_any_doctype_is_refused_before_an_entity_is_read(case):
    error = refused(ENTITY_CASES[case], "DOCTYPE")
    assert "line 2" in str(error)


def test_an_undeclared_entity_is_an_xml_error_not_a_lookup():
    refused(one_file("<url>http://master/&xxe;</url>"), "undefined entity")


def test_a_100_mb_document_is_refused_after_the_cap(tmp_path):
    path = tmp_path / "huge.meta4"
    with open(path, "wb") as out:
        out.write(doc("")[:-len("</metalink>")] + b"<file name='x'><description>")
        for _ in range(100):
            out.write(b"text " * 200000)          # 100 MB of a description
    refused(path, "over %d bytes" % M.MAX_DOCUMENT_BYTES)
    stream = Endless(doc("")[:-11] + b"<description>", b"text " * 1024)  # never ends
    refused(stream, "over %d bytes" % M.MAX_DOCUMENT_BYTES)
    assert stream.served == M.MAX_DOCUMENT_BYTES + 1
    with pytest.raises(MetalinkError, match="bytes, over the"):
        M.load(b" " * (M.MAX_DOCUMENT_BYTES + 1))


def test_an_endless_comment_is_refused_at_the_cap_in_memory_bounded_by_it():
    """expat keeps an unfinished token whole: the document cap is its memory bound."""
    stream = Endless(doc("")[:-11] + b"<!-- ", b"> still a comment " * 1024)
    refused(stream, "over %d bytes" % M.MAX_DOCUMENT_BYTES, limit=3 * M.MAX_DOCUMENT_BYTES)
    assert stream.served == M.MAX_DOCUMENT_BYTES + 1


def ten_million_pieces(size_first: bool, with_size: bool = True) -> Endless:
    """A document listing 10^7 piece hashes, never held: 800 MB if read to the end."""
    size = "<size>%d</size>" % (10 ** 7 * 1024) if with_size else ""
    head = ('<?xml version="1.0"?><metalink xmlns="%s"><file name="x">%s'
            '<pieces type="sha-256" length="1024">' % (NS, size if size_first else "")).encode()
    tail = ("</pieces>%s<url>%s</url></file></metalink>"
            % ("" if size_first else size, URL)).encode()
    return Endless(head, b"<hash>%s</hash>\n" % SHA.encode(), tail, times=10 ** 7)


def test_ten_million_pieces_are_refused_at_the_pieces_tag_when_the_size_says_so():
    stream = ten_million_pieces(size_first=True)
    refused(stream, "10000000 pieces, over the %d allowed" % M.MAX_PIECES)
    assert stream.served <= M.READ_CHUNK


@pytest.mark.parametrize("with_size", [True, False], ids=["size-after", "no-size"])
def test_ten_million_pieces_are_refused_at_the_cap_when_counted(with_size):
    stream = ten_million_pieces(size_first=False, with_size=with_size)
    digests = M.MAX_PIECES * 32
    refused(stream, "more piece hashes than %d" % M.MAX_PIECES, limit=2 * digests + 2 * MiB)
    hash_line = len("<hash></hash>\n") + 64
    assert stream.served <= (M.MAX_PIECES + 1) * hash_line + 2 * M.READ_CHUNK


PIECES_2 = "<hash>%s</hash><hash>%s</hash>" % (SHA, SHA)
BAD_DOCUMENTS = {
    # hash lengths, per algorithm (RFC 5854 4.2.4)
    "sha256-63-digits": (one_file('<hash type="sha-256">%s</hash><url>%s</url>' % (SHA[:63], URL)),
                         "sha-256 hash must be 64 hex digits"),
    "sha1-64-digits": (one_file('<hash type="sha-1">%s</hash><url>%s</url>' % (SHA, URL)),
                       "sha-1 hash must be 40 hex digits"),
    "sha512-not-hex": (one_file('<hash type="sha-512">%s</hash><url>%s</url>' % ("zz" * 64, URL)),
                       "sha-512 hash must be 128"),
    "piece-hash-short": (one_file('<size>2</size><pieces type="sha-256" length="1"><hash>%s'
                                  '</hash><hash>abc</hash></pieces><url>%s</url>' % (SHA, URL)),
                         "sha-256 hash must be 64"),
    "two-sha256": (one_file('<hash type="sha-256">%s</hash><hash type="sha-256">%s</hash><url>'
                            '%s</url>' % (SHA, "cd" * 32, URL)), "two different sha-256"),
    # pieces against size (RFC 5854 4.1.3)
    "too-few-pieces": (one_file('<size>3</size><pieces type="sha-256" length="1">%s</pieces>'
                                '<url>%s</url>' % (PIECES_2, URL)), "2 sha-256 piece hashes for 3"),
    "too-many-pieces": (one_file('<size>1</size><pieces type="sha-256" length="1">%s</pieces>'
                                 '<url>%s</url>' % (PIECES_2, URL)), "more piece hashes than 1"),
    "too-many-pieces-size-after": (one_file('<pieces type="sha-256" length="2">%s</pieces>'
                                            '<size>2</size><url>%s</url>' % (PIECES_2, URL)),
                                   "2 sha-256 piece hashes for 2 bytes"),
    "pieces-without-size": (one_file('<pieces type="sha-256" length="1">%s</pieces><url>%s'
                                     '</url>' % (PIECES_2, URL)), "without <size>"),
    "piece-length-0": (one_file('<size>2</size><pieces type="sha-256" length="0"></pieces>'),
                       "at least one byte"),
    "piece-length-word": (one_file('<size>2</size><pieces type="sha-256" length="x"></pieces>'),
                          "not a whole number"),
    "size-negative": (one_file("<size>-1</size><url>%s</url>" % URL), "not a whole number"),
    "size-huge": (one_file("<size>%d</size><url>%s</url>" % (1 << 63, URL)), "whole number"),
    "two-sizes": (one_file("<size>1</size><size>1</size><url>%s</url>" % URL), "second <size>"),
    # URLs
    "ftp-only": (one_file("<url>ftp://master/img</url>"), "no http\\(s\\) URL: skipped ftp"),
    "file-url": (one_file("<url>file:///etc/shadow</url>"), "no http\\(s\\) URL"),
    "no-url": (one_file("<size>1</size>"), "no http\\(s\\) URL"),
    "relative-url": (one_file("<url>img</url>"), "unsupported URL scheme"),
    "url-space": (one_file("<url>http://master/a b</url>"), "contains ' '"),
    "url-no-host": (one_file("<url>http:///img</url>"), "URL 'http:///img'"),
    "priority-0": (one_file('<url priority="0">%s</url>' % URL), "priority 0"),
    "priority-big": (one_file('<url priority="1000000">%s</url>' % URL), "priority"),
    "location-3": (one_file('<url location="usa">%s</url>' % URL), "ISO 3166-1"),
    # names (RFC 5854 4.1.2.1)
    "name-traversal": (one_file("<url>%s</url>" % URL, name="../../etc/passwd"), "unsafe"),
    "name-inner-dotdot": (one_file("<url>%s</url>" % URL, name="a/../../b"), "unsafe"),
    "name-absolute": (one_file("<url>%s</url>" % URL, name="/etc/passwd"), "unsafe"),
    "name-home": (one_file("<url>%s</url>" % URL, name="~/.ssh/x"), "unsafe"),
    "name-backslash": (one_file("<url>%s</url>" % URL, name="..\\x"), "unsafe"),
    "name-control": (one_file("<url>%s</url>" % URL, name="a&#10;b"), "unsafe"),
    "name-missing": (doc("<file><url>%s</url></file>" % URL), "without a name"),
    # not Metalink 4
    "metalink-3": (b'<metalink xmlns="http://www.metalinker.org/" version="3.0"/>', "Metalink 3"),
    "no-namespace": (b"<metalink><file name='x'/></metalink>", "root element is <metalink>,"),
    "html": (b"<html><body>404</body></html>", "root element is <html>"),
    "not-xml": (b"\x89PNG\r\n\x1a\n", "not well-formed"),
    "empty": (b"", "not well-formed"),
    "truncated": (one_file("<url>%s</url>" % URL)[:-12], "not well-formed"),
    "no-file": (doc(""), "describes no file"),
    # encodings: only expat's own, never a Python codec named by the document
    "encoding-rot13": (one_file("<url>%s</url>" % URL).replace(b"UTF-8", b"rot13"),
                       "declares encoding 'rot13'"),
    "encoding-utf7-in-utf16": (one_file("<url>%s</url>" % URL).decode().replace(
        "UTF-8", "utf-7").encode("utf-16"), "declares encoding 'utf-7'"),
    "encoding-lies": (one_file("<url>%s</url>" % URL).replace(b"UTF-8", b"UTF-16"),
                      "encoding specified in XML declaration is incorrect"),
    # structure caps
    "too-deep": (doc("<a>" * M.MAX_DEPTH + "</a>" * M.MAX_DEPTH), "nested over"),
    "too-many-urls": (one_file("<url>%s</url>" % URL * (M.MAX_URLS + 1)), "more than 1024 URLs"),
    "too-long-url": (one_file("<url>http://m/%s</url>" % ("a" * M.MAX_TEXT)), "holds over"),
    "child-in-url": (one_file("<url>http://m/<b/></url>"), "element <b> inside <url>"),
    # metalink elements out of place are skipped, never read into another file
    "file-in-extension": (doc('<x:e xmlns:x="urn:x"><file name="a"><size>1</size><url>%s</url>'
                              '</file></x:e>' % URL), "describes no file"),
    "pieces-in-extension": (doc('<x:e xmlns:x="urn:x"><pieces type="sha-256" length="1"><hash>'
                                'zz</hash></pieces></x:e>'), "describes no file"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCUMENTS))
def test_a_bad_document_is_a_metalink_error_naming_the_fault(case):
    data, words = BAD_DOCUMENTS[case]
    refused(data, words)


def test_a_source_of_the_wrong_type_is_a_metalink_error():
    with pytest.raises(MetalinkError, match="bytes, a path or a binary file"):
        M.load(12)  # type: ignore[arg-type]


def test_an_unreadable_source_is_a_metalink_error(tmp_path):
    with pytest.raises(MetalinkError, match="cannot read the Metalink .*directory"):
        M.load(tmp_path)
    with open(tmp_path / "write-only", "wb") as handle:   # its read() raises an OSError
        with pytest.raises(MetalinkError, match="cannot read the Metalink"):
            M.load(handle)


def test_make_writes_utf8_whatever_the_locale(tmp_path):
    (tmp_path / "img").write_bytes(b"x")
    made = run_module("make", str(tmp_path / "img"), "--url", URL, "--name", "d\u00efsk.img",
                      env_extra={"LC_ALL": "C", "PYTHONIOENCODING": "ascii"})
    assert made.returncode == 0, made.stderr
    assert M.load(made.stdout).name == "d\u00efsk.img"


def test_check_command_exits_98_in_one_line(tmp_path):
    (tmp_path / "bomb.meta4").write_bytes(BILLION_LAUGHS)
    checked = run_module("check", str(tmp_path / "bomb.meta4"))
    assert (checked.returncode, checked.stdout) == (98, b"")
    assert checked.stderr.decode().count("\n") == 1 and b"DOCTYPE" in checked.stderr
    missing = run_module("check", str(tmp_path / "nothing.meta4"))
    assert missing.returncode == 98 and b"cannot read the Metalink" in missing.stderr


# ---------------------------------------------------------------- aria2c interop

ARIA2_PIECE = MiB
BAD_PIECE = 5    # the piece the corrupted mirror serves with one bit flipped


def aria2c(meta4: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["aria2c", "--no-conf", "--dir", str(out), "--max-tries=3",
                           "--retry-wait=0", "--connect-timeout=5", "--timeout=10",
                           "--summary-interval=0", "--console-log-level=warn",
                           "--metalink-file", str(meta4)],
                          capture_output=True, text=True, timeout=90)


@pytest.fixture
def served(tmp_path) -> Iterator[Callable[[List[bool]], Path]]:
    """publish(corrupt_flags): fault servers serving the image (one piece corrupted where
    the flag is True) and a .meta4 made by `make` listing them in that order."""
    image = make_body(6 * MiB + 777, seed=24)
    (tmp_path / "disk.img").write_bytes(image)
    servers: List[FaultServer] = []

    def publish(corrupt: List[bool]) -> Path:
        bad = bytearray(image)
        bad[BAD_PIECE * ARIA2_PIECE + 100] ^= 0x01
        for flag in corrupt:
            servers.append(FaultServer().start())
            servers[-1].add("/images/disk.img", bytes(bad) if flag else image)
        urls = [arg for srv in servers for arg in ("--url", srv.url("/images/disk.img"))]
        made = run_module("make", str(tmp_path / "disk.img"), *urls,
                          "--piece-size", str(ARIA2_PIECE))
        assert made.returncode == 0, made.stderr
        (tmp_path / "disk.img.meta4").write_bytes(made.stdout)
        return tmp_path / "disk.img.meta4"

    publish.image = image          # type: ignore[attr-defined]
    publish.servers = servers      # type: ignore[attr-defined]
    yield publish
    for srv in servers:
        srv.stop()


needs_aria2 = pytest.mark.skipif(shutil.which("aria2c") is None,
                                 reason="aria2c not installed (apt-get install aria2)")


@pytest.mark.servers
@needs_aria2
def test_aria2c_downloads_and_verifies_from_a_generated_meta4(served, tmp_path):
    meta4 = served([False])
    done = aria2c(meta4, tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    saved = (tmp_path / "out" / "disk.img").read_bytes()
    assert hashlib.sha256(saved).hexdigest() == hashlib.sha256(served.image).hexdigest()
    assert served.servers[0].requests, "aria2c never asked the fault server"


@pytest.mark.servers
@needs_aria2
def test_aria2c_refetches_only_the_corrupted_piece_then_fails(served, tmp_path):
    """aria2c 1.36 checks each piece as it arrives: the bad one is asked for again from
    its first byte (a Range to the end of what aria2c still lacks, here the file's end),
    and when the mirror keeps lying aria2c exits 1 (it does not repair), never 0."""
    meta4 = served([True])
    done = aria2c(meta4, tmp_path / "out")
    assert done.returncode != 0, done.stdout
    refetch = "bytes=%d-%d" % (BAD_PIECE * ARIA2_PIECE, len(served.image) - 1)
    asked = [request.range for request in served.servers[0].requests]
    assert asked[0] == "bytes=0-%d" % (len(served.image) - 1), asked
    assert asked[1:] and set(asked[1:]) == {refetch}, asked
    saved = tmp_path / "out" / "disk.img"
    assert not saved.exists() or \
        hashlib.sha256(saved.read_bytes()).digest() != hashlib.sha256(served.image).digest()


@pytest.mark.servers
@needs_aria2
def test_aria2c_with_a_lying_first_mirror_never_reports_a_wrong_file(served, tmp_path):
    """A corrupted mirror ranked first and a good one second: aria2c either repairs from
    the good one (exit 0, right digest) or fails (exit != 0); 1.36 fails, asking only
    the first mirror (docs/metalink.md)."""
    meta4 = served([True, False])
    done = aria2c(meta4, tmp_path / "out")
    saved = tmp_path / "out" / "disk.img"
    good = saved.exists() and \
        hashlib.sha256(saved.read_bytes()).digest() == hashlib.sha256(served.image).digest()
    assert (done.returncode == 0) == good, done.stdout
    print("aria2c exit %d, file %s, second mirror asked %d times" % (
        done.returncode, "right" if good else "wrong or absent",
        len(served.servers[1].requests)))


ROUNDS = int(os.environ.get("METALINK_MUTATIONS", "3000"))


def test_mutated_documents_give_a_file_or_a_metalink_error_and_nothing_else():
    """ROUNDS seeded mutations of a full document (bytes flipped, cut, duplicated): load()
    returns a File or raises MetalinkError; no other exception, whatever the damage."""
    import random
    chance = random.Random(24)
    outcomes = {"file": 0, "refused": 0}
    for _ in range(ROUNDS):
        data = bytearray(RICH)
        for _ in range(chance.randint(1, 4)):
            at = chance.randrange(len(data))
            kind = chance.randrange(3)
            if kind == 0:
                data[at] = chance.randrange(256)
            elif kind == 1:
                del data[at:at + chance.randint(1, 40)]
            else:
                data[at:at] = data[at:at + chance.randint(1, 40)]
        try:
            M.load(bytes(data), "a.img")
            outcomes["file"] += 1
        except MetalinkError:
            outcomes["refused"] += 1
    assert outcomes["file"] > 0 and outcomes["refused"] > 0, outcomes
