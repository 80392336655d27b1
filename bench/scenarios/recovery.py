"""(h) recovery latency: rawfetch.open in-process (bench/recovery.py) through the fault
proxy, split into detection, backoff and reconnect from rawfetch's own events."""
from __future__ import annotations

import json
import subprocess
from typing import Dict, List

from common import child_cwd, env_for_children, median
from harness import Harness, mod

IDLE_TIMEOUT = 0.5          # s: short, so a stall is detected quickly
FAULTS = (("rst", 5), ("fin", 5), ("stall", 3))   # action, cuts
RECOVERY_TIMEOUT = 120      # s: one recovery run; minutes mean a hang
LATENCY_REASON = "reconnect slower than loopback allows: see the detection/reconnect split"


def _measure(h: Harness, mode: str, cuts: int) -> Dict[str, List[float]]:
    """One run of bench/recovery.py through a proxy cutting `cuts` times."""
    p, port, path = h.proxy(mode, h.args.storm_every, max_cuts=cuts,
                            logname="rec-%s.log" % mode)
    try:
        r = subprocess.run(mod("recovery") + ["http://127.0.0.1:%d/main.bin" % port, path,
                                             "--mode", mode, "--idle-timeout",
                                             str(IDLE_TIMEOUT), "--retry-delay", "0",
                                             "--size", str(h.size), "--json"],
                           capture_output=True, text=True, env=env_for_children(),
                           cwd=child_cwd(), timeout=RECOVERY_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError("no result within %d s" % RECOVERY_TIMEOUT) from None
    finally:
        h.stop_proxy(p)
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["?"])[-1][:200])
    recs = json.loads(r.stdout)["recoveries"]
    det = [x.get("detection_overshoot", x.get("detection")) for x in recs]
    rec = [x["reconnect"] for x in recs]
    return {"detection": det, "reconnect": rec, "backoff": [x["backoff"] for x in recs],
            "total": [a + b for a, b in zip(det, rec)]}


def run(h: Harness) -> None:
    rows = []
    worst: Dict[str, float] = {}
    typical: Dict[str, float] = {}
    for mode, cuts in FAULTS:
        try:
            m = _measure(h, mode, cuts)
        except RuntimeError as exc:
            h.failures.append("recovery %s: %s" % (mode, exc))
            rows.append([mode, "failed: %s" % exc, "", "", "", ""])
            continue
        worst[mode] = max(m["total"]) if m["total"] else float("nan")
        typical[mode] = median(m["total"])
        rows.append([mode, str(len(m["total"]))] + ["%.2f" % (1000 * median(m[k])) for k in
                                                   ("detection", "reconnect", "backoff")]
                    + ["%.2f / %.2f" % (1000 * typical[mode], 1000 * worst[mode])])
    h.report.table(
        "(h) recovery latency (rawfetch.open in-process, on_event, retry_delay 0, "
        "idle_timeout %.1f s)" % IDLE_TIMEOUT,
        ["fault", "recoveries", "detection ms", "reconnect ms", "backoff slept ms",
         "detection+reconnect ms (median / max)"], rows,
        ["detection: rst/fin = proxy's cut → 'error' event (fin includes draining what was "
         "already in the socket buffer); stall = last byte → 'error' minus idle_timeout "
         "(the overshoot)",
         "reconnect = 'error' → first resumed byte, minus the backoff sleep: connect + "
         "request + head + Range checks"])
    if "rst" in worst:
        h.report.target("recovery after RST ≤ 50 ms plus backoff (worst of %d)" % FAULTS[0][1],
                        1000 * worst["rst"], 50.0, unit="ms", fmt="%.1f",
                        detail="median %.1f ms" % (1000 * typical["rst"]),
                        reason=LATENCY_REASON)
    if "stall" in worst:
        h.report.target("recovery after a stall ≤ idle_timeout + 50 ms plus backoff (worst)",
                        1000 * worst["stall"], 50.0, unit="ms", fmt="%.1f",
                        detail="overshoot + reconnect; median %.1f ms" % (
                            1000 * typical["stall"]), reason=LATENCY_REASON)
