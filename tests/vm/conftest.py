"""Fixtures of the vm tier: the ramdisk built once, KVM probed once, one namespace.

Why session scope: building the ramdisk (~10 s), fetching Debian's kernel (cached under
/var/cache/rawfetch-vm) and probing KVM are the same for every scenario; each scenario
then costs one boot. Boots run one at a time (TCG takes a whole core).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from tests.faultserver import FaultServer, make_body
from tests.vm import guest
from tests.vm.netns import GUEST_ADDR, HOST_ADDR, NETMASK, TAP, GuestNet, cleanup_stale, \
    tool_missing

CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20
DISK_SIZE = 40 * MiB
IMAGE_SIZE = 16 * MiB
BOOTSIG = b"\x55\xaa"            # the MBR signature at offset 510: "bootable-looking"
# rawfetch's bounds in every guest: short enough that a fault costs seconds, and
# --max-time bounds the whole provisioning step so a guest always powers off.
GUEST_OPTIONS = ("rawfetch.output=/dev/vda rawfetch.idle-timeout=3 rawfetch.connect-timeout=3 "
                 "rawfetch.retry-delay=0.2 rawfetch.retry-max-delay=1 rawfetch.max-time=150 "
                 "rawfetch.retries=20")
ACCEL_NOTE: Dict[str, str] = {}


def _missing() -> Optional[str]:
    if os.geteuid() != 0:
        return "the vm tier needs root (ip netns, tap devices, iptables)"
    if not os.path.exists("/bin/busybox"):
        return "the vm tier needs /bin/busybox (apt-get install busybox-static)"
    for tool in ("apt-get", "dpkg-deb", "ldd"):
        if shutil.which(tool) is None:
            return "the vm tier needs %s (Debian's kernel is fetched as a package)" % tool
    return guest.qemu_missing() or tool_missing()


@pytest.fixture(scope="session")
def vm_ready() -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    cleanup_stale()


def _build(out: str, *flags: str) -> Dict[str, str]:
    """The recipe's build from this checkout: initrd.img, vmlinuz, footprint table."""
    proc = subprocess.run([sys.executable, os.path.join(CHECKOUT, "tools", "ramdisk",
                                                        "build.py"), "--out", out, *flags],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=900)
    text = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 and "apt-get download" in text:
        pytest.skip("cannot fetch Debian's kernel package: %s" % text.strip()[-300:])
    assert proc.returncode == 0, text
    return {"initrd": os.path.join(out, "initrd.img"), "vmlinuz": os.path.join(out, "vmlinuz"),
            "footprint": text, "dir": out}


@pytest.fixture(scope="session")
def ramdisk(vm_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return _build(str(tmp_path_factory.mktemp("ramdisk")))


@pytest.fixture(scope="session")
def ramdisk_no_libcrypto(ramdisk: Dict[str, str],
                         tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return _build(str(tmp_path_factory.mktemp("ramdisk-nolibcrypto")), "--no-libcrypto")


def _built_by(builder: str, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The builder's initrd with this checkout's hook (skips when it is not installed)."""
    sys.path.insert(0, os.path.join(CHECKOUT, "tools", "ramdisk"))
    import builders
    reason = builders.missing(builder)
    if reason:
        pytest.skip("the %s scenario needs %s" % (builder, reason))
    initrd, vmlinuz = builders.build(builder, str(tmp_path_factory.mktemp(builder)))
    return {"initrd": initrd, "vmlinuz": vmlinuz}


@pytest.fixture(scope="session")
def ramdisk_dracut(ramdisk: Dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return _built_by("dracut", tmp_path_factory)


@pytest.fixture(scope="session")
def ramdisk_initramfs_tools(ramdisk: Dict[str, str],
                            tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return _built_by("initramfs-tools", tmp_path_factory)


@pytest.fixture(scope="session")
def accel(ramdisk: Dict[str, str]) -> str:
    """'kvm' or 'tcg', probed once by booting the ramdisk (printed in the summary)."""
    chosen = guest.probe_accel(ramdisk["vmlinuz"], ramdisk["initrd"], ramdisk["dir"])
    ACCEL_NOTE["accel"] = chosen
    return chosen


@pytest.fixture(scope="session")
def guest_net(vm_ready: None) -> Iterator[GuestNet]:
    net = GuestNet().create()
    try:
        yield net
    finally:
        net.destroy()


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if ACCEL_NOTE:
        terminalreporter.write_line("vm tier: guests ran under %s (KVM probed once: %s)"
                                    % (ACCEL_NOTE["accel"].upper(), ACCEL_NOTE["accel"] == "kvm"
                                       and "works" or "unusable or absent, TCG used"))


def old_os(size: int = DISK_SIZE) -> bytes:
    """The disk before provisioning: a previous OS, bootable-looking (MBR signature)."""
    data = bytearray(make_body(size, seed=99))
    data[510:512] = BOOTSIG
    return bytes(data)


@dataclass
class Provision:
    """One scenario: a fault server in the namespace, a disk, one boot, the results."""
    net: GuestNet
    ramdisk: Dict[str, str]
    accel: str
    workdir: str
    server: FaultServer = field(init=False)
    disk: str = field(init=False)

    def __post_init__(self) -> None:
        with self.net.inside():
            self.server = FaultServer(host=HOST_ADDR).start()
        self.disk = os.path.join(self.workdir, "disk.raw")
        with open(self.disk, "wb") as handle:
            handle.write(old_os())

    @contextlib.contextmanager
    def dhcp_server(self, first: str, last: str) -> Iterator[str]:
        """busybox udhcpd on the tap inside the namespace, leasing first..last."""
        conf = os.path.join(self.workdir, "udhcpd.conf")
        with open(conf, "w") as handle:
            handle.write("interface %s\nstart %s\nend %s\nlease_file %s\npidfile %s\n"
                         "option subnet %s\noption router %s\n"
                         % (TAP, first, last, os.path.join(self.workdir, "leases"),
                            os.path.join(self.workdir, "udhcpd.pid"), NETMASK, HOST_ADDR))
        open(os.path.join(self.workdir, "leases"), "w").close()
        proc = subprocess.Popen(self.net.prefix() + ["/bin/busybox", "udhcpd", "-f", conf],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            yield conf
        finally:
            proc.kill()
            proc.wait()

    def url(self, path: str) -> str:
        return self.server.url(path)

    def boot(self, *params: str, initrd: str = "", prompt: str = "",
             answer: bytes = b"") -> guest.Boot:
        """One boot to power-off; with `prompt`, the console is a pipe and `answer` is
        typed when the prompt appears."""
        # no device named: the first NIC (udev may rename eth0 under the builders' inits)
        ip = "ip=%s::%s:%s:::off" % (GUEST_ADDR, HOST_ADDR, NETMASK)
        append = " ".join((ip, GUEST_OPTIONS) + params)
        console = "" if prompt else os.path.join(self.workdir, "console.log")
        cmd = self.net.prefix() + guest.command(self.ramdisk["vmlinuz"], initrd or
                                                self.ramdisk["initrd"], append, self.accel,
                                                console, disk=self.disk, tap=TAP)
        if prompt:
            return guest.converse(cmd, prompt, answer)
        return guest.boot(cmd, console)

    def disk_sha(self) -> str:
        with open(self.disk, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()

    def ranges(self, path: str = "/img") -> List[Optional[str]]:
        return [r.range for r in self.server.requests if r.path == path]

    def close(self) -> None:
        self.server.stop()
        self.net.flush_rules()


@pytest.fixture
def provision(guest_net: GuestNet, ramdisk: Dict[str, str], accel: str,
              tmp_path) -> Iterator[Provision]:
    guest_net.flush_rules()
    prov = Provision(guest_net, ramdisk, accel, str(tmp_path))
    try:
        yield prov
    finally:
        prov.close()
        os.unlink(prov.disk)


def expected_disk(image: bytes, head_zeroed: bool = False) -> str:
    """sha256 of the whole disk after writing `image` over the old OS (and, when the
    run failed after writing, with its first MiB zeroed)."""
    disk = bytearray(old_os())
    disk[:len(image)] = image
    if head_zeroed:
        disk[:MiB] = bytes(MiB)
    return hashlib.sha256(bytes(disk)).hexdigest()


def sums_file(entries: Sequence[Sequence[str]]) -> bytes:
    return "".join("%s  %s\n" % (digest, name) for digest, name in entries).encode()
