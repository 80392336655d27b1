"""SafeDisk on a real block device (a loop device): the device-size refusal, and the
read-back going to the device rather than to the page cache.

Why a loop device: only a block device has a size to exceed, and only its page cache
can hide what the device really holds. Its backing file is "what the device stores":
altering it after the final fsync is a device that did not keep what it was given;
read-back must see that, which it can only do if the written range was really dropped
from the device's cache (posix_fadvise DONTNEED) before reading.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from rawfetch import errors as E
from rawfetch.disk import HEAD_HOLD
from tests.disk_helpers import feed, flip_byte_after
from tests.faultserver import FaultServer, actions as A, make_body
from tests.realnet.netns import loop_backing, loop_device

pytestmark = [pytest.mark.realnet, pytest.mark.timeout(60)]
MiB = 1 << 20
DEVICE_SIZE = 4 * MiB
OLD = b"OLD!" * (DEVICE_SIZE // 4)
QUICK = dict(retry_delay=0.01, retry_max_delay=0.05, idle_timeout=5.0, connect_timeout=5.0)


@pytest.fixture
def loop(tmp_path) -> Iterator[Tuple[str, str]]:
    """(device, backing file): a 4 MiB loop device holding the old system, detached
    after the test (named so that a killed run's device is swept, see netns.py)."""
    backing = loop_backing(str(tmp_path))
    with open(backing, "wb") as handle:
        handle.write(OLD)
    with loop_device(backing) as device:
        if device is None:
            pytest.skip("losetup unusable here")
        yield device, backing


@pytest.fixture
def served() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def sha(path: str, size: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read(size)).hexdigest()


def test_image_larger_than_the_device_is_refused_before_writing(loop, served):
    device, _ = loop
    image = make_body(DEVICE_SIZE + 1, seed=31)
    served.add("/img", image, etag='"big"')
    events: List[Dict[str, Any]] = []
    with pytest.raises(E.LocalWriteError) as caught:
        feed(served.url("/img"), device, events, **QUICK)
    assert caught.value.exit_code == 23
    assert str(DEVICE_SIZE + 1) in str(caught.value) and str(DEVICE_SIZE) in str(caught.value)
    assert sha(device, DEVICE_SIZE) == hashlib.sha256(OLD).hexdigest()
    assert not {"wipe", "wipe_on_failure"} & {e["event"] for e in events}
    assert len(served.requests) == 1


def test_image_onto_the_device_with_read_back(loop, served):
    device, _ = loop
    image = make_body(3 * MiB + 999, seed=32)
    served.add("/img", image, etag='"v"')
    served.script([A.rst(at=MiB + 5), A.normal()])
    events: List[Dict[str, Any]] = []
    feed(served.url("/img"), device, events, verify_written=True, **QUICK)
    assert sha(device, len(image)) == hashlib.sha256(image).hexdigest()
    with open(device, "rb") as handle:
        handle.seek(len(image))
        assert handle.read() == OLD[len(image):]
    readback = [e for e in events if e["event"] == "readback"]
    assert readback and readback[0]["ok"] is True


def test_read_back_sees_the_device_not_the_page_cache(loop, served):
    """The backing file changes in MiB 2 after the final fsync: the read-back names MiB 2
    (it would pass if it read the device's cached pages, which survive while another
    process holds the device open), and the start is zeroed."""
    device, backing = loop
    image = make_body(3 * MiB, seed=33)
    served.add("/img", image, etag='"v"')
    offset = 2 * MiB + 4321

    alter_backing_file = flip_byte_after("head_written", backing, offset, image[offset])

    events: List[Dict[str, Any]] = []
    holder = os.open(device, os.O_RDONLY)   # another opener: the last close would
    try:                                    # drop the device's cache by itself
        with pytest.raises(E.ReadBackMismatch) as caught:
            feed(served.url("/img"), device, events, on_disk_event=alter_backing_file,
                 verify_written=True, **QUICK)
    finally:
        os.close(holder)
    assert caught.value.exit_code == 93 and "MiB 2 " in str(caught.value)
    with open(device, "rb") as handle:
        assert handle.read(HEAD_HOLD) == bytes(HEAD_HOLD)
    assert [e["event"] for e in events][-2:] == ["readback", "wipe_on_failure"]
