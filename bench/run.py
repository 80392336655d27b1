#!/usr/bin/env python3
"""rawfetch's bench suite against its peers (issue 6): one command.

    python3 bench/run.py                       # full: 1 GiB, 5 reps, writes docs/benchmarks.md
    python3 bench/run.py --quick --out /tmp/x.md   # CI smoke: tiny sizes, 1 rep, seconds
    python3 bench/run.py --size 1G --reps 3 --only plain,tls --out /tmp/b.md

Starts nginx on loopback (generated config in a temp dir, ephemeral ports, sendfile on,
plus a TLS server block with a trustme certificate) serving generated files, and runs
rawfetch side by side with curl, wget, requests, urllib3, http.client and the "Python
floor" (raw socket + recv_into + os.write), each as a whole process (interpreter start
included), measuring wall, CPU (user+sys of the child, via wait4) and peak RSS (the
child's ru_maxrss; see launch.c). Runs of the compared clients alternate (rotating order)
and every ratio is the median of per-round ratios from the same run. Missing peers
(curl, wget, requests, urllib3, trustme, a C compiler) are skipped with a note.

Scenarios: plain (to /dev/null and to a file), tls, sha256, rss (file size 1 vs 4 GiB),
import, footprint, storm (RST/FIN every 64 MiB through bench/faultproxy.py), recovery
(bench/recovery.py), and prototypes (bench/rfvariant.py, proto_hashthread.py,
proto_splice.py): the hot-path changes measured against rawfetch as it is.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (GiB, HERE, Launcher, MiB, Nginx, PY, REPO, Sample, drop_file,  # noqa: E402
                    env_for_children, human, machine_facts, make_file, make_sparse, median,
                    module_version, parse_size, tmpdir_on_tmp, tool_version)

SCENARIOS = ("plain", "tls", "sha256", "rss", "startup", "import", "footprint", "storm",
             "recovery", "prototypes")
RF = [PY, "-m", "rawfetch"]
PEERS = ("curl", "wget", "requests", "urllib3", "http.client", "clean: curl")
NOT_APPLICABLE = 4      # rfvariant: the internals a prototype patches have moved


def mod(name: str) -> List[str]:
    """Run bench module `name`'s main() from its cached .pyc (not a recompiled script)."""
    return [PY, "-c", "import %s; %s.main()" % (name, name)]


def log(msg: str) -> None:
    sys.stderr.write("[bench %s] %s\n" % (time.strftime("%H:%M:%S"), msg))
    sys.stderr.flush()


class Client:
    def __init__(self, name: str, argv: Sequence[str], out: Optional[str] = None,
                 stdout: str = os.devnull, timeout: float = 300) -> None:
        self.name = name
        self.argv = list(argv)
        self.out = out            # a file the client writes: deleted before and after a run
        self.stdout = stdout
        self.timeout = timeout


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

    def ratio_fn(self, a: str, fn: Callable[[int], Optional[float]], field: str = "wall"
                 ) -> float:
        pairs = []
        for i, x in enumerate(self.samples.get(a, [])):
            ref = fn(i)
            if x is not None and ref:
                pairs.append(getattr(x, field) / ref)
        return median(pairs)

    def at(self, name: str, i: int) -> Optional[Sample]:
        lst = self.samples.get(name, [])
        return lst[i] if i < len(lst) else None


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.size = args.size
        self.big = args.big_size
        self.reps = args.reps
        self.work = tmpdir_on_tmp()
        self.data = os.path.join(self.work, "data")
        os.mkdir(self.data)
        self.launcher = Launcher(self.work)
        self.nginx: Optional[Nginx] = None
        self.procs: List[subprocess.Popen] = []
        self.results: Dict[str, Any] = {}
        self.tables: List[Tuple[str, List[str], List[List[str]], List[str]]] = []
        self.targets: List[Dict[str, Any]] = []
        self.notes: List[str] = []
        self.failures: List[str] = []      # bench-owned clients that failed: exit 1
        if self.launcher.note:
            self.notes.append(self.launcher.note)
        self.have = {
            "curl": shutil.which("curl") is not None,
            "wget": shutil.which("wget") is not None,
            "sha256sum": shutil.which("sha256sum") is not None,
            "requests": importlib.util.find_spec("requests") is not None,
            "urllib3": importlib.util.find_spec("urllib3") is not None,
        }
        for peer in ("curl", "wget", "requests", "urllib3"):
            if not self.have[peer]:
                self.notes.append("%s not installed: its rows are skipped" % peer)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        log("workdir %s" % self.work)
        log("generating %s test file" % human(self.size))
        self.sha = make_file(os.path.join(self.data, "main.bin"), self.size)
        self.main_path = os.path.join(self.data, "main.bin")
        self.big_sha = make_sparse(os.path.join(self.data, "big.bin"), self.big)
        self.nginx = Nginx(self.data, self.work).start()
        if self.nginx.tls_port is None:
            self.notes.append("trustme not installed: TLS scenarios skipped")
        log("nginx on 127.0.0.1:%d (TLS %s)" % (self.nginx.port, self.nginx.tls_port))

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.nginx is not None:
            self.nginx.stop()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def url(self, name: str = "main.bin", tls: bool = False) -> str:
        assert self.nginx is not None
        return self.nginx.url(name, tls)

    def out(self, tag: str) -> str:
        return os.path.join(self.work, "out-" + tag)

    # ------------------------------------------------------------------ clients
    def peers(self, url: str, dest: str, tls: bool = False, tag: str = "") -> List[Client]:
        """The peers writing to `dest` ("null" or "file")."""
        ca = self.nginx.cafile if tls else None
        cl: List[Client] = []

        def target(name: str) -> Tuple[str, Optional[str]]:
            if dest == "null":
                return os.devnull, None
            path = self.out(tag + name)
            return path, path

        o, f = target("curl")
        if self.have["curl"]:
            cl.append(Client("curl", ["curl", "-sS"] + (["--cacert", ca] if ca else [])
                             + ["-o", o, url], out=f))
        o, f = target("wget")
        if self.have["wget"]:
            cl.append(Client("wget", ["wget", "-q"] + (["--ca-certificate=" + ca] if ca
                                                       else []) + ["-O", o, url], out=f))
        extra = ["--cafile", ca] if ca else []
        for name, flag in (("requests", "requests"), ("urllib3", "urllib3"),
                           ("http.client", None)):
            if flag and not self.have[flag]:
                continue
            o, f = target(name)
            cl.append(Client(name, mod("clients") + [name, url, "-" if dest == "null" else o]
                             + extra, out=f))
        return cl

    def rawfetch(self, url: str, dest: str, tls: bool = False, tag: str = "",
                 name: str = "rawfetch", extra: Sequence[str] = ()) -> Client:
        ca = ["--cacert", self.nginx.cafile] if tls else []
        if dest == "null":
            return Client(name, RF + [url, "-o", "-", "-q"] + ca + list(extra))
        path = self.out(tag + name)
        return Client(name, RF + [url, "-o", path, "-q"] + ca + list(extra), out=path)

    def floor(self, url: str, dest: str, tls: bool = False, tag: str = "",
              kind: str = "floor", name: Optional[str] = None,
              extra: Sequence[str] = ()) -> Client:
        ca = ["--cafile", self.nginx.cafile] if tls else []
        name = name or kind
        if dest == "null":
            return Client(name, mod("clients") + [kind, url, "-"] + ca + list(extra))
        path = self.out(tag + name)
        return Client(name, mod("clients") + [kind, url, path] + ca + list(extra), out=path)

    # ------------------------------------------------------------------ running
    def run_series(self, title: str, clients: Sequence[Client], reps: Optional[int] = None,
                   warmup: bool = True) -> Series:
        reps = reps or self.reps
        series = Series(clients)
        live = list(clients)
        if warmup and not self.quick:
            for c in clients:
                self._one(series, c, record=False)
        for r in range(reps):
            k = r % max(len(clients), 1)
            order = clients[k:] + clients[:k]          # rotate: no fixed position bias
            for c in order:
                if c.name in series.errors:
                    series.samples[c.name].append(None)
                    continue
                self._one(series, c)
            log("%s: round %d/%d done" % (title, r + 1, reps))
        return series

    def _one(self, series: Series, c: Client, record: bool = True) -> None:
        if c.out:
            drop_file(c.out)
            os.sync()      # no writeback of an earlier run's pages during this one
        try:
            s = self.launcher.run(c.argv, stdout=c.stdout, timeout=c.timeout)
        except (RuntimeError, OSError) as exc:
            series.errors[c.name] = str(exc).strip().splitlines()[-1][:300] if str(exc) \
                else type(exc).__name__
            log("  %s failed: %s" % (c.name, series.errors[c.name]))
            code = getattr(exc, "code", None)
            if code != NOT_APPLICABLE and not any(c.name.startswith(p) or ("storm: " + p)
                                                  in c.name for p in PEERS):
                self.failures.append("%s: %s" % (c.name, series.errors[c.name]))
            if record:
                series.samples[c.name].append(None)
            return
        finally:
            if c.out:
                drop_file(c.out)
        if record:
            series.samples[c.name].append(s)

    def table(self, title: str, series: Series, ref: str = "rawfetch",
              note: Sequence[str] = (), names: Optional[Sequence[str]] = None,
              with_ratio: bool = True) -> None:
        head = ["client", "wall s", "CPU s", "peak RSS MiB"]
        if with_ratio:
            head += ["%s ÷ client (wall)" % ref, "%s ÷ client (CPU)" % ref]
        rows = []
        for c in (names or [c.name for c in series.clients]):
            if c in series.errors and not series.ok(c):
                rows.append([c, "failed", "", ""] + (["", ""] if with_ratio else []))
                continue
            row = [c, "%.3f" % series.med(c, "wall"), "%.3f" % series.med(c, "cpu"),
                   "%.1f" % (series.med(c, "rss") / 1024)]
            if with_ratio:
                if c == ref:
                    row += ["—", "—"]
                else:
                    row += ["%.2f×" % series.ratio(ref, c, "wall"),
                            "%.2f×" % series.ratio(ref, c, "cpu")]
            rows.append(row)
        notes = list(note) + ["%s: %s" % (k, v) for k, v in series.errors.items()]
        self.tables.append((title, head, rows, notes))

    def target(self, name: str, measured: float, limit: float, unit: str = "×",
               detail: str = "", lower_is_better: bool = True, fmt: str = "%.2f") -> None:
        if measured != measured:   # NaN: not measured
            self.targets.append({"target": name, "measured": "not measured", "met": None,
                                 "gap": detail or "—"})
            return
        met = measured <= limit if lower_is_better else measured >= limit
        gap = (measured - limit) if lower_is_better else (limit - measured)
        if unit == "×":
            m, l_ = fmt % measured + "×", fmt % limit + "×"
            g = "%+.0f%% vs limit" % (100 * (measured / limit - 1)) if limit else ""
        elif unit == "%":
            m, l_ = "%.1f%%" % (100 * measured), "%.0f%%" % (100 * limit)
            g = "%.1f points" % (100 * abs(gap))
        else:
            m, l_ = (fmt % measured) + " " + unit, (fmt % limit) + " " + unit
            g = (fmt % abs(gap)) + " " + unit
        self.targets.append({"target": name, "measured": m, "limit": l_, "met": met,
                             "gap": ("within by " if met else "over by " if lower_is_better
                                     else "short by ") + g + ("; " + detail if detail else "")})

    # ------------------------------------------------------------------ scenarios
    def sc_plain(self) -> None:
        url = self.url()
        null = [self.rawfetch(url, "null"), self.floor(url, "null")] + self.peers(url, "null")
        s = self.run_series("plain → /dev/null", null)
        self.table("(a) plain HTTP, %s → /dev/null" % human(self.size), s,
                   note=["rawfetch: `python3 -m rawfetch URL -o - -q` (stream path, stdout "
                         "is /dev/null)"])
        self.target("plain → /dev/null: wall ≤ 1.10× Python floor",
                    s.ratio("rawfetch", "floor"), 1.10)
        self.target("plain → /dev/null: CPU ≤ 1.15× Python floor",
                    s.ratio("rawfetch", "floor", "cpu"), 1.15)
        self.results["plain_null"] = s
        fileclients = [self.rawfetch(url, "file"),
                       self.rawfetch(url, "file", name="rawfetch-nofsync"),
                       self.floor(url, "file"), self.floor(url, "file", kind="floor-fsync")] \
            + self.peers(url, "file")
        fileclients[1].argv = mod("clients") + ["rawfetch-nofsync"] + fileclients[1].argv[3:]
        s = self.run_series("plain → file", fileclients)
        self.table("(a) plain HTTP, %s → a file on the /tmp disk" % human(self.size), s,
                   note=["rawfetch: `python3 -m rawfetch URL -o FILE -q` (download(): .part, "
                         "sidecar, fsync, rename)",
                         "rawfetch-nofsync: the same with os.fsync a no-op (attribution only)",
                         "floor-fsync: the floor plus one fsync at the end; curl, wget and "
                         "the Python peers do not fsync",
                         "the file is deleted after each run (dirty pages are dropped, not "
                         "written back)"])
        self.target("plain → file: wall ≤ 1.10× Python floor", s.ratio("rawfetch", "floor"),
                    1.10, detail="vs floor-fsync %.2f×; rawfetch-nofsync vs floor %.2f×"
                    % (s.ratio("rawfetch", "floor-fsync"), s.ratio("rawfetch-nofsync",
                                                                   "floor")))
        self.target("plain → file: CPU ≤ 1.15× Python floor",
                    s.ratio("rawfetch", "floor", "cpu"), 1.15,
                    detail="rawfetch-nofsync %.2f×" % s.ratio("rawfetch-nofsync", "floor",
                                                              "cpu"))
        self.target("plain → file: wall ≤ 0.6× curl", s.ratio("rawfetch", "curl"), 0.6,
                    detail="rawfetch-nofsync %.2f×" % s.ratio("rawfetch-nofsync", "curl"))
        self.target("plain → file: wall ≤ 0.4× wget", s.ratio("rawfetch", "wget"), 0.4,
                    detail="rawfetch-nofsync %.2f×" % s.ratio("rawfetch-nofsync", "wget"))
        self.results["plain_file"] = s

    def sc_tls(self) -> None:
        if self.nginx.tls_port is None:
            return
        url = self.url(tls=True)
        null = [self.rawfetch(url, "null", tls=True), self.floor(url, "null", tls=True),
                self.floor(url, "null", tls=True, kind="floor-fill")] \
            + self.peers(url, "null", tls=True)
        s = self.run_series("tls → /dev/null", null)
        self.table("(b) TLS (nginx, trustme CA), %s → /dev/null" % human(self.size), s,
                   note=["floor: raw `ssl` socket, recv_into 1 MiB + os.write per call "
                         "(SSL_read returns ≤ one 16 KiB record)",
                         "floor-fill: the same but filling the 1 MiB buffer before each "
                         "os.write"])
        self.target("TLS → /dev/null: CPU ≤ 1.15× raw ssl recv_into loop",
                    s.ratio("rawfetch", "floor", "cpu"), 1.15,
                    detail="vs floor-fill %.2f×" % s.ratio("rawfetch", "floor-fill", "cpu"))
        self.target("TLS → /dev/null: wall ≤ 1.10× raw ssl recv_into loop",
                    s.ratio("rawfetch", "floor"), 1.10,
                    detail="vs floor-fill %.2f×" % s.ratio("rawfetch", "floor-fill"))
        self.results["tls_null"] = s
        fileclients = [self.rawfetch(url, "file", tls=True, tag="t"),
                       self.rawfetch(url, "file", tls=True, tag="t", name="rawfetch-nofsync"),
                       self.floor(url, "file", tls=True, tag="t")]
        fileclients[1].argv = mod("clients") + ["rawfetch-nofsync"] + fileclients[1].argv[3:]
        fileclients += [c for c in self.peers(url, "file", tls=True, tag="t")
                        if c.name in ("curl", "wget")]
        s = self.run_series("tls → file", fileclients)
        self.table("(b) TLS, %s → a file" % human(self.size), s)
        self.target("TLS → file: wall ≤ 1.10× raw ssl loop", s.ratio("rawfetch", "floor"),
                    1.10, detail="rawfetch-nofsync %.2f×" % s.ratio("rawfetch-nofsync",
                                                                    "floor"))
        self.target("TLS → file: faster than curl (< 1.00×)", s.ratio("rawfetch", "curl"),
                    0.999, detail="rawfetch-nofsync %.2f×" % s.ratio("rawfetch-nofsync",
                                                                     "curl"))
        self.results["tls_file"] = s

    def sc_sha256(self) -> None:
        url = self.url()
        sha = ["--sha256", self.sha]
        clients = [self.rawfetch(url, "null", name="rawfetch-sha256", extra=sha),
                   self.rawfetch(url, "null"),
                   self.floor(url, "null", name="floor-sha256", extra=sha),
                   Client("floor-sha256-thread", mod("proto_hashthread")
                          + [url, "-", self.sha, "--mode", "thread"]),
                   Client("hash-alone", mod("clients") + ["hash-alone", self.main_path, "-",
                                                          "--sha256", self.sha])]
        if self.have["curl"] and self.have["sha256sum"]:
            clients.append(Client("curl | sha256sum", ["sh", "-c",
                                                       "curl -sS '%s' | sha256sum" % url]))
        s = self.run_series("sha256 → /dev/null", clients)
        self.table("(c) sha256 verification, %s → /dev/null" % human(self.size), s,
                   note=["rawfetch-sha256: `-o - --sha256 HEX` (hash inline in Stream.readinto)",
                         "rawfetch: the same transfer without a checksum (transfer alone)",
                         "hash-alone: hashlib.sha256 over the served file in 1 MiB blocks "
                         "from page cache, as a whole process",
                         "floor-sha256-thread: bench/proto_hashthread.py (worker thread + "
                         "ring of 4 buffers)"])

        def bound(i: int) -> Optional[float]:
            a, b = s.at("rawfetch", i), s.at("hash-alone", i)
            return max(a.wall, b.wall) if a and b else None

        self.target("sha256 → /dev/null: wall ≤ 1.15× max(transfer alone, hashing alone)",
                    s.ratio_fn("rawfetch-sha256", bound), 1.15,
                    detail="floor-sha256 %.2f×, floor-sha256-thread %.2f×" % (
                        s.ratio_fn("floor-sha256", bound),
                        s.ratio_fn("floor-sha256-thread", bound)))
        self.results["sha_null"] = s
        self.results["hash_inproc"] = self._hash_inprocess()
        file_clients = [self.rawfetch(url, "file", name="rawfetch-sha256", extra=sha, tag="s"),
                        self.rawfetch(url, "file", tag="s"),
                        Client("hash-alone", mod("clients") + ["hash-alone", self.main_path,
                                                               "-", "--sha256", self.sha])]
        s2 = self.run_series("sha256 → file", file_clients)
        self.table("(c) sha256 verification, %s → a file (fsync included)" % human(self.size),
                   s2, note=["in-process hashing alone (median): %.3f s"
                             % self.results["hash_inproc"]])

        def bound2(i: int) -> Optional[float]:
            a, b = s2.at("rawfetch", i), s2.at("hash-alone", i)
            return max(a.wall, b.wall) if a and b else None

        self.target("sha256 → file: wall ≤ 1.15× max(transfer alone, hashing alone)",
                    s2.ratio_fn("rawfetch-sha256", bound2), 1.15)
        self.results["sha_file"] = s2

    def _hash_inprocess(self) -> float:
        times = []
        for _ in range(max(self.reps, 1)):
            r = subprocess.run(mod("clients") + ["hash-alone", self.main_path, "-"],
                               capture_output=True, text=True, env=env_for_children())
            for line in r.stderr.splitlines():
                if line.startswith("hash-alone "):
                    times.append(float(line.split()[1]))
        return median(times)

    def sc_rss(self) -> None:
        url, big = self.url(), self.url("big.bin")
        clients = [Client("bare python", [PY, "-c", "pass"]),
                   self.rawfetch(url, "null", name="rawfetch %s → /dev/null" % human(self.size)),
                   self.rawfetch(big, "null", name="rawfetch %s → /dev/null" % human(self.big)),
                   self.rawfetch(url, "file", name="rawfetch %s → file" % human(self.size),
                                 tag="r"),
                   self.rawfetch(big, "file", name="rawfetch %s → file" % human(self.big),
                                 tag="r")]
        reps = 1 if self.quick else 2
        s = self.run_series("rss", clients, reps=reps, warmup=False)
        self.table("(d) peak RSS vs file size (%s generated, %s sparse)" % (
            human(self.size), human(self.big)), s, with_ratio=False,
                   note=["peak RSS = the child's ru_maxrss from wait4, forked from a tiny C "
                         "launcher (bench/launch.c)"])
        bare = s.med("bare python", "rss")
        worst = max(s.med(c.name, "rss") for c in clients[1:] if s.ok(c.name)) \
            if any(s.ok(c.name) for c in clients[1:]) else float("nan")
        small = max(s.med(c.name, "rss") for c in (clients[1], clients[3]) if s.ok(c.name)) \
            if s.ok(clients[1].name) or s.ok(clients[3].name) else float("nan")
        large = max(s.med(c.name, "rss") for c in (clients[2], clients[4]) if s.ok(c.name)) \
            if s.ok(clients[2].name) or s.ok(clients[4].name) else float("nan")
        self.target("peak RSS ≤ bare interpreter + 6 MiB (any size, plain)",
                    (worst - bare) / 1024, 6.0, unit="MiB", fmt="%.1f",
                    detail="bare %.1f MiB, rawfetch worst %.1f MiB; %s vs %s: %+.1f MiB"
                    % (bare / 1024, worst / 1024, human(self.big), human(self.size),
                       (large - small) / 1024))
        self.results["rss"] = s

    def sc_startup(self) -> None:
        """Fixed per-process cost: a 4 KiB file, so start-up and teardown dominate."""
        with open(os.path.join(self.data, "tiny.bin"), "wb") as f:
            f.write(os.urandom(4096))
        url = self.url("tiny.bin")
        clients = [Client("bare python", [PY, "-c", "pass"]), self.rawfetch(url, "null"),
                   self.rawfetch(url, "file", tag="u"), self.floor(url, "null")]
        if self.have["curl"]:
            clients.append(Client("curl", ["curl", "-sS", "-o", os.devnull, url]))
        reps = 3 if self.quick else max(15, self.reps * 3)
        clients[2].name = "rawfetch → file"
        s = self.run_series("startup", clients, reps=reps)
        self.table("fixed cost per process: a 4 KiB file (%d alternating runs)" % reps, s,
                   note=["rawfetch ÷ floor here is the per-process overhead that the 1 GiB "
                         "ratios above include once"])
        self.results["startup"] = s

    def sc_import(self) -> None:
        reps = 3 if self.quick else max(20, self.reps * 4)
        cmds = [("bare python", "pass"), ("import rawfetch", "import rawfetch"),
                ("rawfetch.download (lazy attr)", "import rawfetch; rawfetch.download"),
                ("import rawfetch.cli", "import rawfetch.cli"),
                ("import http.client", "import http.client")]
        if self.have["urllib3"]:
            cmds.append(("import urllib3", "import urllib3"))
        if self.have["requests"]:
            cmds.append(("import requests", "import requests"))
        clients = [Client(n, [PY, "-c", c]) for n, c in cmds]
        s = self.run_series("import", clients, reps=reps)
        head = ["command", "wall ms", "Δ wall vs bare ms", "peak RSS MiB", "Δ RSS MiB",
                "-X importtime cumulative ms"]
        rows = []
        bare_w = s.med("bare python", "wall")
        for n, code in cmds:
            deltas = [x.wall - y.wall for x, y in zip(s.samples[n], s.samples["bare python"])
                      if x and y]
            it = self._importtime(code) if n != "bare python" else float("nan")
            rows.append([n, "%.1f" % (1000 * s.med(n, "wall")),
                         "—" if n == "bare python" else "%+.1f" % (1000 * median(deltas)),
                         "%.1f" % (s.med(n, "rss") / 1024),
                         "—" if n == "bare python" else "%+.1f" % (
                             (s.med(n, "rss") - s.med("bare python", "rss")) / 1024),
                         "" if it != it else "%.1f" % it])
            if n == "import rawfetch":
                self.target("`import rawfetch` ≤ +10 ms over bare python", 1000 * median(deltas),
                            10.0, unit="ms", fmt="%.1f",
                            detail="bare %.1f ms; -X importtime %.1f ms" % (1000 * bare_w, it))
            if n == "rawfetch.download (lazy attr)":
                self.results["import_download_ms"] = 1000 * median(deltas)
        self.tables.append(("(e) import time and RSS (%d alternating runs each)" % reps, head,
                            rows, ["'-X importtime cumulative' is the top-level module's "
                                   "cumulative import time from one run (µs → ms); for the "
                                   "lazy attribute it is the sum of the top-level entries"]))
        self.results["import"] = s

    def _importtime(self, code: str) -> float:
        r = subprocess.run([PY, "-X", "importtime", "-c", code], capture_output=True,
                           text=True, env=env_for_children())
        total = 0.0
        for line in r.stderr.splitlines():
            if not line.startswith("import time:") or "cumulative" in line:
                continue
            parts = line.split("|")
            if len(parts) < 3:
                continue
            name = parts[2]
            if name.startswith(" ") and not name.startswith("  "):   # top level entries
                top = name.strip()
                if top in ("encodings", "site") or top.startswith("_"):
                    continue
                total += int(parts[1])
        # everything past interpreter start-up: sum top-level entries imported by `code`
        return total / 1000.0 - self._site_ms()

    _site_cache: Optional[float] = None

    def _site_ms(self) -> float:
        if self._site_cache is None:
            self._site_cache = 0.0
            r = subprocess.run([PY, "-X", "importtime", "-c", "pass"], capture_output=True,
                               text=True, env=env_for_children())
            total = 0.0
            for line in r.stderr.splitlines():
                parts = line.split("|")
                if line.startswith("import time:") and "cumulative" not in line \
                        and len(parts) >= 3 and parts[2].startswith(" ") \
                        and not parts[2].startswith("  "):
                    top = parts[2].strip()
                    if top in ("encodings", "site") or top.startswith("_"):
                        continue
                    total += int(parts[1])
            self._site_cache = total / 1000.0
        return self._site_cache

    def sc_footprint(self) -> None:
        def py_bytes(path: str) -> Tuple[int, int, int]:
            py = total = files = 0
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if d != "__pycache__"]
                for n in names:
                    size = os.path.getsize(os.path.join(root, n))
                    total += size
                    if n.endswith(".py"):
                        py += size
                        files += 1
            return py, total, files

        rows = []
        rf = py_bytes(os.path.join(REPO, "rawfetch"))
        rows.append(["rawfetch", "%.1f" % (rf[0] / 1024), "%.1f" % (rf[1] / 1024), str(rf[2])])
        sum_py = sum_all = 0
        missing = []
        for name in ("requests", "urllib3", "idna", "charset_normalizer", "certifi"):
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.submodule_search_locations:
                missing.append(name)
                continue
            b = py_bytes(list(spec.submodule_search_locations)[0])
            sum_py += b[0]
            sum_all += b[1]
            rows.append([name, "%.1f" % (b[0] / 1024), "%.1f" % (b[1] / 1024), str(b[2])])
        rows.append(["requests stack total", "%.1f" % (sum_py / 1024), "%.1f" % (sum_all / 1024),
                     ""])
        self.tables.append(("(f) installed footprint", ["package", ".py KiB",
                                                        "all files KiB (no __pycache__)",
                                                        ".py files"], rows,
                            ["not installed: " + ", ".join(missing)] if missing else []))
        self.target("rawfetch package ≤ 100 KiB of .py", rf[0] / 1024, 100.0, unit="KiB",
                    fmt="%.1f", detail="requests stack %.0f KiB of .py" % (sum_py / 1024))

    # --- storm and recovery: bench/faultproxy.py in front of nginx
    def proxy(self, action: str, every: int, max_cuts: Optional[int] = None,
              logname: str = "cuts.log") -> Tuple[subprocess.Popen, int, str]:
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
        line = p.stdout.readline().split()
        if len(line) != 2 or line[0] != "PORT":
            raise RuntimeError("faultproxy did not start")
        return p, int(line[1]), path

    def stop_proxy(self, p: subprocess.Popen) -> None:
        if p.poll() is None:
            p.kill()
        p.wait()

    def sc_storm(self) -> None:
        every = self.args.storm_every
        storm, sport, _ = self.proxy("alt", every, logname="storm.log")
        clean, cport, _ = self.proxy("none", 0, logname="clean.log")
        su = "http://127.0.0.1:%d/main.bin" % sport
        cu = "http://127.0.0.1:%d/main.bin" % cport
        clean_wall = None
        try:
            rf = lambda u, dest, name, extra=(): self.rawfetch(u, dest, name=name, tag="g",  # noqa
                                                               extra=extra)
            fast = ["--retry-delay", "0"]
            clients = [rf(cu, "null", "clean: rawfetch → /dev/null"),
                       rf(su, "null", "storm: rawfetch → /dev/null"),
                       rf(su, "null", "storm: rawfetch --retry-delay 0 → /dev/null", fast),
                       rf(cu, "file", "clean: rawfetch → file"),
                       rf(su, "file", "storm: rawfetch → file"),
                       rf(su, "file", "storm: rawfetch --retry-delay 0 → file", fast)]
            for c in clients:
                c.timeout = 120
            if self.have["curl"]:
                p = self.out("gcurl")
                clients.append(Client("clean: curl → file", ["curl", "-sS", "-o", p, cu],
                                      out=p))
                p2 = self.out("gcurlloop")
                loop = ("i=0; while [ $i -lt 40 ]; do curl -sS -C - -o '%s' '%s' && exit 0; "
                        "i=$((i+1)); done; exit 1" % (p2, su))
                clients.append(Client("storm: curl -C - re-run in a shell loop → file",
                                      ["sh", "-c", loop], out=p2, timeout=120))
            reps = self.args.storm_reps
            s = self.run_series("storm", clients, reps=reps, warmup=False)
            notes = ["faults: bench/faultproxy.py cuts every connection after %s of response "
                     "(RST and FIN alternately); 'clean' = the same proxy without cuts"
                     % human(every),
                     "goodput = clean wall ÷ storm wall, median of per-round pairs; default "
                     "retry_delay is 1 s (full jitter: a mean 0.5 s sleep per fault)"]
            curl_note = self._curl_retry(su, s)
            if curl_note:
                notes.append(curl_note)
            head = ["client", "wall s", "CPU s", "peak RSS MiB", "goodput vs clean"]
            rows = []
            pairs = {"storm: rawfetch → /dev/null": "clean: rawfetch → /dev/null",
                     "storm: rawfetch --retry-delay 0 → /dev/null": "clean: rawfetch → /dev/null",
                     "storm: rawfetch → file": "clean: rawfetch → file",
                     "storm: rawfetch --retry-delay 0 → file": "clean: rawfetch → file",
                     "storm: curl -C - re-run in a shell loop → file": "clean: curl → file"}
            for c in clients:
                if not s.ok(c.name):
                    rows.append([c.name, "failed", "", "", ""])
                    continue
                g = pairs.get(c.name)
                rows.append([c.name, "%.3f" % s.med(c.name, "wall"), "%.3f" % s.med(c.name, "cpu"),
                             "%.1f" % (s.med(c.name, "rss") / 1024),
                             "%.1f%%" % (100 * s.ratio(g, c.name)) if g else "—"])
            notes += ["%s: %s" % kv for kv in s.errors.items()]
            self.tables.append(("(g) fault storm: %s, a cut every %s" % (human(self.size),
                                                                       human(every)),
                                head, rows, notes))
            self.target("fault storm goodput ≥ 90% of fault-free (rawfetch defaults, "
                        "→ /dev/null)", s.ratio("clean: rawfetch → /dev/null",
                                                "storm: rawfetch → /dev/null"),
                        0.90, unit="%", lower_is_better=False,
                        detail="with --retry-delay 0: %.1f%%; → file: %.1f%% (retry-delay 0: "
                        "%.1f%%)" % (100 * s.ratio("clean: rawfetch → /dev/null",
                                                   "storm: rawfetch --retry-delay 0 → /dev/null"),
                                     100 * s.ratio("clean: rawfetch → file",
                                                   "storm: rawfetch → file"),
                                     100 * s.ratio("clean: rawfetch → file",
                                                   "storm: rawfetch --retry-delay 0 → file")))
            self.results["storm"] = s
        finally:
            self.stop_proxy(storm)
            self.stop_proxy(clean)

    def _curl_retry(self, url: str, s: Series) -> str:
        """curl's own --retry with -C -, run once, bounded."""
        if not self.have["curl"]:
            return ""
        path = self.out("gcurlretry")
        drop_file(path)
        clean = s.med("clean: curl → file", "wall")
        limit = 3.0 if self.quick else (max(10.0, 10 * clean) if clean == clean else 30.0)
        argv = ["curl", "-sS", "--retry", "20", "--retry-all-errors", "-C", "-", "-o", path,
                url]
        t0 = time.monotonic()
        try:
            sample = self.launcher.run(argv, timeout=limit)
            got = os.path.getsize(path) if os.path.exists(path) else 0
            text = "completed in %.2f s (goodput %.1f%% of clean curl)" % (
                sample.wall, 100 * clean / sample.wall)
        except RuntimeError as exc:
            got = os.path.getsize(path) if os.path.exists(path) else 0
            text = "did not complete within %.0f s (%s of %s on disk): %s" % (
                time.monotonic() - t0, human(got), human(self.size),
                str(exc).splitlines()[-1][:160])
        drop_file(path)
        self.results["curl_retry"] = text
        return ("curl `--retry 20 --retry-all-errors -C -` (one run): " + text + ". curl "
                "truncates the output back to the command's start offset before each retry, "
                "so -C - does not resume within one command; the shell loop row re-runs curl "
                "-C - instead")

    def sc_recovery(self) -> None:
        every = self.args.storm_every
        idle = 0.5
        rows = []
        summary: Dict[str, Dict[str, float]] = {}
        for mode, cuts in (("rst", 5), ("fin", 5), ("stall", 3)):
            p, port, path = self.proxy(mode, every, max_cuts=cuts, logname="rec-%s.log" % mode)
            try:
                r = subprocess.run(mod("recovery") + ["http://127.0.0.1:%d/main.bin" % port,
                                                     path, "--mode", mode, "--idle-timeout",
                                                     str(idle), "--retry-delay", "0",
                                                     "--size", str(self.size), "--json"],
                                   capture_output=True, text=True, env=env_for_children(),
                                   timeout=120)
            finally:
                self.stop_proxy(p)
            if r.returncode != 0:
                rows.append([mode, "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:200],
                             "", "", "", ""])
                continue
            recs = json.loads(r.stdout)["recoveries"]
            det = [x.get("detection_overshoot", x.get("detection")) for x in recs]
            rec = [x["reconnect"] for x in recs]
            back = [x["backoff"] for x in recs]
            tot = [a + b for a, b in zip(det, rec)]
            summary[mode] = {"detection": median(det), "reconnect": median(rec),
                             "total": median(tot), "max": max(tot) if tot else float("nan")}
            rows.append([mode, str(len(recs)),
                         "%.2f" % (1000 * median(det)), "%.2f" % (1000 * median(rec)),
                         "%.2f" % (1000 * median(back)),
                         "%.2f / %.2f" % (1000 * median(tot), 1000 * max(tot) if tot else 0)])
        head = ["fault", "recoveries", "detection ms", "reconnect ms", "backoff slept ms",
                "detection+reconnect ms (median / max)"]
        self.tables.append(("(h) recovery latency (rawfetch.open in-process, on_event, "
                            "retry_delay 0, idle_timeout %.1f s)" % idle, head, rows,
                            ["detection: rst/fin = proxy's cut → 'error' event (fin includes "
                             "draining what was already in the socket buffer); stall = "
                             "last byte → 'error' minus idle_timeout (the overshoot)",
                             "reconnect = 'error' → first resumed byte, minus the backoff "
                             "sleep: connect + request + head + Range checks"]))
        if "rst" in summary:
            self.target("recovery after RST ≤ 50 ms plus backoff (worst of %d)" % 5,
                        1000 * summary["rst"]["max"], 50.0, unit="ms", fmt="%.1f",
                        detail="median %.1f ms" % (1000 * summary["rst"]["total"]))
        if "stall" in summary:
            self.target("recovery after a stall ≤ idle_timeout + 50 ms plus backoff (worst)",
                        1000 * summary["stall"]["max"], 50.0, unit="ms", fmt="%.1f",
                        detail="overshoot + reconnect; median %.1f ms"
                        % (1000 * summary["stall"]["total"]))
        self.results["recovery"] = summary

    # --- prototypes
    def sc_prototypes(self) -> None:
        url = self.url()
        tls = self.nginx.tls_port is not None
        ut = self.url(tls=True) if tls else None
        rv = lambda variants, u, dest, tag, *extra: Client(  # noqa: E731
            variants, mod("rfvariant") + [variants, u, "-" if dest == "null" else
                                          self.out("p" + tag)] + list(extra),
            out=None if dest == "null" else self.out("p" + tag))
        sha = ["--sha256", self.sha]
        groups: List[Tuple[str, List[Client], str]] = [
            ("buffer size, rawfetch → /dev/null",
             [rv("base", url, "null", "a"), rv("buf256k", url, "null", "b"),
              rv("buf4m", url, "null", "c")], "WRITE_BUFFER / stream buffer 256 KiB or 4 MiB "
             "instead of 1 MiB"),
            ("buffer size, rawfetch → file (fsync off to isolate)",
             [rv("nofsync", url, "file", "a"), rv("buf256k,nofsync", url, "file", "b"),
              rv("buf4m,nofsync", url, "file", "c")], ""),
            ("buffer size, Python floor → /dev/null",
             [Client("floor 1M", mod("clients") + ["floor", url, "-"]),
              Client("floor 256K", mod("clients") + ["floor", url, "-", "--buf", str(256 << 10)]),
              Client("floor 4M", mod("clients") + ["floor", url, "-", "--buf", str(4 << 20)])],
             ""),
            ("SO_RCVBUF 4 MiB (autotuning off), rawfetch → /dev/null",
             [rv("base", url, "null", "a"), rv("rcvbuf4m", url, "null", "b")], ""),
            ("os.write vs buffered file.write, floor → file",
             [Client("floor os.write", mod("clients") + ["floor", url, self.out("pw")],
                     out=self.out("pw")),
              Client("floor file.write", mod("clients") + ["floor-buffered", url,
                                                           self.out("pb")], out=self.out("pb"))],
             ""),
            ("fill the buffer before write/hash, rawfetch → file (fsync off)",
             [rv("nofsync", url, "file", "a"), rv("fill,nofsync", url, "file", "b")], ""),
            ("fill the buffer before write, rawfetch → /dev/null",
             [rv("base", url, "null", "a"), rv("fill", url, "null", "b")], ""),
            ("sha256 in a worker thread + ring of 4 buffers, rawfetch → /dev/null",
             [rv("base", url, "null", "a", *sha), rv("hashthread", url, "null", "b", *sha),
              rv("hashthread,fill", url, "null", "c", *sha)], ""),
            ("sha256 worker thread, standalone prototype (bench/proto_hashthread.py)",
             [Client("inline", mod("proto_hashthread") + [url, "-", self.sha, "--mode",
                                                          "inline"]),
              Client("thread, ring 4", mod("proto_hashthread") + [url, "-", self.sha,
                                                                  "--mode", "thread"])], ""),
            ("os.splice socket→pipe→out, standalone prototype (bench/proto_splice.py) → "
             "/dev/null",
             [Client("copy", mod("proto_splice") + [url, "-", "--mode", "copy"]),
              Client("splice", mod("proto_splice") + [url, "-", "--mode", "splice"])], ""),
            ("os.splice, standalone prototype → file (no fsync)",
             [Client("copy", mod("proto_splice") + [url, self.out("sc"), "--mode", "copy"],
                     out=self.out("sc")),
              Client("splice", mod("proto_splice") + [url, self.out("ss"), "--mode", "splice"],
                     out=self.out("ss"))], ""),
            ("early writeback: posix_fadvise(DONTNEED) every 8 MiB, rawfetch → file (fsync on)",
             [rv("base", url, "file", "a"), rv("fadvise", url, "file", "b")], ""),
        ]
        if tls:
            ca = ["--cafile", self.nginx.cafile]
            groups.insert(8, ("TLS: Connection.recv_into reads on while data is ready, "
                              "rawfetch → /dev/null",
                              [rv("base", ut, "null", "a", *ca), rv("connfill", ut, "null",
                                                                     "b", *ca),
                               rv("connfill,fill", ut, "null", "c", *ca)], ""))
        head = ["prototype", "variant", "wall s", "CPU s", "peak RSS MiB",
                "wall vs first", "CPU vs first"]
        rows = []
        self.results["prototypes"] = {}
        storm, sport, _ = self.proxy("alt", self.args.storm_every, logname="pstorm.log")
        su = "http://127.0.0.1:%d/main.bin" % sport
        groups.append(("fault storm (cut every %s), default retry_delay 1 s, rawfetch → "
                       "/dev/null" % human(self.args.storm_every),
                       [rv("base", su, "null", "a"), rv("progressreset", su, "null", "b"),
                        rv("progressjitter", su, "null", "c")], ""))
        groups.append(("sha256 in a worker thread + ring of 4 buffers, rawfetch → file "
                       "(fsync on)",
                       [rv("base", url, "file", "a", *sha), rv("hashthread", url, "file", "b",
                                                               *sha)], ""))
        groups.append(("lazy hashlib (simulated: _hashlib blocked), rawfetch → file, no "
                       "checksum: peak RSS",
                       [rv("base", url, "file", "a"), rv("nohashlib", url, "file", "b")], ""))
        if tls:
            groups.append(("TLS → file: fill before write (fsync on)",
                           [rv("base", ut, "file", "a", *ca), rv("connfill", ut, "file", "b", *ca),
                            rv("connfill,fill", ut, "file", "c", *ca)], ""))
        try:
            self._run_groups(groups, head, rows)
        finally:
            self.stop_proxy(storm)
        self.tables.append(("prototypes: proposed hot-path changes, measured", head, rows,
                            ["rfvariant rows run rawfetch's current code with the change "
                             "patched in at run time (bench/rfvariant.py); 'n/a' means the "
                             "internals it patches moved",
                             "ratios are variant ÷ first row of the group, median of "
                             "per-round pairs; < 1.00× is a gain; %d rounds"
                             % self.args.proto_reps]))

    def _run_groups(self, groups, head, rows) -> None:
        for title, clients, _ in groups:
            for c in clients:
                c.timeout = 120
            s = self.run_series("proto: " + title[:40], clients, reps=self.args.proto_reps)
            base = clients[0].name
            for i, c in enumerate(clients):
                if not s.ok(c.name):
                    rows.append([title if i == 0 else "", c.name,
                                 "n/a: " + s.errors.get(c.name, "?")[:120], "", "", "", ""])
                    continue
                rows.append([title if i == 0 else "", c.name, "%.3f" % s.med(c.name, "wall"),
                             "%.3f" % s.med(c.name, "cpu"), "%.1f" % (s.med(c.name, "rss") / 1024),
                             "—" if i == 0 else "%.2f×" % s.ratio(c.name, base),
                             "—" if i == 0 else "%.2f×" % s.ratio(c.name, base, "cpu")])
            self.results["prototypes"][title] = s

    # ------------------------------------------------------------------ report
    def markdown(self, command: str, started: float) -> str:
        facts = machine_facts()
        versions = {
            "python": facts["python"],
            "curl": tool_version(["curl", "--version"], r"curl [\d.]+.*?(OpenSSL/[\d.]+)?"),
            "wget": tool_version(["wget", "--version"], r"Wget [\d.]+"),
            "nginx": self.nginx.version() if self.nginx else "?",
            "requests": module_version("requests") or "not installed",
            "urllib3": module_version("urllib3") or "not installed",
            "rawfetch": "working tree at %s" % (self._git_rev() or "?"),
        }
        out = ["# rawfetch benchmarks", "",
               "Generated by `bench/run.py` (issue 6) on %s in %.0f s. Regenerate with:" % (
                   datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), time.time() - started),
               "", "```sh", command, "```", "",
               "Every client runs as a whole process (interpreter start included) against "
               "nginx on loopback (sendfile on; TLS with a trustme CA). Runs of the compared "
               "clients alternate in rotating order; each figure is a median over rounds and "
               "each ratio is the median of per-round ratios from the same run (2 cores, a "
               "noisy shared machine: compare ratios, not absolute times). CPU = user+sys of "
               "the child; peak RSS = its ru_maxrss.", "",
               "## Machine", ""]
        out += ["| | |", "|---|---|"]
        for k in ("nproc", "cpu", "cpu flags", "memory", "kernel"):
            out.append("| %s | %s |" % (k, facts[k]))
        out += ["", "## Versions", "", "| | |", "|---|---|"]
        for k, v in versions.items():
            out.append("| %s | %s |" % (k, v))
        out += ["", "Sizes: %s generated file (pseudo-random), %s sparse file for the RSS "
                "check; %d rounds (storm: %d)." % (human(self.size), human(self.big),
                                                   self.reps, self.args.storm_reps), ""]
        out += ["## Targets", "", "| target | measured | limit | status | gap |",
                "|---|---|---|---|---|"]
        for t in self.targets:
            status = "n/a" if t["met"] is None else ("**met**" if t["met"] else "**missed**")
            out.append("| %s | %s | %s | %s | %s |" % (t["target"], t["measured"],
                                                       t.get("limit", ""), status, t["gap"]))
        out.append("")
        for title, head, rows, notes in self.tables:
            out += ["## " + title, "", "| " + " | ".join(head) + " |",
                    "|" + "---|" * len(head)]
            for r in rows:
                out.append("| " + " | ".join(r) + " |")
            out.append("")
            for n in notes:
                out.append("* " + n)
            if notes:
                out.append("")
        if self.notes:
            out += ["## Notes", ""] + ["* " + n for n in self.notes] + [""]
        extra = self.args.findings
        if extra and os.path.exists(extra):
            with open(extra) as f:
                out += [f.read().rstrip(), ""]
        return "\n".join(out)

    @staticmethod
    def _git_rev() -> Optional[str]:
        try:
            r = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, timeout=5)
            dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "rawfetch"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return r.stdout.strip() + (" + uncommitted changes in rawfetch/" if dirty else "")
        except (OSError, subprocess.TimeoutExpired):
            return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="rawfetch bench suite against its peers")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: tiny sizes, 1 round, no docs write unless --out")
    p.add_argument("--size", default=None, help="test file size (default 1G; quick 8M)")
    p.add_argument("--big-size", default=None, help="RSS check size (default 4G; quick 32M)")
    p.add_argument("--reps", type=int, default=None, help="rounds (default 5; quick 1)")
    p.add_argument("--storm-reps", type=int, default=None, help="storm rounds (default 3)")
    p.add_argument("--proto-reps", type=int, default=None,
                   help="prototype rounds (default 7; quick 1)")
    p.add_argument("--storm-every", default=None, help="bytes per connection before a cut "
                   "(default 64M; quick 1M)")
    p.add_argument("--only", default=None, help="comma list of: " + ",".join(SCENARIOS))
    p.add_argument("--skip", default="", help="comma list of scenarios to skip")
    p.add_argument("--out", default=None,
                   help="markdown report (default docs/benchmarks.md; quick: none)")
    p.add_argument("--findings", default=os.path.join(HERE, "findings.md"),
                   help="markdown appended to the report (default bench/findings.md)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = p.parse_args(argv)
    q = args.quick
    args.size = parse_size(args.size or ("8M" if q else "1G"))
    args.big_size = parse_size(args.big_size or ("32M" if q else "4G"))
    args.reps = args.reps or (1 if q else 5)
    args.storm_reps = args.storm_reps or (1 if q else 3)
    args.proto_reps = args.proto_reps or (1 if q else 7)
    # quick: 2 MiB per connection, so each attempt still moves >= 1 MiB (uncharged retries)
    args.storm_every = parse_size(args.storm_every or ("2M" if q else "64M"))
    out = args.out or (None if q else os.path.join(REPO, "docs", "benchmarks.md"))
    wanted = [s for s in (args.only.split(",") if args.only else SCENARIOS)
              if s and s not in args.skip.split(",")]
    bad = [s for s in wanted if s not in SCENARIOS]
    if bad:
        p.error("unknown scenario(s): %s" % ", ".join(bad))
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        sys.stderr.write("bench: nginx is not installed (apt-get install -y nginx-light)\n")
        return 2
    command = "python3 bench/run.py" + " ".join([""] + [a for a in (argv if argv is not None
                                                                    else sys.argv[1:])])
    started = time.time()
    bench = Bench(args)
    try:
        bench.setup()
        for name in wanted:
            log("scenario %s" % name)
            getattr(bench, "sc_" + name)()
        text = bench.markdown(command.strip(), started)
    finally:
        bench.close()
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
        log("wrote %s" % out)
    print("\n".join(line for line in text.splitlines()
                    if line.startswith("| ") and ("met" in line or "missed" in line
                                                   or "n/a" in line)))
    log("done in %.0f s" % (time.time() - started))
    if bench.failures:
        sys.stderr.write("bench: rawfetch or bench-owned clients failed:\n  %s\n"
                         % "\n  ".join(bench.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
