"""Boot the ramdisk under qemu with a virtio disk and NIC; read its exit line.

Why one qemu at a time with a bounded timeout: TCG takes a whole core, and a guest
must power itself off (rawfetch's --max-time bounds the provisioning step, /init powers
off after it); the host timeout only catches a hung guest.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 512
EXIT_LINE = re.compile(r"^RAWFETCH-EXIT=(\d+)\s*$", re.M)
PROBE_TIMEOUT = 20.0      # s; KVM boots this ramdisk in ~2 s, a faulting KVM guest never does
BOOT_TIMEOUT = 240.0      # s; a TCG boot (~12 s) plus the longest scenario's faults
# The NIC and disk: no option ROM (no iPXE), no offloads negotiated so that the guest
# sends wire-sized segments too (iptables on the host side then sees each packet).
NIC_OFFLOADS = ("csum=off,gso=off,guest_tso4=off,guest_tso6=off,guest_ecn=off,"
                "guest_ufo=off,host_tso4=off,host_tso6=off,host_ecn=off,host_ufo=off")
BASE_APPEND = "console=ttyS0 quiet panic=-1"


@dataclass
class Boot:
    """What one boot produced: the exit line's code (None if absent), console, time."""
    code: Optional[int]
    console: str
    seconds: float
    qemu_rc: Optional[int]

    def explain(self) -> str:
        return "exit %s after %.1f s (qemu rc %s); console tail:\n%s" % (
            self.code, self.seconds, self.qemu_rc, self.console[-3000:])


def qemu_missing() -> Optional[str]:
    if shutil.which(QEMU) is None:
        return "the vm tier needs %s (apt-get install qemu-system-x86)" % QEMU
    return None


def command(kernel: str, initrd: str, append: str, accel: str, console: str,
            disk: Optional[str] = None, tap: Optional[str] = None) -> List[str]:
    """qemu's argv; console "" puts the serial console on qemu's stdin/stdout."""
    serial = "file:" + console if console else "stdio"
    cmd = [QEMU, "-accel", accel, "-m", str(MEMORY_MIB), "-smp", "1", "-no-reboot",
           "-display", "none", "-monitor", "none", "-serial", serial,
           "-kernel", kernel, "-initrd", initrd, "-append", BASE_APPEND + " " + append,
           "-nodefaults"]
    if disk:
        cmd += ["-drive", "file=%s,format=raw,if=none,id=d0,cache=writeback" % disk,
                "-device", "virtio-blk-pci,drive=d0"]
    if tap:
        cmd += ["-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % tap,
                "-device", "virtio-net-pci,netdev=n0,romfile=,%s" % NIC_OFFLOADS]
    return cmd


def boot(cmd: Sequence[str], console: str, timeout: float = BOOT_TIMEOUT) -> Boot:
    """Run qemu to its end (the guest powers off); kill it past `timeout`."""
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    elapsed = time.monotonic() - start
    text = ""
    if os.path.exists(console):
        with open(console, "rb") as handle:
            text = handle.read().decode(errors="replace")
    text += out.decode(errors="replace")
    match = EXIT_LINE.search(text)
    return Boot(int(match.group(1)) if match else None, text, elapsed, proc.returncode)


def converse(cmd: Sequence[str], prompt: str, answer: bytes,
             timeout: float = BOOT_TIMEOUT) -> Boot:
    """Run qemu with the console on a pipe; when `prompt` appears, type `answer`."""
    start = time.monotonic()
    proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    chunks: List[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(
        lambda: os.read(proc.stdout.fileno(), 4096), b"")), daemon=True)  # type: ignore
    reader.start()
    answered = False
    while proc.poll() is None and time.monotonic() - start < timeout:
        if not answered and prompt.encode() in b"".join(chunks):
            proc.stdin.write(answer)        # type: ignore[union-attr]
            proc.stdin.flush()              # type: ignore[union-attr]
            answered = True
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    reader.join(5)
    text = b"".join(chunks).decode(errors="replace")
    match = EXIT_LINE.search(text)
    return Boot(int(match.group(1)) if match else None, text, time.monotonic() - start,
                proc.returncode)


def probe_accel(kernel: str, initrd: str, workdir: str) -> str:
    """'kvm' when a trivial guest boots to its exit line under KVM, else 'tcg'."""
    forced = os.environ.get("RAWFETCH_VM_ACCEL", "")
    if forced in ("kvm", "tcg"):
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    console = os.path.join(workdir, "kvm-probe.log")
    append = "rawfetch.url=http://127.0.0.1:9/ rawfetch.output=/tmp/x rawfetch.retries=0"
    result = boot(command(kernel, initrd, append, "kvm", console), console, PROBE_TIMEOUT)
    return "kvm" if result.code is not None else "tcg"
