"""rawfetch.compat.fuel without fuel-agent installed (its real code runs in
tests/agents/test_fuel.py): the option mapping, fsync classification on real special files,
the checking GunzipStream, a changed image rewinding the target. Real sockets and files."""
from __future__ import annotations

import gzip
import hashlib
import os
import threading

import pytest

from rawfetch import errors as E
from rawfetch.compat import HttpUrl as ReExported
from rawfetch.compat.fuel import (LOW_SPEED_WINDOWS, RETRY_FOREVER, GunzipStream, HttpUrl,
                                  conf_options, fuel_options)
from tests.faultserver import FaultServer, actions as A, make_body
from tests.timing_options import QUICK, TICK

# Every test on the virtual clock (tests/vclock.py): stalls, backoffs and max_time
# bounds take virtual seconds.
pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("vclock")]

IMAGE = make_body((2 << 20) + 5, seed=31)
NEW = make_body((2 << 20) + 5, seed=32)
GZ = gzip.compress(IMAGE, compresslevel=1)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def origin():
    with FaultServer() as server:
        server.add("/img", IMAGE, etag='"v1"')
        server.add("/img.gz", GZ, etag='"g1"')
        server.add("/cut.gz", GZ[:-4096], etag='"g2"')
        yield server


def test_reexport_keeps_the_old_import():
    assert ReExported is HttpUrl


def test_fuel_options_map_every_setting():
    opts = fuel_options(http_max_retries=3, http_retry_delay=0.5, http_request_timeout=3.0)
    assert opts["retries"] == 3 and opts["retry_delay"] == 0.5 and opts["retry_max_delay"] == 5
    assert opts["connect_timeout"] == opts["idle_timeout"] == opts["dns_timeout"] == 3.0
    assert opts["speed_time"] == 3.0 * LOW_SPEED_WINDOWS and opts["max_time"] is None


def test_http_max_retries_zero_is_for_ever():
    assert fuel_options(http_max_retries=0)["retries"] == RETRY_FOREVER


def test_conf_options_read_anything_with_fuel_agents_names():
    class Conf:
        http_max_retries, http_retry_delay, http_request_timeout = 0, 0.3, 4.0
    opts = conf_options(Conf())
    assert opts["retries"] == RETRY_FOREVER and opts["idle_timeout"] == 4.0


def test_retry_for_ever_ends_at_an_explicit_max_time(vclock, origin):
    """http_max_retries=0 never gives up on a 503 by count; max_time (documented as the
    bound for "for ever") ends it, within one backoff of the limit (virtual seconds)."""
    origin.script([A.status(503)])
    max_time, backoff = 1.5, 0.1
    watch = vclock.stopwatch()
    with pytest.raises((E.HTTPStatusError, E.DeadlineExceeded)) as caught:
        HttpUrl(origin.url("/img"), **dict(fuel_options(0, 0.05, 2.0, max_time=max_time),
                                          retry_max_delay=backoff))
    elapsed = watch.stop()
    assert "max_time" in str(caught.value) or isinstance(caught.value, E.DeadlineExceeded)
    assert max_time - backoff - TICK <= elapsed <= max_time + TICK, elapsed
    assert len(origin.requests) > max_time / backoff     # at least one try per backoff


def test_target_file_resumes_and_fsyncs(origin, tmp_path):
    origin.script([A.fin(at=700_000), A.normal()])
    HttpUrl(origin.url("/img"), **QUICK).target(str(tmp_path / "disk"))
    assert sha((tmp_path / "disk").read_bytes()) == sha(IMAGE)
    assert origin.requests[1].range == "bytes=700000-"


def test_target_dev_null_skips_fsync(origin):
    """fsync(/dev/null) answers EINVAL: nothing to make durable, not a failure."""
    HttpUrl(origin.url("/img"), **QUICK).target("/dev/null")
    assert len(origin.requests) == 1


def test_target_pipe_skips_fsync(origin, tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    got = bytearray()

    def drain() -> None:
        with open(fifo, "rb") as reader:
            for block in iter(lambda: reader.read(1 << 16), b""):
                got.extend(block)

    reader = threading.Thread(target=drain)
    reader.start()
    HttpUrl(origin.url("/img"), **QUICK).target(fifo)
    reader.join(10)
    assert sha(bytes(got)) == sha(IMAGE)


def test_target_full_device_is_a_local_write_error(origin):
    """/dev/full answers ENOSPC: the error leaves through errors.mapped, errno kept."""
    with pytest.raises(E.LocalWriteError) as caught:
        HttpUrl(origin.url("/img"), **QUICK).target("/dev/full")
    assert caught.value.errno == 28 and "/dev/full" in str(caught.value)


def test_changed_image_rewinds_the_target(origin, tmp_path):
    """If-Range fails after a break: the file is rewound and the new image written whole."""
    origin.script([A.fin(at=700_000), A.replace(NEW, then=A.normal())])
    HttpUrl(origin.url("/img"), **QUICK).target(str(tmp_path / "disk"))
    assert sha((tmp_path / "disk").read_bytes()) == sha(NEW)
    assert origin.requests[1].if_range == '"v1"'


def test_changed_image_while_iterated_raises(origin):
    """Bytes handed to someone else's chain cannot be taken back: ResourceChanged."""
    origin.script([A.fin(at=1 << 20), A.replace(NEW, then=A.normal())])
    with pytest.raises(E.ResourceChanged):
        list(HttpUrl(origin.url("/img"), **QUICK))


def test_gunzip_stream_target(origin, tmp_path):
    origin.script([A.fin(at=500_000), A.normal()])
    GunzipStream(HttpUrl(origin.url("/img.gz"), **QUICK)).target(str(tmp_path / "disk"))
    assert sha((tmp_path / "disk").read_bytes()) == sha(IMAGE)


def test_gunzip_stream_truncated_raises(origin, tmp_path):
    with pytest.raises(E.GunzipError, match="truncated"):
        GunzipStream(HttpUrl(origin.url("/cut.gz"), **QUICK)).target(str(tmp_path / "disk"))


def test_gunzip_stream_corrupt_raises(origin):
    broken = bytearray(GZ)
    broken[len(broken) // 2] ^= 0xFF
    origin.add("/bad.gz", bytes(broken))
    with pytest.raises(E.GunzipError):
        list(GunzipStream(HttpUrl(origin.url("/bad.gz"), **QUICK)))


def test_gunzip_stream_over_plain_chunks():
    """Any iterable of chunks works (fuel-agent's LocalFile for file:// images)."""
    pieces = [GZ[i:i + 99_991] for i in range(0, len(GZ), 99_991)]
    assert sha(b"".join(GunzipStream(pieces))) == sha(IMAGE)
    with pytest.raises(E.GunzipError):
        list(GunzipStream(pieces[:-1]))
