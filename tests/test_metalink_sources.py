"""How a Metalink merges with the operator's URL, mirrors and checksum (issue 24,
docs/metalink.md "How the inputs merge"), and the --metalink option's surface: accepted
by the parser and checked; a Metalink it cannot read is exit 98 before any connection
(the downloads themselves: tests/test_metalink_download.py)."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import pytest

from rawfetch import metalink as M
from rawfetch.errors import InvalidRequest, MetalinkError
from rawfetch.metalink.make import to_xml
from rawfetch.metalink.sources import Sources, merge_sources
from rawfetch.options import Options

pytestmark = pytest.mark.timeout(60)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = b"rawfetch image" * 1000
SHA256 = hashlib.sha256(IMAGE).hexdigest()
MD5 = hashlib.md5(IMAGE).hexdigest()


def document(mirrors, hashes=(("sha-256", SHA256), ("md5", MD5))) -> M.File:
    """A File as load() gives it, from the publisher's XML (a real round trip)."""
    pieces = (M.Pieces("sha-256", 4096, b"".join(
        hashlib.sha256(IMAGE[i:i + 4096]).digest() for i in range(0, len(IMAGE), 4096))),)
    item = M.File("disk.img", len(IMAGE), tuple(hashes), pieces,
                  tuple(M.Mirror(*mirror) for mirror in mirrors))
    return M.load(to_xml([item]).encode())


MIRRORS = [("http://c/img", 3, "fr"), ("http://a/img", 1, "de"), ("http://u/img", None, None),
           ("http://b/img", 2, "fr")]


def test_the_metalink_alone_gives_its_mirrors_by_priority_hash_size_and_pieces():
    item = document(MIRRORS)
    merged = merge_sources(item)
    assert merged == Sources(("http://a/img", "http://b/img", "http://c/img", "http://u/img"),
                             "sha256:" + SHA256, len(IMAGE), item.best_pieces())
    assert merged.pieces is not None and merged.pieces.count == 4


def test_explicit_urls_come_first_in_their_order_then_the_metalinks_without_duplicates():
    merged = merge_sources(document(MIRRORS), "http://master/img",
                           ["http://b/img", "http://z/img", "http://master/img"])
    assert merged.urls == ("http://master/img", "http://b/img", "http://z/img",
                           "http://a/img", "http://c/img", "http://u/img")


def test_a_location_puts_its_mirrors_first_among_the_metalinks_by_priority():
    merged = merge_sources(document(MIRRORS), "http://master/img", location="FR")
    assert merged.urls == ("http://master/img", "http://b/img", "http://c/img",
                           "http://a/img", "http://u/img")


@pytest.mark.parametrize("given, expected", [
    ("sha256:" + SHA256.upper(), "sha256:" + SHA256),     # agrees (hex case aside)
    ("md5:" + MD5, "md5:" + MD5),                         # agrees with the weaker hash
    ("sha512:" + hashlib.sha512(IMAGE).hexdigest(),       # an algorithm the document lacks
     "sha512:" + hashlib.sha512(IMAGE).hexdigest()),
    ("SHA-256:" + SHA256, "sha256:" + SHA256),
])
def test_an_explicit_checksum_wins_when_it_does_not_contradict(given, expected):
    assert merge_sources(document(MIRRORS), checksum=given).checksum == expected


@pytest.mark.parametrize("given", ["sha256:" + "0" * 64, "md5:" + "f" * 32])
def test_a_checksum_contradicting_the_metalinks_hash_is_a_metalink_error(given):
    with pytest.raises(MetalinkError, match="contradicts the Metalink's") as caught:
        merge_sources(document(MIRRORS), checksum=given)
    assert caught.value.exit_code == 98 and given.split(":")[1] in str(caught.value)


def test_a_malformed_explicit_checksum_is_an_invalid_request():
    with pytest.raises(InvalidRequest):
        merge_sources(document(MIRRORS), checksum="sha256:abc")


def test_a_metalink_without_hashes_leaves_the_checksum_to_the_operator():
    item = document(MIRRORS, hashes=())
    assert merge_sources(item).checksum is None
    assert merge_sources(item, checksum="md5:" + MD5).checksum == "md5:" + MD5


@pytest.mark.parametrize("kwargs, words", [
    ({"metalink": ""}, "non-empty str"), ({"metalink": 3}, "non-empty str"),
    ({"metalink_name": "disk.img"}, "metalink_name needs metalink"),
])
def test_the_metalink_options_are_checked(kwargs, words):
    with pytest.raises(InvalidRequest, match=words):
        Options(**kwargs)
    assert Options().metalink is None and Options().metalink_name is None
    assert Options(metalink="disk.img.meta4").metalink == "disk.img.meta4"


def test_an_unreadable_metalink_is_exit_98_before_any_connection(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    url = "http://127.0.0.1:%d/disk.img" % listener.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        proc = subprocess.run([sys.executable, "-m", "rawfetch", url, "-o", "out",
                               "--metalink", "disk.img.meta4", "--metalink-name", "disk.img"],
                              cwd=str(tmp_path), env=env, capture_output=True, text=True,
                              timeout=30)
        with pytest.raises(BlockingIOError):
            listener.accept()          # nobody connected
    finally:
        listener.close()
    assert proc.returncode == 98, proc.stderr
    assert "cannot read the Metalink disk.img.meta4" in proc.stderr
    assert os.listdir(str(tmp_path)) == []


def test_help_lists_the_metalink_flags():
    proc = subprocess.run([sys.executable, "-m", "rawfetch", "--help"], capture_output=True,
                          text=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=30)
    assert "--metalink URL|FILE" in proc.stdout and "--metalink-name NAME" in proc.stdout
