"""The bench harness: clients run as whole processes under the C launcher (wall, CPU,
peak RSS of the child alone), in alternating rounds with a rotating order, so that every
ratio can be the median of per-round ratios taken under the same machine load.

Scenarios (bench/scenarios/) build Client lists with the factories here, run them with
Harness.run_series and hand the Series to the Report (report.py)."""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from common import (HERE, PY, ClientFailed, Launcher, Nginx, Sample, configure_children,
                    drop_file, human, make_file, make_sparse, median, tmpdir_on_tmp)
from report import Report

RF = [PY, "-m", "rawfetch"]
NOT_APPLICABLE = 4      # rfvariant.py's exit code: the internals a variant patches moved
VERIFY_BLOCK = 4 << 20  # read size when hashing an output after its run


def mod(name: str) -> List[str]:
    """Run bench module `name`'s main() from its cached .pyc (not a recompiled script)."""
    return [PY, "-c", "import %s; %s.main()" % (name, name)]


def log(msg: str) -> None:
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    buf = memoryview(bytearray(VERIFY_BLOCK))
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buf)
            if not got:
                return digest.hexdigest()
            digest.update(buf[:got])


class Client:
    """One command to measure. `out` is the file it writes (deleted before and after each
    run); `verify` the sha256 that file must have (checked after the timed run); `peer`
    marks a client whose failure is the peer's, not the bench's (no exit 1)."""

    def __init__(self, name: str, argv: Sequence[str], out: Optional[str] = None,
                 stdout: str = os.devnull, timeout: float = 300, verify: Optional[str] = None,
                 peer: bool = False) -> None:
        self.name = name
        self.argv = list(argv)
        self.out = out
        self.stdout = stdout
        self.timeout = timeout
        self.verify = verify
        self.peer = peer


class Series:
    """Samples per client from alternating rounds; failures recorded, not fatal."""

    def __init__(self, clients: Sequence[Client]) -> None:
        self.clients = list(clients)
        self.samples: Dict[str, List[Optional[Sample]]] = {c.name: [] for c in clients}
        self.errors: Dict[str, str] = {}

    def ok(self, name: str) -> List[Sample]:
        return [s for s in self.samples.get(name, []) if s is not None]

    def med(self, name: str, field: str) -> float:
        return median([getattr(s, field) for s in self.ok(name)])

    def ratio(self, a: str, b: str, field: str = "wall") -> float:
        """Median over rounds of a/b, using rounds where both ran."""
        pairs = [getattr(x, field) / getattr(y, field)
                 for x, y in zip(self.samples.get(a, []), self.samples.get(b, []))
                 if x is not None and y is not None and getattr(y, field) > 0]
        return median(pairs)

    def ratio_fn(self, a: str, ref: Callable[[int], Optional[float]],
                 field: str = "wall") -> float:
        """Median over rounds of a / ref(round), for references built from other rows."""
        pairs = []
        for i, x in enumerate(self.samples.get(a, [])):
            value = ref(i)
            if x is not None and value:
                pairs.append(getattr(x, field) / value)
        return median(pairs)

    def at(self, name: str, i: int) -> Optional[Sample]:
        lst = self.samples.get(name, [])
        return lst[i] if i < len(lst) else None


class Harness:
    """Work dir, nginx, the launcher, the client factories and the round runner."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.size: int = args.size
        self.big: int = args.big_size
        self.reps: int = args.reps
        self.work = tmpdir_on_tmp()
        self.data = os.path.join(self.work, "data")
        os.mkdir(self.data)
        configure_children(args.rawfetch_tree, self.work)
        self.launcher = Launcher(self.work)
        self.nginx: Optional[Nginx] = None
        self.procs: List[subprocess.Popen] = []
        self.report = Report()
        self.command = ""                  # the command line, for sections that quote it
        self.failures: List[str] = []      # rawfetch or bench-owned clients that failed
        self.sha = self.big_sha = ""
        self.main_path = os.path.join(self.data, "main.bin")
        if self.launcher.note:
            self.report.notes.append(self.launcher.note)
        self.have = {tool: shutil.which(tool) is not None
                     for tool in ("curl", "wget", "sha256sum", "gzip", "xz", "bash")}
        self.have.update({m: importlib.util.find_spec(m) is not None
                          for m in ("requests", "urllib3")})
        for peer in ("curl", "wget", "requests", "urllib3"):
            if not self.have[peer]:
                self.report.notes.append("%s not installed: its rows are skipped" % peer)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        log("workdir %s" % self.work)
        log("generating %s test file" % human(self.size))
        self.sha = make_file(self.main_path, self.size)
        self.big_sha = make_sparse(os.path.join(self.data, "big.bin"), self.big)
        self.nginx = Nginx(self.data, self.work).start()
        if self.nginx.tls_port is None:
            self.report.notes.append("trustme not installed: TLS scenarios skipped")
        log("nginx on 127.0.0.1:%d (TLS %s)" % (self.nginx.port, self.nginx.tls_port))

    def close(self) -> None:
        for p in self.procs:
            self.stop_proxy(p)
        if self.nginx is not None:
            self.nginx.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def url(self, name: str = "main.bin", tls: bool = False) -> str:
        assert self.nginx is not None
        return self.nginx.url(name, tls)

    @property
    def cafile(self) -> str:
        assert self.nginx is not None and self.nginx.cafile is not None
        return self.nginx.cafile

    def out(self, tag: str) -> str:
        """An output path in the work dir (on the /tmp disk), safe to put in a shell line."""
        return os.path.join(self.work, "out-" + re.sub(r"[^A-Za-z0-9.-]+", "_", tag))

    # ------------------------------------------------------------------ clients
    def peers(self, url: str, dest: str, tls: bool = False, tag: str = "") -> List[Client]:
        """curl, wget and the Python peers writing to `dest` ("null" or "file")."""
        ca = self.cafile if tls else None
        clients: List[Client] = []
        for name in ("curl", "wget", "requests", "urllib3", "http.client"):
            if name != "http.client" and not self.have[name]:
                continue
            path = self.out(tag + name) if dest == "file" else None
            target = path or os.devnull
            if name == "curl":
                argv = ["curl", "-sS"] + (["--cacert", ca] if ca else []) + ["-o", target, url]
            elif name == "wget":
                argv = ["wget", "-q"] + (["--ca-certificate=" + ca] if ca else []) \
                    + ["-O", target, url]
            else:
                argv = mod("clients") + [name, url, path or "-"] + (["--cafile", ca] if ca
                                                                    else [])
            clients.append(Client(name, argv, out=path, peer=True))
        return clients

    def rawfetch(self, url: str, dest: str, tls: bool = False, tag: str = "",
                 name: str = "rawfetch", extra: Sequence[str] = (),
                 nofsync: bool = False) -> Client:
        """rawfetch's command; nofsync runs it with os.fsync a no-op (attribution only)."""
        head = mod("clients") + ["rawfetch-nofsync"] if nofsync else RF
        ca = ["--cacert", self.cafile] if tls else []
        if dest == "null":
            return Client(name, head + [url, "-o", "-", "-q"] + ca + list(extra))
        path = self.out(tag + name)
        return Client(name, head + [url, "-o", path, "-q"] + ca + list(extra), out=path)

    def floor(self, url: str, dest: str, tls: bool = False, tag: str = "",
              kind: str = "floor", name: Optional[str] = None,
              extra: Sequence[str] = ()) -> Client:
        """One of clients.py's Python floors (minimal HTTP on a plain or ssl socket)."""
        ca = ["--cafile", self.cafile] if tls else []
        name = name or kind
        path = self.out(tag + name) if dest == "file" else None
        return Client(name, mod("clients") + [kind, url, path or "-"] + ca + list(extra),
                      out=path)

    # ------------------------------------------------------------------ running
    def run_series(self, title: str, clients: Sequence[Client], reps: Optional[int] = None,
                   warmup: bool = True) -> Series:
        """Each round runs every client once, the order rotated by one per round; a
        client that failed once is not run again (its later rounds are None)."""
        reps = reps or self.reps
        series = Series(clients)
        if warmup and not self.quick:
            for c in clients:
                self._one(series, c, record=False)
        for r in range(reps):
            k = r % max(len(clients), 1)
            for c in list(clients[k:]) + list(clients[:k]):
                if c.name in series.errors:
                    series.samples[c.name].append(None)
                    continue
                self._one(series, c)
            log("%s: round %d/%d done" % (title, r + 1, reps))
        return series

    def _one(self, series: Series, c: Client, record: bool = True) -> None:
        sample: Optional[Sample] = None
        if c.out:
            drop_file(c.out)
            os.sync()      # no writeback of an earlier run's pages during this one
        try:
            sample = self.launcher.run(c.argv, stdout=c.stdout, timeout=c.timeout)
            if c.verify is not None and c.out:
                self._verify(c)            # outside the timed region
        except (RuntimeError, OSError) as exc:
            self._failed(series, c, exc)
            sample = None
        finally:
            if c.out:
                drop_file(c.out)
        if record:
            series.samples[c.name].append(sample)

    @staticmethod
    def _verify(c: Client) -> None:
        assert c.out is not None
        got = file_sha256(c.out)
        if got != c.verify:
            raise ClientFailed("output sha256 %s, expected %s" % (got[:16], str(c.verify)[:16]),
                               -1)

    def _failed(self, series: Series, c: Client, exc: BaseException) -> None:
        text = str(exc).strip()
        series.errors[c.name] = text.splitlines()[-1][:300] if text else type(exc).__name__
        log("  %s failed: %s" % (c.name, series.errors[c.name]))
        if getattr(exc, "code", None) != NOT_APPLICABLE and not c.peer:
            self.failures.append("%s: %s" % (c.name, series.errors[c.name]))

    # ------------------------------------------------------------------ fault proxy
    def proxy(self, action: str, every: int, max_cuts: Optional[int] = None,
              logname: str = "cuts.log") -> Tuple[subprocess.Popen, int, str]:
        """bench/faultproxy.py in front of nginx: (process, port, its cut log)."""
        assert self.nginx is not None
        path = os.path.join(self.work, logname)
        if os.path.exists(path):
            os.unlink(path)
        argv = [PY, os.path.join(HERE, "faultproxy.py"), "--upstream",
                "127.0.0.1:%d" % self.nginx.port, "--every", str(every), "--action", action,
                "--log", path, "--no-splice"]
        if max_cuts is not None:
            argv += ["--max-cuts", str(max_cuts)]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        assert p.stdout is not None
        line = p.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError("faultproxy did not start")
        return p, int(line[1]), path

    @staticmethod
    def stop_proxy(p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.kill()
        p.wait()
