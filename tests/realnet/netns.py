"""Namespaces, veths and iptables faults: created under unique names, always removed.

Why: a fault that a real kernel produces (DROP, RST, loss, a rate cap) must never touch
the host's own network. Everything lives in two namespaces created per test, joined by a
veth pair created directly inside them (it never appears in the root namespace), and all
rules go into the server namespace's own iptables.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

PREFIX = "rf"
NAME_RE = re.compile(r"^rf(\d+)x(\d+)[sc]$")
NETNS_ETC = "/etc/netns"
CMD_TIMEOUT = 15.0            # s; bound on every ip/iptables call
SERVER_ADDRS = ("10.88.0.1", "10.88.0.2")   # two addresses on the server veth
DNS_ADDR = "10.88.0.53"                      # the fault DNS responder's address
CLIENT_ADDR = "10.88.0.100"
PREFIXLEN = 24
PORT = 8080                   # inside the private namespaces any port is free

OWNER_ENV = "RAWFETCH_REALNET_OWNER"   # set on every process we start: our pid

_COUNTER = itertools.count(1)


def run(cmd: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True
        ) -> subprocess.CompletedProcess:
    """Run a short admin command with a timeout; raise with its stderr on failure."""
    proc = subprocess.run(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), proc.returncode,
                                                   proc.stderr.decode(errors="replace")))
    return proc


def missing_requirements() -> Optional[str]:
    """Why this tier cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "realnet needs root (ip netns, iptables)"
    for tool in ("ip", "iptables", "nginx", "ss"):
        if shutil.which(tool) is None:
            return "realnet needs %r on PATH (apt-get install nginx-light iptables)" % tool
    probe = "%s%dx0s" % (PREFIX, os.getpid())
    try:
        run(["ip", "netns", "add", probe])
        run(["ip", "netns", "exec", probe, "iptables", "-S"])
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return "ip netns/iptables unusable here: %s" % exc
    finally:
        run(["ip", "netns", "del", probe], check=False)
    return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment for a process we start: marked with our pid, so a later run can
    kill it if we die without cleaning up (see kill_orphans)."""
    env = dict(os.environ if base is None else base)
    env[OWNER_ENV] = str(os.getpid())
    return env


def kill_orphans() -> List[int]:
    """SIGKILL the process groups (servers start their own) of marked processes whose
    owning run is gone: loopback nginx/http.server and clients of a killed run."""
    killed = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            match = _owner_mark(entry)
            group = os.getpgid(int(entry)) if match else 0
        except OSError:
            continue
        if match and group != os.getpgrp() and not pid_alive(int(match.group(1))):
            try:  # a group leader of ours takes its children (nginx workers) with it
                if group == int(entry):
                    os.killpg(group, signal.SIGKILL)
                else:
                    os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
            except OSError:
                pass
    return killed


ENV_MARK = re.compile(rb"(?:^|\0)" + OWNER_ENV.encode() + rb"=(\d+)\0")
CMDLINE_MARK = re.compile(rb"/" + PREFIX.encode() + rb"(\d+)ng/")  # nginx rewrites environ


def _owner_mark(pid: str) -> "Optional[re.Match[bytes]]":
    with open("/proc/%s/environ" % pid, "rb") as handle:
        match = ENV_MARK.search(handle.read())
    if match is None:
        with open("/proc/%s/cmdline" % pid, "rb") as handle:
            match = CMDLINE_MARK.search(handle.read())
    return match


def kill_namespace_processes(ns: str) -> None:
    """SIGKILL whatever still runs inside `ns`, so that deleting it frees it at once."""
    proc = run(["ip", "netns", "pids", ns], check=False)
    for pid in proc.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def delete_namespace(ns: str) -> None:
    kill_namespace_processes(ns)
    run(["ip", "netns", "del", ns], check=False)
    shutil.rmtree(os.path.join(NETNS_ETC, ns), ignore_errors=True)


def cleanup_stale() -> List[str]:
    """Remove namespaces and /etc/netns dirs of ours whose creating process is gone."""
    names = set()
    listing = run(["ip", "netns", "list"], check=False).stdout.decode()
    names.update(line.split()[0] for line in listing.splitlines() if line.strip())
    if os.path.isdir(NETNS_ETC):
        names.update(os.listdir(NETNS_ETC))
    stale = [n for n in names if NAME_RE.match(n)
             and not pid_alive(int(NAME_RE.match(n).group(1)))]  # type: ignore[union-attr]
    for name in stale:
        delete_namespace(name)
    kill_orphans()
    return sorted(stale) + detach_stale_loops()


LOOP_RE = re.compile(r"^(/dev/loop\d+):.*/rf(\d+)loop\.img\b")


def loop_backing(directory: str) -> str:
    """A backing file name of ours (rf<pid>loop.img), so a killed run's device is swept."""
    return os.path.join(directory, "%s%dloop.img" % (PREFIX, os.getpid()))


@contextlib.contextmanager
def loop_device(backing: str) -> Iterator[Optional[str]]:
    """A loop device over `backing`, detached at the end; None where losetup fails."""
    proc = run(["losetup", "-f", "--show", backing], check=False)
    device = proc.stdout.decode().strip()
    if proc.returncode != 0 or not device.startswith("/dev/"):
        yield None
        return
    try:
        yield device
    finally:
        run(["losetup", "-d", device], check=False)


def detach_stale_loops() -> List[str]:
    """Detach loop devices over our backing files (rf<pid>loop.img) whose run is gone."""
    if shutil.which("losetup") is None:
        return []
    listing = run(["losetup", "-a"], check=False).stdout.decode()
    stale = [m.group(1) for m in map(LOOP_RE.match, listing.splitlines())
             if m and not pid_alive(int(m.group(2)))]
    for device in stale:
        run(["losetup", "-d", device], check=False)
    return stale


class Topology:
    """A server namespace and a client namespace joined by one veth pair.

    The server end carries SERVER_ADDRS and DNS_ADDR, the client end CLIENT_ADDR; the
    client's /etc/netns/NAME/resolv.conf can point at the DNS responder.
    """

    def __init__(self) -> None:
        base = "%s%dx%d" % (PREFIX, os.getpid(), next(_COUNTER))
        self.server, self.client = base + "s", base + "c"
        self._up = False

    def up(self) -> "Topology":
        self._up = True
        try:
            self._create()
        except BaseException:
            self.down()
            raise
        return self

    def _create(self) -> None:
        for ns in (self.server, self.client):
            run(["ip", "netns", "add", ns])
        run(["ip", "link", "add", self.server, "netns", self.server, "type", "veth",
             "peer", "name", self.client, "netns", self.client])
        for addr in SERVER_ADDRS + (DNS_ADDR,):
            run(["ip", "-n", self.server, "addr", "add", "%s/%d" % (addr, PREFIXLEN),
                 "dev", self.server])
        run(["ip", "-n", self.client, "addr", "add", "%s/%d" % (CLIENT_ADDR, PREFIXLEN),
             "dev", self.client])
        for ns in (self.server, self.client):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", ns, "up"])

    def down(self) -> None:
        """Idempotent: kill what runs inside, delete both namespaces and their /etc dirs."""
        if not self._up:
            return
        self._up = False
        for ns in (self.client, self.server):
            delete_namespace(ns)

    def __enter__(self) -> "Topology":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def exec_prefix(self, ns: str) -> List[str]:
        return ["ip", "netns", "exec", ns]

    def set_resolver(self, nameserver: str = DNS_ADDR, timeout: int = 5) -> None:
        """Point the client namespace's resolver (glibc, via `ip netns exec`) at us."""
        directory = os.path.join(NETNS_ETC, self.client)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "resolv.conf"), "w") as handle:
            handle.write("nameserver %s\noptions timeout:%d attempts:1\n" % (nameserver, timeout))

    def iptables(self, *args: str) -> str:
        return run(self.exec_prefix(self.server) + ["iptables", "-w", "5"] + list(args)
                   ).stdout.decode()

    def rule_packets(self, tag: str) -> int:
        """Packets matched so far by the rules commented `tag` (see Fault)."""
        total = 0
        for line in self.iptables("-S", "-v").splitlines():
            if '--comment "%s"' % tag in line or "--comment %s " % tag in line:
                match = re.search(r" -c (\d+) \d+", line)
                total += int(match.group(1)) if match else 0
        return total

    def is_listening(self, port: int = PORT) -> bool:
        """Does something listen on TCP `port` inside the server namespace?"""
        out = run(self.exec_prefix(self.server) + ["ss", "-Hltn", "sport = :%d" % port],
                  check=False).stdout
        return bool(out.strip())


@dataclass(frozen=True)
class Fault:
    """One network fault: iptables rules inserted in the server namespace, later removed."""

    name: str
    rules: Tuple[Tuple[str, ...], ...]  # each: (CHAIN, match..., "-j", TARGET...)

    @property
    def tag(self) -> str:
        """The iptables comment on its rules, to count the packets they caught."""
        return "rf-" + re.sub(r"[^A-Za-z0-9.]+", "-", self.name)

    def _tagged(self, rule: Tuple[str, ...]) -> List[str]:
        return [rule[0], "-m", "comment", "--comment", self.tag] + list(rule[1:])

    def apply(self, topo: Topology) -> None:
        for rule in self.rules:
            topo.iptables("-I", *self._tagged(rule))

    def remove(self, topo: Topology) -> None:
        for rule in self.rules:
            try:
                topo.iptables("-D", *self._tagged(rule))
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # already gone (namespace torn down)


def blackhole(port: int = PORT, addr: Optional[str] = None) -> Fault:
    """Every packet of the connection vanishes both ways: a cable pulled mid-body."""
    dst = ("-d", addr) if addr else ()
    src = ("-s", addr) if addr else ()
    name = "blackhole" + (" " + addr if addr else "")
    return Fault(name, (("INPUT",) + dst + ("-p", "tcp", "--dport", str(port), "-j", "DROP"),
                        ("OUTPUT",) + src + ("-p", "tcp", "--sport", str(port), "-j", "DROP")))


def reset(port: int = PORT) -> Fault:
    """Each client packet is answered by a RST (a middlebox or firewall killing the flow)."""
    return Fault("rst", (("INPUT", "-p", "tcp", "--dport", str(port), "-j", "REJECT",
                          "--reject-with", "tcp-reset"),))


def loss(probability: float = 0.05, port: int = PORT) -> Fault:
    """Random loss both ways (statistic match): TCP must retransmit, nothing may corrupt."""
    prob = ("-m", "statistic", "--mode", "random", "--probability", "%g" % probability)
    return Fault("loss%g" % probability, (
        ("INPUT", "-p", "tcp", "--dport", str(port)) + prob + ("-j", "DROP"),
        ("OUTPUT", "-p", "tcp", "--sport", str(port)) + prob + ("-j", "DROP")))


def syn_drop(addr: str, port: int = PORT) -> Fault:
    """SYNs to one address vanish: a dead host among several (connect timeout path)."""
    return Fault("syn-drop " + addr, (("INPUT", "-d", addr, "-p", "tcp", "--dport", str(port),
                                       "--syn", "-j", "DROP"),))


def rate_cap(rate: str, port: int = PORT, name: str = "rfcap") -> Fault:
    """Server-to-client bytes above `rate` (e.g. "256kb/s") are dropped (hashlimit)."""
    return Fault("cap " + rate, (("OUTPUT", "-p", "tcp", "--sport", str(port), "-m", "hashlimit",
                                  "--hashlimit-name", name, "--hashlimit-above", rate,
                                  "-j", "DROP"),))


@dataclass
class Step:
    """Apply `fault` once `at_bytes` were received (or `at_time` s passed), for `hold` s.

    hold=None keeps the rules until the schedule stops."""

    fault: Fault
    hold: Optional[float]
    at_bytes: Optional[int] = None
    at_time: Optional[float] = None
    before: Optional[Callable[[], None]] = None  # e.g. replace the file on the server
    applied_at: Optional[float] = None   # s after the schedule started
    removed_at: Optional[float] = None
    bytes_at: Optional[int] = None       # progress when applied
    packets: int = 0                     # packets its rules caught (read before removal)


class Schedule:
    """Runs fault steps in a thread against a progress probe; always removes its rules."""

    def __init__(self, topo: Topology, steps: List[Step],
                 progress: Optional[Callable[[], int]] = None) -> None:
        self.topo, self.steps = topo, steps
        self.progress: Callable[[], int] = progress or (lambda: 0)
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Schedule":
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rf-faults")
        self._thread.start()
        return self

    def _run(self) -> None:
        for step in self.steps:
            if not self._wait_trigger(step):
                return
            step.bytes_at = self.progress()
            if step.before is not None:
                step.before()
            step.fault.apply(self.topo)
            step.applied_at = time.monotonic() - self.started
            if step.hold is None:
                continue
            self._stop.wait(step.hold)
            self._remove(step)
            if self._stop.is_set():
                return

    def _remove(self, step: Step) -> None:
        try:
            step.packets = self.topo.rule_packets(step.fault.tag)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        step.fault.remove(self.topo)
        step.removed_at = time.monotonic() - self.started

    def _wait_trigger(self, step: Step) -> bool:
        while not self._stop.is_set():
            if step.at_time is not None and time.monotonic() - self.started >= step.at_time:
                return True
            if step.at_bytes is not None and self.progress() >= step.at_bytes:
                return True
            self._stop.wait(0.01)
        return False

    def stop(self) -> None:
        """Stop triggering, remove every rule this schedule may have inserted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(CMD_TIMEOUT)
        for step in self.steps:
            if step.applied_at is not None and step.removed_at is None:
                self._remove(step)

    def all_applied(self) -> bool:
        return all(step.applied_at is not None for step in self.steps)

    def describe(self) -> str:
        return "; ".join("%s at %s s (%s bytes) until %s s" % (
            s.fault.name, _fmt(s.applied_at), s.bytes_at, _fmt(s.removed_at)) for s in self.steps)


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else "%.2f" % value
