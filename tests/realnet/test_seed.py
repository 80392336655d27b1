"""The seed scenario end to end: a gzip (and an xz, with its SHA256SUMS and a read-back)
disk image from nginx in a namespace, through a schedule of real faults, decompressed onto
a loop device, md5 of the result verified.

Why: this is the job rawfetch exists for (README: `rawfetch URL -o - | gunzip > /dev/sdX`,
and `rawfetch URL --gunzip -o /dev/sdX`). The image is 256 MiB (random, text-like, zero
and repeated-sector megabytes; ~136 MiB gzipped), paced by nginx at 16 MiB/s so that the
faults (blackhole 2 s, RST, 5% loss for 3 s, blackhole 1 s) all land while it runs.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import time
import zlib
from typing import Dict, Iterator, List

import pytest

from tests.faultserver import make_body
from tests.realnet.harness import FAST, LOGCLI, MiB, RAWFETCH, Outcome, client_env, ns_url, \
    run_client
from tests.realnet.netns import (Schedule, Step, blackhole, loop_backing, loop_device, loss,
                                 reset)
from tests.realnet.servers import PUBLISHED_AGO, swap_in

pytestmark = [pytest.mark.realnet, pytest.mark.slow, pytest.mark.timeout(90)]
RAW = 256 * MiB
TEXT = bytes(b" etaoinshrdlu\nmf"[i % 16] for i in range(256))  # 4-bit "words"
BOUND = 40.0   # s; ~8.5 s clean transfer + the faults' own time + generous slack


def image_block(i: int, salt: int = 0) -> bytes:
    """Megabyte `i` of the image: compressible-but-not-trivial, like a real disk."""
    kind, seed = i % 8, i + 100000 * salt
    if kind < 3:
        return make_body(MiB, seed=1000 + seed)                 # already-compressed data
    if kind < 5:
        return make_body(MiB, seed=2000 + seed).translate(TEXT)  # text-like
    if kind == 5:
        return bytes(MiB)                                        # free space
    if kind == 6:
        return make_body(4096, seed=3000 + seed) * 256           # repeated sectors
    return b"".join(bytes(61440) + make_body(4096, seed=4000 + 16 * seed + k)
                    for k in range(16))                          # sparse metadata


def make_image(path: str, raw_size: int, salt: int = 0, codec: str = "gzip") -> Dict[str, str]:
    """Write a gzip (-1, one member) or xz (preset 1) image; return its path, the md5 of
    the raw and of the packed bytes, and the packed bytes' sha256 (for SHA256SUMS)."""
    raw_md5, gz_md5, packed_sha = hashlib.md5(), hashlib.md5(), hashlib.sha256()
    if codec == "xz":
        import lzma
        packer = lzma.LZMACompressor(preset=1)
    else:
        packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    with open(path, "wb") as handle:
        for i in range(raw_size // MiB + 1):
            block = image_block(i, salt) if i < raw_size // MiB else b""
            raw_md5.update(block)
            packed = packer.compress(block) if block else packer.flush()
            gz_md5.update(packed)
            packed_sha.update(packed)
            handle.write(packed)
    stamp = time.time() - PUBLISHED_AGO   # published a while ago: strong validators
    os.utime(path, (stamp, stamp))
    return {"path": path, "raw_md5": raw_md5.hexdigest(), "gz_md5": gz_md5.hexdigest(),
            "sha256": packed_sha.hexdigest()}


@pytest.fixture(scope="module")
def seed_image(tmp_path_factory, realnet_ready: None) -> Iterator[Dict[str, str]]:
    image = make_image(str(tmp_path_factory.mktemp("seed") / "image.gz"), RAW)
    yield image
    os.unlink(image["path"])


@pytest.fixture(scope="module")
def seed_xz(tmp_path_factory, realnet_ready: None) -> Iterator[Dict[str, str]]:
    image = make_image(str(tmp_path_factory.mktemp("seedxz") / "image.raw.xz"), RAW,
                       codec="xz")
    yield image
    os.unlink(image["path"])


@pytest.fixture
def target(tmp_path) -> Iterator[str]:
    """A loop device over a sparse RAW-sized file (our name, so stale ones are swept);
    the plain file itself where losetup does not work."""
    backing = loop_backing(str(tmp_path))
    with open(backing, "wb") as handle:
        handle.truncate(RAW)
    with loop_device(backing) as device:
        yield device or backing   # the file stands in where losetup is unavailable


def md5_prefix(path: str, size: int) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while size:
            block = handle.read(min(16 * MiB, size))
            if not block:
                break
            digest.update(block)
            size -= len(block)
    return digest.hexdigest()


def has_gunzip_flag() -> bool:
    proc = subprocess.run(RAWFETCH + ["--help"], stdout=subprocess.PIPE, env=client_env(),
                          timeout=30)
    return b"--gunzip" in proc.stdout


def schedule_steps() -> List[Step]:
    """Faults by time since the start (the pipe gives no progress probe)."""
    return [Step(blackhole(), hold=2.0, at_time=1.5), Step(reset(), hold=0.3, at_time=5.0),
            Step(loss(0.05), hold=3.0, at_time=6.5), Step(blackhole(), hold=1.0, at_time=10.5)]


def pipeline(mode: str, fetch: List[str], target: str) -> List[str]:
    """bash running one of the two documented pipelines, reporting every exit code."""
    command = " ".join(map(shlex.quote, fetch))
    if mode == "pipe":
        line = "%s -o - | gunzip -c > %s" % (command, shlex.quote(target))
    else:
        if not has_gunzip_flag():
            pytest.skip("rawfetch has no --gunzip yet")
        line = "%s --gunzip -o %s" % (command, shlex.quote(target))
    return ["bash", "-c", line + '; echo "pipestatus: ${PIPESTATUS[*]}" >&2']


def pipestatus(result: Outcome) -> List[int]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("pipestatus:")]
    assert lines, result.explain()
    return [int(code) for code in lines[-1].split()[1:]]


@pytest.mark.parametrize("mode", ["pipe", "gunzip-flag"])
def test_gzip_image_to_block_device_through_faults(mode, topo, ns_nginx, docroot,
                                                   seed_image, target):
    """Both documented pipelines end with the exact image on the device (md5), exit 0,
    within BOUND s, having resumed through every fault."""
    os.symlink(seed_image["path"], os.path.join(docroot, "image.gz"))
    fetch = LOGCLI + [ns_url("image.gz", rate="16m"), "--md5", seed_image["gz_md5"],
                      "--max-time", "45"] + FAST
    schedule = Schedule(topo, schedule_steps())
    result = run_client(pipeline(mode, fetch, target), timeout=60,
                        prefix=topo.exec_prefix(topo.client), schedule=schedule)
    assert set(pipestatus(result)) == {0}, result.explain()
    assert schedule.all_applied() and result.elapsed < BOUND, result.explain()
    last_fault = max(s.applied_at or 0 for s in schedule.steps)
    assert last_fault < result.elapsed, "the last fault landed after the transfer ended"
    assert md5_prefix(target, RAW) == seed_image["raw_md5"]
    assert len(result.named("resume")) >= 2, result.explain()
    assert {"IdleTimeout", "ReceiveError"} <= set(result.errors()), result.explain()


@pytest.mark.parametrize("mode", ["pipe", "gunzip-flag"])
def test_image_replaced_mid_transfer(mode, topo, ns_nginx, docroot, tmp_path, target):
    """A new image is published mid-transfer, then a RST. --gunzip onto the device restarts
    from the device's start and ends with the NEW image; `-o -` cannot take bytes back
    from the pipe and fails with 91 (ResourceChanged). 64 MiB images. Bound: 15 s."""
    old = make_image(os.path.join(docroot, "image.gz"), 64 * MiB, salt=1)
    new = make_image(str(tmp_path / "new.gz"), 64 * MiB, salt=2)
    step = Step(reset(), hold=0.3, at_time=1.5,
                before=lambda: swap_in(old["path"], new["path"]))
    fetch = LOGCLI + [ns_url("image.gz", rate="8m"), "--max-time", "30"] + FAST
    schedule = Schedule(topo, [step])
    result = run_client(pipeline(mode, fetch, target), timeout=40,
                        prefix=topo.exec_prefix(topo.client), schedule=schedule)
    assert schedule.all_applied() and result.elapsed < 15, result.explain()
    if mode == "pipe":
        assert pipestatus(result)[0] == 91, result.explain()
        assert result.errors()[-1] == "ResourceChanged", result.explain()
    else:
        assert pipestatus(result) == [0], result.explain()
        assert len(result.named("restart")) == 1, result.explain()
        assert md5_prefix(target, 64 * MiB) == new["raw_md5"]


def test_xz_image_with_checksum_file_and_read_back_onto_block_device(
        topo, ns_nginx, docroot, seed_xz, target):
    """Today's images: a .raw.xz with a SHA256SUMS next to it, --decompress xz
    --checksum-url --verify-written onto the loop device, through the same faults. The
    first MiB is zeroed first and written last, the device is read back, exit 0."""
    os.symlink(seed_xz["path"], os.path.join(docroot, "image.raw.xz"))
    with open(os.path.join(docroot, "SHA256SUMS"), "w") as handle:
        handle.write("%s  other.img\n%s  image.raw.xz\n" % ("0" * 64, seed_xz["sha256"]))
    fetch = LOGCLI + [ns_url("image.raw.xz", rate="16m"), "--decompress", "xz",
                      "--checksum-url", ns_url("SHA256SUMS"), "--verify-written",
                      "--max-time", "60", "-o", target] + FAST
    schedule = Schedule(topo, schedule_steps())
    result = run_client(fetch, timeout=75, prefix=topo.exec_prefix(topo.client),
                        schedule=schedule)
    assert result.returncode == 0, result.explain()
    assert schedule.all_applied(), result.explain()
    assert md5_prefix(target, RAW) == seed_xz["raw_md5"]
    names = [e["event"] for e in result.events]
    assert names.index("checksum") < names.index("wipe") < names.index("head_written") \
        < names.index("readback"), result.explain()
    assert result.named("readback")[0]["ok"] == "True", result.explain()
    assert len(result.named("resume")) >= 2, result.explain()
