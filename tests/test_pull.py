"""Data flows one way: a Stream never calls its consumer; the consumer reads the ledger
after each readinto() and starts its output over itself. And the pipeline's one mode
table."""
from __future__ import annotations

import hashlib

import pytest

import rawfetch
from rawfetch import errors as E
from rawfetch.options import Options
from rawfetch.pipeline import MODES, choose_mode
from rawfetch.resume import Stream
from tests.faultserver import actions as A, make_body
from tests.timing_options import QUICK

pytestmark = pytest.mark.timeout(60)

CUT = 400000


def consume(stream: Stream) -> bytes:
    """What a consumer of the ledger keeps: everything since the last restart."""
    kept = bytearray()
    generation = stream.ledger.restarts
    view = memoryview(bytearray(65536))
    while True:
        got = stream.readinto(view)
        if stream.ledger.restarts != generation:
            generation = stream.ledger.restarts
            kept.clear()                     # before the returned bytes are kept
        if not got:
            return bytes(kept)
        kept += view[:got]


def test_a_changed_object_restarts_through_the_ledger_not_a_callback(server, body):
    new = make_body(len(body), seed=7)
    server.script([A.fin(at=CUT), A.replace(new, etag='"v2"')])
    stream = Stream(server.url("/img"), Options(**QUICK), restartable=True)
    with stream:
        kept = consume(stream)
    assert hashlib.sha256(kept).digest() == hashlib.sha256(new).digest()
    assert stream.ledger.restarts == 1 and stream.offset == len(new)
    assert stream.ledger.identity.etag == '"v2"' and stream.attempts == 2


def test_a_stream_that_cannot_restart_raises_instead(server, body):
    server.script([A.fin(at=CUT), A.replace(make_body(len(body), seed=7), etag='"v2"')])
    with pytest.raises(E.ResourceChanged):
        with rawfetch.open(server.url("/img"), **QUICK) as stream:
            stream.read()
    assert stream.ledger.restarts == 0


@pytest.mark.parametrize("checksum,decoding,part,stdout,mode", [
    (False, False, True, False, "splice"),
    (False, False, False, False, "splice"),      # a device or --in-place file
    (False, False, False, True, "copy"),
    (True, False, True, False, "part-digest"),
    (True, False, False, False, "digest"),
    (True, False, False, True, "digest"),
    (True, True, True, False, "decode"),
    (False, True, False, True, "decode"),
])
def test_one_mode_per_job(checksum, decoding, part, stdout, mode):
    chosen = choose_mode(checksum, decoding, part, stdout)
    assert chosen is MODES[mode]
    assert chosen.splices == (mode in ("splice", "part-digest"))
