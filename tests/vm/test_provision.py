"""The spec's test plan, run for real: boot the bootstrap ramdisk, provision its disk.

"Start slave VM and boot it to bootstrap ramdisk ... start deployment with image based
provision while emulating various network connectivity issues ... iptables could be
used; the deployment has to be successful" (fuel spec ibp-reconnect, Testing). Each
scenario boots the recipe's ramdisk (tools/ramdisk) under qemu once, the guest runs
`rawfetch --cmdline` onto its virtio disk (pre-filled with an old, bootable-looking OS)
and powers off; the test then checks, from the host: the disk's bytes by digest, the
RAWFETCH-EXIT line, and what the server saw (requests and their Range headers).
"""
from __future__ import annotations

import hashlib

import pytest

from tests.faultserver import actions as A, make_body
from tests.vm.conftest import MiB, IMAGE_SIZE, Provision, expected_disk, old_os, sums_file
from tests.vm.netns import GUEST_ADDR, Trigger

pytestmark = [pytest.mark.vm, pytest.mark.timeout(420)]

IMAGE = make_body(IMAGE_SIZE, seed=1)
NEW_IMAGE = make_body(IMAGE_SIZE, seed=2)
LOSS = 0.03                 # the random loss each way (iptables -m statistic)
FAULT_AT = 4 * MiB          # where a mid-transfer fault strikes
TRIGGER_DEADLINE = 120.0    # s for the transfer to reach FAULT_AT (a TCG boot is ~12 s)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def provisioned(prov: Provision, *params: str, image: bytes = IMAGE) -> None:
    """Boot; assert exit 0 and the disk = image over the old OS, byte for byte."""
    result = prov.boot("rawfetch.url=" + prov.url("/img"), *params)
    assert result.code == 0, result.explain()
    assert prov.disk_sha() == expected_disk(image), result.explain()


def resumed_from(ranges: list) -> list:
    """The start offsets of the Range requests the server saw (resumes), in order."""
    return [int(r.split("=")[1].split("-")[0]) for r in ranges if r]


def cpio_names(initrd: str) -> list:
    """The paths in a gzip'd newc archive (what the recipe put in the ramdisk)."""
    import gzip
    with open(initrd, "rb") as handle:
        data = gzip.decompress(handle.read())
    names, pos = [], 0
    while data[pos:pos + 6] == b"070701":
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name_end = pos + 110 + namesize
        names.append(data[pos + 110:name_end - 1].decode())
        pos = name_end + (-name_end % 4)
        pos += size + (-size % 4)
    assert names[-1] == "TRAILER!!!"
    return names


def test_clean(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provisioned(provision)
    assert provision.ranges() == [None]


def test_cut(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.script([A.fin(at=FAULT_AT), A.normal()], path="/img")
    provisioned(provision)
    assert resumed_from(provision.ranges()) == [FAULT_AT]


def test_rst(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.script([A.rst(at=FAULT_AT), A.normal()], path="/img")
    provisioned(provision)
    starts = resumed_from(provision.ranges())
    assert len(starts) == 1 and 0 < starts[0] <= FAULT_AT


def test_stall(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.script([A.stall(at=FAULT_AT), A.normal()], path="/img")
    provisioned(provision)
    assert resumed_from(provision.ranges()) == [FAULT_AT]


def test_trickle(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.script([A.trickle(at=FAULT_AT, gap=0.5, step=64), A.normal()], path="/img")
    provisioned(provision, "rawfetch.speed-limit=65536", "rawfetch.speed-time=3")
    starts = resumed_from(provision.ranges())
    assert len(starts) == 1 and FAULT_AT <= starts[0] < FAULT_AT + 4096


def test_range_ignored(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.script([A.rst(at=FAULT_AT), A.normal(ignore_range=True)], path="/img")
    provisioned(provision)
    assert len(provision.ranges()) == 2 and provision.ranges()[1] is not None


def _iptables_fault(prov: Provision, fault: list, seconds: float) -> Trigger:
    trigger = Trigger(prov.net, FAULT_AT, fault, seconds, TRIGGER_DEADLINE)
    trigger.start()
    return trigger


def test_iptables_blackhole_5s(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    trigger = _iptables_fault(provision, [
        ["INPUT", "-s", GUEST_ADDR, "-j", "DROP"], ["OUTPUT", "-d", GUEST_ADDR, "-j", "DROP"]],
        5.0)
    provisioned(provision)
    trigger.join(10)
    assert trigger.started_at is not None and trigger.ended_at is not None
    assert trigger.ended_at - trigger.started_at >= 5.0
    starts = resumed_from(provision.ranges())
    assert starts and all(s >= FAULT_AT // 2 for s in starts), provision.ranges()


def test_iptables_reject_tcp_reset_2s(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    trigger = _iptables_fault(provision, [
        ["INPUT", "-p", "tcp", "-s", GUEST_ADDR, "-j", "REJECT", "--reject-with",
         "tcp-reset"]], 2.0)
    provisioned(provision)
    trigger.join(10)
    assert trigger.started_at is not None and trigger.ended_at is not None
    starts = resumed_from(provision.ranges())
    assert starts and all(s >= FAULT_AT // 2 for s in starts), provision.ranges()


def test_iptables_random_loss_3pct(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    offloads = provision.net.offloads()
    assert "generic-segmentation-offload: off" in offloads, offloads
    assert "gso_max_segs 1 " in offloads, offloads
    for chain, way in (("INPUT", "-s"), ("OUTPUT", "-d")):
        # vm-seen only counts what passed: the loss rule is inserted before it
        provision.net.iptables("-I", chain, way, GUEST_ADDR, "-m", "comment", "--comment",
                               "vm-seen", "-j", "RETURN")
        provision.net.iptables("-I", chain, way, GUEST_ADDR, "-m", "statistic", "--mode",
                               "random", "--probability", str(LOSS), "-m", "comment",
                               "--comment", "vm-loss", "-j", "DROP")
    provisioned(provision)
    seen = {c: provision.net.counters(c, "vm-seen") for c in ("INPUT", "OUTPUT")}
    lost = {c: provision.net.counters(c, "vm-loss") for c in ("INPUT", "OUTPUT")}
    print("loss: passed (packets, bytes) %s, dropped %s" % (seen, lost))
    packets_out, bytes_out = seen["OUTPUT"][0] + lost["OUTPUT"][0], seen["OUTPUT"][1]
    # wire-sized packets (no GSO super-packets): 16 MiB is >= 11,000 segments to the guest
    assert bytes_out / max(seen["OUTPUT"][0], 1) <= 1514 and packets_out > 11000, (seen, lost)
    for chain in ("INPUT", "OUTPUT"):   # 3 % lost each way, within 4.5 binomial sigmas
        total = seen[chain][0] + lost[chain][0]
        mean, sigma = LOSS * total, (LOSS * (1 - LOSS) * total) ** 0.5
        assert max(1, mean - 4.5 * sigma) <= lost[chain][0] <= mean + 4.5 * sigma, (
            chain, seen, lost)


def test_503_retry_after_storm(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    busy = A.status(503, {"Retry-After": "1"})
    provision.server.script([busy, busy, busy, A.normal()], path="/img")
    provisioned(provision)
    assert provision.ranges() == [None] * 4
    times = [r.time for r in provision.server.requests if r.path == "/img"]
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= 0.9, gaps          # each Retry-After: 1 was honoured


def test_image_replaced_midway(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.script([A.rst(at=FAULT_AT), A.replace(NEW_IMAGE, then=A.normal())],
                            path="/img")
    provisioned(provision, image=NEW_IMAGE)
    ranges = provision.ranges()
    assert ranges[0] is None and ranges[1] is not None     # the resume asked If-Range
    ifr = [r.if_range for r in provision.server.requests if r.path == "/img"]
    assert ifr[1] is not None


def test_sha256sums_verify_written(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.add("/SHA256SUMS", sums_file([(sha(b"other"), "other.img"),
                                                   (sha(IMAGE), "img")]))
    provision.server.script([A.rst(at=FAULT_AT), A.normal()], path="/img")
    provisioned(provision, "rawfetch.checksum-url=" + provision.url("/SHA256SUMS"),
                "rawfetch.verify-written")
    assert [r.path for r in provision.server.requests].count("/SHA256SUMS") == 1
    assert len(resumed_from(provision.ranges())) == 1


def test_sha256sums_names_another_hash(provision: Provision) -> None:
    provision.server.add("/img", IMAGE)
    provision.server.add("/SHA256SUMS", sums_file([(sha(NEW_IMAGE), "img")]))
    result = provision.boot("rawfetch.url=" + provision.url("/img"),
                            "rawfetch.checksum-url=" + provision.url("/SHA256SUMS"))
    assert result.code == 90, result.explain()          # ChecksumMismatch
    with open(provision.disk, "rb") as handle:
        head = handle.read(MiB)
    assert head == bytes(MiB)                            # not left bootable
    assert provision.disk_sha() == expected_disk(IMAGE, head_zeroed=True)
    assert provision.ranges() == [None]


def test_shell_on_failure_when_asked(provision: Provision) -> None:
    """rawfetch-init.shell=1: a failed provisioning leaves a shell on the console (the
    operator looks around), and leaving it powers off; nothing was written."""
    result = provision.boot("rawfetch.url=" + provision.url("/missing.img"),
                            "rawfetch-init.shell=1", prompt="RAWFETCH-INIT: shell",
                            answer=b"echo SHELL-$((6 * 7)) $(cat /proc/sys/kernel/ostype)\n"
                                   b"exit\n")
    assert result.code == 22, result.explain()            # HTTPStatusError (404)
    assert "SHELL-42 Linux" in result.console, result.explain()
    assert result.qemu_rc == 0 and "reboot: Power down" in result.console
    assert provision.disk_sha() == hashlib.sha256(old_os()).hexdigest()
    assert provision.ranges("/missing.img") == [None]


def test_ip_dhcp(provision: Provision) -> None:
    """ip=dhcp: the ramdisk leases its address (busybox udhcpc) from a DHCP server in the
    namespace, then provisions through a reset."""
    provision.server.add("/img", IMAGE)
    provision.server.script([A.rst(at=FAULT_AT), A.normal()], path="/img")
    with provision.dhcp_server("10.77.0.50", "10.77.0.50"):
        result = provision.boot("rawfetch.url=" + provision.url("/img"), "ip=dhcp")
    assert result.code == 0, result.explain()
    assert "up: inet 10.77.0.50/24" in result.console, result.explain()
    assert provision.disk_sha() == expected_disk(IMAGE)
    assert len(resumed_from(provision.ranges())) == 1


def test_no_libcrypto_variant(provision: Provision, ramdisk_no_libcrypto: dict) -> None:
    """The smaller ramdisk (no OpenSSL): http, sha256 by CPython's built-in _sha256."""
    names = " ".join(cpio_names(ramdisk_no_libcrypto["initrd"]))
    assert "libcrypto" not in names and "_hashlib" not in names and "/ssl.py" not in names
    assert "libcrypto" in " ".join(cpio_names(provision.ramdisk["initrd"]))
    provision.server.add("/img", IMAGE)
    provision.server.add("/SHA256SUMS", sums_file([(sha(IMAGE), "img")]))
    provision.server.script([A.rst(at=FAULT_AT), A.normal()], path="/img")
    result = provision.boot("rawfetch.url=" + provision.url("/img"),
                            "rawfetch.checksum-url=" + provision.url("/SHA256SUMS"),
                            "rawfetch.verify-written", initrd=ramdisk_no_libcrypto["initrd"])
    assert result.code == 0, result.explain()
    assert provision.disk_sha() == expected_disk(IMAGE)
    assert len(resumed_from(provision.ranges())) == 1


def test_dracut_module(provision: Provision, ramdisk_dracut: dict) -> None:
    """The same provisioning from a dracut-built initrd (dracut's init, our 95rawfetch
    cmdline hook), through a reset mid-transfer."""
    provision.server.add("/img", IMAGE)
    provision.server.script([A.rst(at=FAULT_AT), A.normal()], path="/img")
    result = provision.boot("rawfetch.url=" + provision.url("/img"),
                            initrd=ramdisk_dracut["initrd"])
    assert result.code == 0, result.explain()
    names = cpio_names(ramdisk_dracut["initrd"])
    assert "usr/lib/dracut/hooks/cmdline/99-rawfetch-hook.sh" in names, names
    assert "RAWFETCH-INIT: ramdisk up" not in result.console   # dracut's init, not ours
    assert provision.disk_sha() == expected_disk(IMAGE)
    assert len(resumed_from(provision.ranges())) == 1


def test_initramfs_tools_hook(provision: Provision, ramdisk_initramfs_tools: dict) -> None:
    """The same from an initramfs-tools initrd (its init and udev, our init-premount
    script), through a stall mid-transfer."""
    provision.server.add("/img", IMAGE)
    provision.server.script([A.stall(at=FAULT_AT), A.normal()], path="/img")
    result = provision.boot("rawfetch.url=" + provision.url("/img"),
                            initrd=ramdisk_initramfs_tools["initrd"])
    assert result.code == 0, result.explain()
    names = cpio_names(ramdisk_initramfs_tools["initrd"])
    assert "scripts/init-premount/rawfetch" in names, names
    assert "RAWFETCH-INIT: ramdisk up" not in result.console
    assert provision.disk_sha() == expected_disk(IMAGE)
    assert resumed_from(provision.ranges()) == [FAULT_AT]
