"""Recovery latency of rawfetch, in-process, through bench/faultproxy.py.

    python3 bench/recovery.py URL_VIA_PROXY CUTS_LOG --mode rst|fin|stall
        [--idle-timeout S] [--retry-delay S] [--size N] [--json]

Reads URL with rawfetch.open() (1 MiB readinto loop, like download()) with on_event, and
splits each recovery into:
    detection  cut (proxy's log) -> rawfetch's "error" event; for a stall, the client's
               last received byte -> "error", minus idle_timeout (the overshoot)
    backoff    "backoff" event's seconds (the sleep itself)
    reconnect  "error" -> first resumed byte, minus the backoff sleep: connect, request,
               head, Range checks
Prints one JSON object per recovery (with --json) or a summary line.
"""
from __future__ import annotations

import json
import sys
import time


class Recorder:
    """on_event hook: opens a pending recovery at each "error", notes its backoff, and
    closes it at the first byte received after it."""

    def __init__(self):
        self.recoveries = []
        self.pending = None
        self.last_byte = None

    def on_event(self, event):
        if event["event"] == "error":
            self.pending = {"error_wall": time.time(), "error_mono": time.monotonic(),
                            "last_byte_mono": self.last_byte, "backoff": 0.0,
                            "error": event.get("error"), "offset": event.get("offset")}
        elif event["event"] == "backoff" and self.pending is not None:
            self.pending["backoff"] = float(event.get("seconds", 0.0))

    def received(self, now):
        if self.pending is not None:
            self.pending["first_byte_mono"] = now
            self.recoveries.append(self.pending)
            self.pending = None
        self.last_byte = now


def _read_all(url, recorder, idle_timeout, retry_delay):
    """Read the whole body (1 MiB readinto loop, like download()); return its length."""
    import rawfetch
    view = memoryview(bytearray(1 << 20))
    total = 0
    with rawfetch.open(url, on_event=recorder.on_event, idle_timeout=idle_timeout,
                       retry_delay=retry_delay, retries=50) as stream:
        while True:
            got = stream.readinto(view)
            if not got:
                return total
            total += got
            recorder.received(time.monotonic())


def _cut_times(cuts_log):
    with open(cuts_log) as f:
        return [float(p[1]) for p in (line.split() for line in f) if p and p[0] == "cut"]


def _split(rec, cut, mode, idle_timeout):
    """One recovery as detection, backoff and reconnect (see the module docstring)."""
    item = {"error": rec["error"], "offset": rec["offset"], "backoff": rec["backoff"],
            "reconnect": rec["first_byte_mono"] - rec["error_mono"] - rec["backoff"]}
    if mode == "stall":
        silent = rec["error_mono"] - rec["last_byte_mono"]
        item["detection"] = silent
        item["detection_overshoot"] = silent - idle_timeout
    elif cut is not None:
        item["detection"] = rec["error_wall"] - cut
    return item


def measure(url, cuts_log, mode, idle_timeout=0.5, retry_delay=0.001, expect=None):
    recorder = Recorder()
    total = _read_all(url, recorder, idle_timeout, retry_delay)
    if expect is not None and total != expect:
        raise SystemExit("got %d bytes, expected %d" % (total, expect))
    cuts = _cut_times(cuts_log)
    return [_split(rec, cuts[i] if i < len(cuts) else None, mode, idle_timeout)
            for i, rec in enumerate(recorder.recoveries)], total


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("cuts_log")
    p.add_argument("--mode", choices=("rst", "fin", "stall"), required=True)
    p.add_argument("--idle-timeout", type=float, default=0.5)
    p.add_argument("--retry-delay", type=float, default=0.001)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    recoveries, total = measure(args.url, args.cuts_log, args.mode, args.idle_timeout,
                                args.retry_delay, args.size)
    if args.json:
        print(json.dumps({"recoveries": recoveries, "bytes": total}))
    else:
        for r in recoveries:
            print(" ".join("%s=%s" % (k, round(v, 6) if isinstance(v, float) else v)
                           for k, v in r.items()))


if __name__ == "__main__":
    sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.dirname(
        __import__("os").path.abspath(__file__))))
    main()
