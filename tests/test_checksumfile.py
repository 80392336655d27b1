"""Checksum files (issue 12 item 2): GNU, BSD tagged and bare-hash formats, the entry
chosen by the image's name, the algorithm by tag or hex length, and exit 94 when the file
cannot say; once end to end through the fault server with rawfetch.open. Also the
issue-12 options and command flags (decompress, xz_memlimit, checksum_url/name)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from typing import List, Tuple

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.checksumfile import (CHECKSUM_FILE_MAX_BYTES, fetch_checksum, image_name_from_url,
                                   parse_checksum_file, parse_entries, read_limited)
from rawfetch.cli import build_parser, options_from
from rawfetch.options import DEFAULTS, Options, parse_size
from rawfetch.digest import parse_checksum
from tests.faultserver import actions as A
from tests.inprocess import run_cli
from tests.timing_options import QUICK

# Every test on the virtual clock (tests/vclock.py): stalls, backoffs and timeouts take
# virtual seconds; the command runs in-process (tests/inprocess.py) on the same clock.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
URL = "http://master/images/SHA256SUMS"
NAME = "disk.raw.xz"
IMAGE = b"the image bytes"
SHA256 = hashlib.sha256(IMAGE).hexdigest()
SHA512 = hashlib.sha512(IMAGE).hexdigest()
MD5 = hashlib.md5(IMAGE).hexdigest()
SHA1 = hashlib.sha1(IMAGE).hexdigest()
OTHER = hashlib.sha256(b"another file").hexdigest()


def parse(text: str, name: str = NAME) -> Tuple[str, str]:
    return parse_checksum_file(text.encode("utf-8"), name, URL)


def refused(text: str, name: str = NAME) -> E.ChecksumFileError:
    with pytest.raises(E.ChecksumFileError) as info:
        parse(text, name)
    error = info.value
    assert error.exit_code == 94 and not error.retryable
    assert URL in str(error) and repr(name) in str(error)   # the URL and the name looked for
    return error


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("line", [
    "%s  %s" % (SHA256, NAME),            # sha256sum (text mode)
    "%s *%s" % (SHA256, NAME),            # sha256sum -b
    "%s %s" % (SHA256, NAME),             # one space, as some generators write
    "SHA256 (%s) = %s" % (NAME, SHA256),  # sha256sum --tag, BSD sha256
    "%s  ./%s" % (SHA256, NAME),          # `sha256sum ./*`
    "SHA256 (./%s) = %s" % (NAME, SHA256),
    "%s  %s" % (SHA256.upper(), NAME),
], ids=["gnu-text", "gnu-binary", "gnu-one-space", "bsd", "gnu-dot-slash", "bsd-dot-slash",
        "upper-hex"])
def test_each_format_gives_the_entry(line):
    text = "%s  other.img\n%s\nSHA256 (z.img) = %s\n" % (OTHER, line, OTHER)
    assert parse(text) == ("sha256", SHA256)


@pytest.mark.parametrize("tag,algo,digest", [
    ("SHA512", "sha512", SHA512), ("MD5", "md5", MD5), ("SHA1", "sha1", SHA1),
    ("BLAKE2b", "blake2b", hashlib.blake2b(IMAGE).hexdigest()),
    ("SHA3-256", "sha3_256", hashlib.sha3_256(IMAGE).hexdigest()),
])
def test_bsd_tag_names_the_algorithm(tag, algo, digest):
    found = parse("%s (%s) = %s\n" % (tag, NAME, digest))
    assert found == (algo, digest)
    assert parse_checksum("%s:%s" % found) == found   # what download() will be handed


@pytest.mark.parametrize("digest,algo", [(MD5, "md5"), (SHA1, "sha1"), (SHA256, "sha256"),
                                         (SHA512, "sha512")])
def test_untagged_algorithm_from_the_hex_length(digest, algo):
    assert parse("%s  %s\n" % (digest, NAME)) == (algo, digest)
    assert parse(digest + "\n", "whatever.img") == (algo, digest)   # one bare hash


def test_bare_hash_file_applies_to_any_name():
    assert parse("  %s  \r\n\n" % SHA256, "") == ("sha256", SHA256)
    assert parse("# published 2026-01-01\n%s\n" % SHA256) == ("sha256", SHA256)


def test_crlf_blank_lines_comments_and_noise_are_skipped():
    """A Fedora-style CHECKSUM: PGP clear-signed, '# name: size' notes, CRLF."""
    text = ("-----BEGIN PGP SIGNED MESSAGE-----\r\nHash: SHA256\r\n\r\n"
            "# %s: 1234 bytes\r\nSHA256 (%s) = %s\r\n\r\n"
            "-----BEGIN PGP SIGNATURE-----\r\niQIzBAEBCAAdFiEE\r\n=abcd\r\n"
            "-----END PGP SIGNATURE-----\r\n" % (NAME, NAME, SHA256))
    assert parse(text) == ("sha256", SHA256)


def test_names_escaped_by_coreutils(tmp_path):
    """coreutils writes `\\HEX  a\\\\b` for names with a backslash, newline or CR."""
    names = ["back\\slash.img", "new\nline.img", "carriage\rreturn.img"]
    lines = []
    for index, name in enumerate(names):
        digest = hashlib.sha256(name.encode()).hexdigest()
        escaped = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        lines.append(("\\%s  %s" if index % 2 else "\\SHA256 (%s) = %s")
                     % ((digest, escaped) if index % 2 else (escaped, digest)))
    text = "\n".join(lines) + "\n"
    for name in names:
        assert parse(text, name) == ("sha256", hashlib.sha256(name.encode()).hexdigest())
    if shutil.which("sha256sum"):   # and what the real tool writes parses the same
        for name in names:
            (tmp_path / name).write_bytes(name.encode())
        written = subprocess.run(["sha256sum", "--", *names], cwd=str(tmp_path), check=True,
                                 stdout=subprocess.PIPE).stdout
        for name in names:
            assert parse_checksum_file(written, name, URL)[1] == \
                hashlib.sha256(name.encode()).hexdigest()


def test_real_sha256sum_and_tag_output_parse(tmp_path):
    if not shutil.which("sha256sum"):
        pytest.skip("sha256sum is not installed")
    (tmp_path / NAME).write_bytes(IMAGE)
    (tmp_path / "other file.iso").write_bytes(b"x")
    for flags in ([], ["--tag"], ["-b"]):
        written = subprocess.run(["sha256sum", *flags, NAME, "other file.iso"],
                                 cwd=str(tmp_path), check=True, stdout=subprocess.PIPE).stdout
        assert parse_checksum_file(written, NAME, URL) == ("sha256", SHA256)


# ---------------------------------------------------------------- which entry
def test_duplicates_that_agree_are_fine_and_different_ones_are_refused():
    same = "%s  %s\nSHA256 (./%s) = %s\n" % (SHA256, NAME, NAME, SHA256.upper())
    assert parse(same) == ("sha256", SHA256)
    error = refused("%s  %s\n%s  ./%s\n" % (SHA256, NAME, OTHER, NAME))
    assert "two different sha256 hashes" in str(error)


def test_several_algorithms_for_one_name_use_the_strongest():
    text = "MD5 (%s) = %s\nSHA512 (%s) = %s\n%s  %s\n" % (NAME, MD5, NAME, SHA512, SHA256, NAME)
    assert parse(text) == ("sha512", SHA512)


def test_missing_entry_lists_what_is_there():
    error = refused("%s  a.img\n%s  b.img\n" % (OTHER, OTHER))
    assert "no entry for" in str(error) and "'a.img'" in str(error)


@pytest.mark.parametrize("text", ["", "\n\n# only comments\n", "<html><body>Not Found</body>",
                                  "%s  \n" % SHA256[:-1], "SHA256 (%s) = xyz\n" % NAME])
def test_nothing_parseable_is_refused(text):
    assert "nothing in it parses" in str(refused(text))


def test_bsd_entry_with_the_wrong_length_or_an_unknown_algorithm_is_refused():
    assert "hex digits" in str(refused("SHA512 (%s) = %s\n" % (NAME, SHA256)))
    assert "not supported" in str(refused("NOSUCHHASH (%s) = %s\n" % (NAME, SHA256)))


def test_dot_slash_on_the_name_looked_for_and_subdirectories_stay_distinct():
    assert parse("%s  ./%s\n" % (SHA256, NAME), "./" + NAME) == ("sha256", SHA256)
    refused("%s  images/%s\n" % (SHA256, NAME))   # another directory's file: not ours


@pytest.mark.parametrize("url,name", [
    ("http://h/a/b/disk.raw.xz", "disk.raw.xz"),
    ("http://h/a/Fedora%20Cloud%2041.raw.xz?token=x#frag", "Fedora Cloud 41.raw.xz"),
    ("https://h:8443/%C3%A9t%C3%A9.img", "\u00e9t\u00e9.img"),
    ("http://h/dir/", ""),
])
def test_image_name_from_url_is_the_percent_decoded_last_segment(url, name):
    assert image_name_from_url(url) == name


def test_percent_decoded_name_finds_its_entry():
    name = image_name_from_url("http://h/x/Fedora%20Cloud%2041.raw.xz")
    text = "SHA256 (Fedora Cloud 41.raw.xz) = %s\n%s  Fedora%%20Cloud%%2041.raw.xz\n" % (
        SHA256, OTHER)
    assert parse(text, name) == ("sha256", SHA256)


def test_url_without_a_file_name_asks_for_checksum_name():
    assert "--checksum-name" in str(refused("%s  %s\n" % (SHA256, NAME), ""))


def test_non_utf8_names_match_byte_for_byte():
    raw_name = b"caf\xe9.img"   # Latin-1 on the server, percent-encoded in the URL
    data = b"%s  %s\n" % (SHA256.encode(), raw_name)
    name = image_name_from_url("http://h/caf%E9.img")
    assert parse_checksum_file(data, name, URL) == ("sha256", SHA256)


def test_entries_keep_line_numbers():
    entries = parse_entries(b"# c\n%s  a\n\nSHA1 (b) = %s\n" % (SHA256.encode(), SHA1.encode()))
    assert [(e.algo, e.name, e.line) for e in entries] == [(None, "a", 2), ("SHA1", "b", 4)]


# ---------------------------------------------------------------- fetching
def test_fetch_checksum_refuses_a_file_over_the_cap():
    calls: List[int] = []

    def read(limit: int) -> bytes:
        calls.append(limit)
        return b"#" * limit
    with pytest.raises(E.ChecksumFileError) as info:
        fetch_checksum(URL, NAME, read)
    assert calls == [CHECKSUM_FILE_MAX_BYTES + 1] and "larger than" in str(info.value)
    assert info.value.exit_code == 94


def test_served_checksum_file_through_faults_with_rawfetch_open(make_server):
    """End to end once: the file is served by the fault server (a reset, then a stall),
    read with rawfetch.open within the cap, and parsed."""
    srv = make_server()
    body = ("# release 41\n%s  other.img\n%s *%s\n" % (OTHER, SHA256, NAME)).encode() * 400
    srv.add("/images/SHA256SUMS", body, etag='"sums"')
    srv.script([A.rst(at=5000), A.stall(at=20000), A.normal()])
    url = srv.url("/images/SHA256SUMS")
    image_url = srv.url("/images/%s" % NAME)

    def read(limit: int) -> bytes:
        with rawfetch.open(url, **dict(QUICK, idle_timeout=0.5)) as stream:
            return read_limited(stream, limit)
    assert fetch_checksum(url, image_name_from_url(image_url), read) == ("sha256", SHA256)
    assert len(srv.requests) == 3 and srv.requests[1].range is not None


def test_read_limited_stops_at_the_limit(make_server):
    srv = make_server()
    srv.add("/big", b"x" * 100000)
    with rawfetch.open(srv.url("/big"), **QUICK) as stream:
        assert read_limited(stream, 70000) == b"x" * 70000
    with rawfetch.open(srv.url("/big"), **QUICK) as stream:
        assert read_limited(stream, 200000) == b"x" * 100000


# ---------------------------------------------------------------- options and flags
def test_decompress_options():
    assert DEFAULTS["decompress"] == "none" and DEFAULTS["xz_memlimit"] == 256 << 20
    assert Options(decompress="auto").decompress == "auto"
    assert Options(gunzip=True).decompress == "gzip"
    assert Options(gunzip=True, decompress="gzip").decompress == "gzip"
    for bad in (dict(decompress="zstd"), dict(gunzip=True, decompress="xz"),
                dict(xz_memlimit=0), dict(xz_memlimit="lots"), dict(xz_memlimit=True),
                dict(checksum_url=""), dict(checksum_name="x"),
                dict(checksum_url="http://h/S", checksum="md5:" + MD5)):
        with pytest.raises(E.InvalidRequest):
            Options(**bad)
    assert Options(xz_memlimit="64M").xz_memlimit == 64 << 20


@pytest.mark.parametrize("text,size", [("4096", 4096), ("512k", 512 << 10), ("256M", 256 << 20),
                                       ("1.5G", 3 << 29), ("0.5m", 1 << 19), ("2T", 2 << 40),
                                       (12345, 12345)])
def test_parse_size_uses_powers_of_1024(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1M", "1MB", "12X", "1e3", "nan", "1_0", "1.2.3",
                                  "3 M", -5, 1.5, None])
def test_parse_size_refuses_anything_else(text):
    with pytest.raises(E.InvalidRequest):
        parse_size(text)


def test_command_flags_map_onto_options():
    args = build_parser().parse_args(["http://h/i.xz", "-o", "x", "--decompress", "xz",
                                      "--xz-memlimit", "1.5G", "--checksum-url", "http://h/S",
                                      "--checksum-name", "i.xz"])
    options = options_from(args)
    assert (options["decompress"], options["xz_memlimit"], options["checksum_url"],
            options["checksum_name"]) == ("xz", 3 << 29, "http://h/S", "i.xz")
    defaults = options_from(build_parser().parse_args(["http://h/i", "-o", "x"]))
    assert (defaults["decompress"], defaults["xz_memlimit"]) == ("none", 256 << 20)
    Options(**defaults)


def test_command_usage_errors(server):
    bad_size = run_cli(server.url("/img"), "-o", "-", "--xz-memlimit", "12X")
    assert bad_size.returncode == 2 and b"--xz-memlimit" in bad_size.stderr
    conflict = run_cli(server.url("/img"), "-o", "-", "--gunzip", "--decompress", "bzip2")
    assert conflict.returncode == 3 and b"conflicts" in conflict.stderr
    both = run_cli(server.url("/img"), "-o", "-", "--md5", MD5, "--checksum-url",
                   server.url("/S"))
    assert both.returncode == 3 and server.connection_count == 0   # refused before sending
    helptext = b" ".join(run_cli("--help").stdout.split())   # argparse wraps lines
    assert b"[default: none]" in helptext and b"[default: 256M]" in helptext
