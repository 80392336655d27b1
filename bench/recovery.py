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


def measure(url, cuts_log, mode, idle_timeout=0.5, retry_delay=0.001, expect=None):
    import rawfetch
    events = []
    rawfetch_open = rawfetch.open
    stream = None
    recoveries = []
    last_byte = None
    pending = None                     # the recovery being timed
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)

    def on_event(event):
        nonlocal pending
        event = dict(event, mono=time.monotonic(), wall=time.time())
        events.append(event)
        if event["event"] == "error":
            pending = {"error_wall": event["wall"], "error_mono": event["mono"],
                       "last_byte_mono": last_byte, "backoff": 0.0,
                       "error": event.get("error"), "offset": event.get("offset")}
        elif event["event"] == "backoff" and pending is not None:
            pending["backoff"] = float(event.get("seconds", 0.0))

    stream = rawfetch_open(url, on_event=on_event, idle_timeout=idle_timeout,
                           retry_delay=retry_delay, retries=50)
    total = 0
    with stream:
        while True:
            got = stream.readinto(view)
            now = time.monotonic()
            if not got:
                break
            total += got
            if pending is not None:
                pending["first_byte_mono"] = now
                recoveries.append(pending)
                pending = None
            last_byte = now
    if expect is not None and total != expect:
        raise SystemExit("got %d bytes, expected %d" % (total, expect))
    cuts = []
    with open(cuts_log) as f:
        for line in f:
            parts = line.split()
            if parts and parts[0] == "cut":
                cuts.append(float(parts[1]))
    out = []
    for i, rec in enumerate(recoveries):
        total_gap = rec["first_byte_mono"] - rec["error_mono"]
        item = {"error": rec["error"], "offset": rec["offset"], "backoff": rec["backoff"],
                "reconnect": total_gap - rec["backoff"]}
        if mode == "stall":
            silent = rec["error_mono"] - rec["last_byte_mono"]
            item["detection"] = silent
            item["detection_overshoot"] = silent - idle_timeout
        elif i < len(cuts):
            item["detection"] = rec["error_wall"] - cuts[i]
        out.append(item)
    return out, total


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
