"""(g) goodput under a fault storm: bench/faultproxy.py cuts every connection after
--storm-every bytes (RST and FIN alternately); the same relay without cuts is "clean"."""
from __future__ import annotations

import os
import time
from typing import Dict, List

from common import human
from harness import Client, Harness, Series

GOODPUT_REASON = ("a cut every 64 MiB is one every ~40–80 ms on loopback, so each "
                  "reconnect (and the bytes an RST destroys in flight) weighs far more "
                  "than over a real link; ±20% between runs")
CURL_LOOP_TRIES = 40     # shell loop of `curl -C -`: enough for 1 GiB at one cut per 64 MiB
PAIRS = {   # storm row -> its clean reference
    "storm: rawfetch → /dev/null": "clean: rawfetch → /dev/null",
    "storm: rawfetch --retry-delay 0 → /dev/null": "clean: rawfetch → /dev/null",
    "storm: rawfetch → file": "clean: rawfetch → file",
    "storm: rawfetch --retry-delay 0 → file": "clean: rawfetch → file",
    "storm: curl -C - re-run in a shell loop → file": "clean: curl → file",
}


def _clients(h: Harness, storm_url: str, clean_url: str) -> List[Client]:
    fast = ["--retry-delay", "0"]
    clients = []
    for dest, label in (("null", "/dev/null"), ("file", "file")):
        clients += [h.rawfetch(clean_url, dest, tag="g", name="clean: rawfetch → " + label),
                    h.rawfetch(storm_url, dest, tag="g", name="storm: rawfetch → " + label),
                    h.rawfetch(storm_url, dest, tag="g", extra=fast,
                               name="storm: rawfetch --retry-delay 0 → " + label)]
    for c in clients:
        c.timeout = 120
    if h.have["curl"]:
        path, loop_path = h.out("gcurl"), h.out("gcurlloop")
        loop = ("i=0; while [ $i -lt %d ]; do curl -sS -C - -o '%s' '%s' && exit 0; "
                "i=$((i+1)); done; exit 1" % (CURL_LOOP_TRIES, loop_path, storm_url))
        clients += [Client("clean: curl → file", ["curl", "-sS", "-o", path, clean_url],
                           out=path, peer=True),
                    Client("storm: curl -C - re-run in a shell loop → file",
                           ["sh", "-c", loop], out=loop_path, timeout=120, peer=True)]
    return clients


def run(h: Harness) -> None:
    every = h.args.storm_every
    storm, storm_port, _ = h.proxy("alt", every, logname="storm.log")
    clean, clean_port, _ = h.proxy("none", 0, logname="clean.log")
    try:
        storm_url = "http://127.0.0.1:%d/main.bin" % storm_port
        clean_url = "http://127.0.0.1:%d/main.bin" % clean_port
        clients = _clients(h, storm_url, clean_url)
        s = h.run_series("storm", clients, reps=h.args.storm_reps, warmup=False)
        notes = ["faults: bench/faultproxy.py cuts every connection after %s of response "
                 "(RST and FIN alternately); 'clean' = the same proxy without cuts"
                 % human(every),
                 "goodput = clean wall ÷ storm wall, median of per-round pairs; default "
                 "retry_delay is 1 s, but no backoff follows an attempt that moved the "
                 "download forward"]
        if h.have["curl"]:
            notes.append(_curl_retry(h, storm_url, s))
        _table(h, s, clients, every, notes)
        _target(h, s)
    finally:
        h.stop_proxy(storm)
        h.stop_proxy(clean)


def _table(h: Harness, s: Series, clients: List[Client], every: int,
           notes: List[str]) -> None:
    rows = []
    for c in clients:
        if not s.ok(c.name):
            rows.append([c.name, "failed", "", "", ""])
            continue
        ref = PAIRS.get(c.name)
        rows.append([c.name, "%.3f" % s.med(c.name, "wall"), "%.3f" % s.med(c.name, "cpu"),
                     "%.1f" % (s.med(c.name, "rss") / 1024),
                     "%.1f%%" % (100 * s.ratio(ref, c.name)) if ref else "—"])
    notes += ["%s: %s" % kv for kv in s.errors.items()]
    h.report.table("(g) fault storm: %s, a cut every %s" % (human(h.size), human(every)),
                   ["client", "wall s", "CPU s", "peak RSS MiB", "goodput vs clean"], rows,
                   notes)


def _target(h: Harness, s: Series) -> None:
    goodput: Dict[str, float] = {name: s.ratio(ref, name) for name, ref in PAIRS.items()}
    h.report.target(
        "fault storm goodput ≥ 90% of fault-free (rawfetch defaults, → /dev/null)",
        goodput["storm: rawfetch → /dev/null"], 0.90, unit="%", lower_is_better=False,
        detail="with --retry-delay 0: %.1f%%; → file: %.1f%% (retry-delay 0: %.1f%%)" % (
            100 * goodput["storm: rawfetch --retry-delay 0 → /dev/null"],
            100 * goodput["storm: rawfetch → file"],
            100 * goodput["storm: rawfetch --retry-delay 0 → file"]),
        reason=GOODPUT_REASON)


def _curl_retry(h: Harness, url: str, s: Series) -> str:
    """curl's own --retry with -C -, run once, bounded."""
    path = h.out("gcurlretry")
    clean = s.med("clean: curl → file", "wall")
    limit = 3.0 if h.quick else (max(10.0, 10 * clean) if clean == clean else 30.0)
    argv = ["curl", "-sS", "--retry", "20", "--retry-all-errors", "-C", "-", "-o", path, url]
    started = time.monotonic()
    try:
        sample = h.launcher.run(argv, timeout=limit)
        text = "completed in %.2f s (goodput %.1f%% of clean curl)" % (
            sample.wall, 100 * clean / sample.wall)
    except RuntimeError as exc:
        got = os.path.getsize(path) if os.path.exists(path) else 0
        text = "did not complete within %.0f s (%s of %s on disk): %s" % (
            time.monotonic() - started, human(got), human(h.size),
            str(exc).splitlines()[-1][:160])
    finally:
        if os.path.exists(path):
            os.unlink(path)
    return ("curl `--retry 20 --retry-all-errors -C -` (one run): " + text + ". curl "
            "truncates the output back to the command's start offset before each retry, so "
            "-C - does not resume within one command; the shell loop row re-runs curl -C - "
            "instead")
