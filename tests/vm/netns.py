"""The guest's network: one namespace holding a tap device and the image server.

Why a namespace: the faults are real kernel ones (iptables DROP, REJECT with a TCP
reset, random loss) and must never touch the host. The tap device is created inside the
namespace and qemu opens it from there (`ip netns exec`), so the guest's only link is to
that namespace; the fault server's listening socket is created inside it too (setns on
the creating thread, then back), so the test reads what the server saw directly.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Iterator, List, Optional, Sequence, Tuple

from tests.realnet.netns import pid_alive, run   # run: every ip/iptables/ethtool call, bounded

PREFIX = "vm"
NS_RE = re.compile(r"^vm(\d+)n$")
TAP = "vmtap0"
HOST_ADDR = "10.77.0.1"           # the server, on the tap inside the namespace
GUEST_ADDR = "10.77.0.2"
NETMASK = "255.255.255.0"
CLONE_NEWNET = 0x40000000         # <sched.h>
TRIGGER_POLL = 0.05               # s between reads of a trigger rule's packet counter
# GSO/TSO/GRO off: iptables then sees (and -m statistic drops) wire-sized packets,
# not 64 KiB super-packets that one "3 % loss" decision would take whole.
OFFLOADS_OFF = ("gso", "off", "tso", "off", "gro", "off", "tx", "off")
# ...and that is not enough for TCP, which always builds GSO packets (Linux 4.13+) sized
# by the route device's gso_max_segs: one segment per skb is what makes them wire-sized.
ONE_SEGMENT = ("gso_max_segs", "1", "gso_max_size", "1500")


def delete(name: str) -> None:
    """Kill what runs inside (a qemu left by a killed run), then remove the namespace."""
    pids = run(["ip", "netns", "pids", name], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    run(["ip", "netns", "del", name], check=False)


def cleanup_stale() -> List[str]:
    """Namespaces of ours whose creating process is gone (a killed run)."""
    listing = run(["ip", "netns", "list"], check=False).stdout.decode()
    stale = []
    for line in listing.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = NS_RE.match(name)
        if match and not pid_alive(int(match.group(1))):
            delete(name)
            stale.append(name)
    return stale


class GuestNet:
    """The namespace `vm<pid>n` with the tap `vmtap0` at HOST_ADDR."""

    def __init__(self) -> None:
        self.name = "%s%dn" % (PREFIX, os.getpid())

    def create(self) -> "GuestNet":
        delete(self.name)
        run(["ip", "netns", "add", self.name])
        self.ns("ip", "link", "set", "lo", "up")
        self.ns("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        self.ns("ethtool", "-K", TAP, *OFFLOADS_OFF)
        self.ns("ip", "link", "set", "dev", TAP, *ONE_SEGMENT)
        self.ns("ip", "addr", "add", "%s/24" % HOST_ADDR, "dev", TAP)
        self.ns("ip", "link", "set", TAP, "up")
        return self

    def destroy(self) -> None:
        delete(self.name)

    def ns(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", self.name, *cmd], check=check)

    def prefix(self) -> List[str]:
        """Command prefix that runs a program (qemu) inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def offloads(self) -> str:
        """ethtool -k and ip -d link of the tap: what the kernel will segment where."""
        return (self.ns("ethtool", "-k", TAP).stdout.decode()
                + self.ns("ip", "-d", "link", "show", TAP).stdout.decode())

    def flush_rules(self) -> None:
        for chain in ("INPUT", "OUTPUT"):
            self.ns("iptables", "-F", chain)

    def iptables(self, *rule: str) -> None:
        self.ns("iptables", "-w", *rule)

    def counters(self, chain: str, comment: str) -> Tuple[int, int]:
        """(packets, bytes) of the rule in `chain` carrying `comment` ((0, 0) if gone)."""
        out = self.ns("iptables", "-w", "-L", chain, "-v", "-x", "-n").stdout.decode()
        for line in out.splitlines():
            if "/* %s */" % comment in line:
                return int(line.split()[0]), int(line.split()[1])
        return 0, 0

    def packets(self, chain: str, comment: str) -> int:
        return self.counters(chain, comment)[0]

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the block with this thread in the namespace: sockets made here live there."""
        libc = ctypes.CDLL(None, use_errno=True)
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open("/run/netns/%s" % self.name, os.O_RDONLY)
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns into %s" % self.name)
            try:
                yield
            finally:
                if libc.setns(home, CLONE_NEWNET) != 0:   # never leave a thread behind
                    raise OSError(ctypes.get_errno(), "setns back home")
        finally:
            os.close(home)
            os.close(target)


class Trigger(threading.Thread):
    """A fault that starts when the transfer reaches a byte count and lasts `seconds`.

    The start is the kernel's own: a rule matching `-m connbytes` past `after` bytes of
    the connection counts a packet, then this thread swaps in the fault rules (taken
    from `fault`, each an iptables argument list without -I/-A) and removes them after
    `seconds`. started_at/ended_at are monotonic times, None if it never fired."""

    def __init__(self, net: GuestNet, after: int, fault: Sequence[Sequence[str]],
                 seconds: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.net, self.fault, self.seconds = net, [list(r) for r in fault], seconds
        self.deadline = deadline
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self.stop_event = threading.Event()
        self.arm = ["OUTPUT", "-p", "tcp", "-d", GUEST_ADDR, "-m", "connbytes",
                    "--connbytes", "%d:" % after, "--connbytes-dir", "both",
                    "--connbytes-mode", "bytes", "-m", "comment", "--comment", "vm-trigger",
                    "-j", "ACCEPT"]

    def run(self) -> None:
        self.net.iptables("-I", *self.arm)
        end = time.monotonic() + self.deadline
        while not self.stop_event.is_set() and time.monotonic() < end:
            if self.net.packets("OUTPUT", "vm-trigger"):
                break
            time.sleep(TRIGGER_POLL)
        else:
            return
        for rule in self.fault:
            self.net.iptables("-I", *rule)
        self.started_at = time.monotonic()
        self.net.iptables("-D", *self.arm)
        self.stop_event.wait(self.seconds)
        for rule in self.fault:
            self.net.iptables("-D", *rule)
        self.ended_at = time.monotonic()


def tool_missing() -> Optional[str]:
    for tool in ("ip", "iptables", "ethtool"):
        if shutil.which(tool) is None:
            return "the vm tier needs %r (apt-get install iproute2 iptables ethtool)" % tool
    return None
