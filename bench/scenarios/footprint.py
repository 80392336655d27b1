"""Per-process costs: a 4 KiB download (start-up), import time and RSS, and the
installed size of the package against the requests stack."""
from __future__ import annotations

import importlib.util
import os
import subprocess
from typing import List, Tuple

from common import PY, child_cwd, env_for_children, median, rawfetch_tree
from harness import Client, Harness, Series

SIZE_REASON = ("the package carries the command, three decoders, disk safety, mirrors, "
               "splice, rate limiting, the fuel-agent adapter and events, with docstrings; "
               "still under a quarter of the requests stack")
REQUESTS_STACK = ("requests", "urllib3", "idna", "charset_normalizer", "certifi")


def run_startup(h: Harness) -> None:
    """Fixed per-process cost: a 4 KiB file, so start-up and teardown dominate."""
    with open(os.path.join(h.data, "tiny.bin"), "wb") as f:
        f.write(os.urandom(4096))
    url = h.url("tiny.bin")
    clients = [Client("bare python", [PY, "-c", "pass"]), h.rawfetch(url, "null"),
               h.rawfetch(url, "file", tag="u", name="rawfetch → file"),
               h.floor(url, "null")]
    if h.have["curl"]:
        clients.append(Client("curl", ["curl", "-sS", "-o", os.devnull, url], peer=True))
    reps = 3 if h.quick else max(15, h.reps * 3)
    s = h.run_series("startup", clients, reps=reps)
    h.report.series_table(
        "fixed cost per process: a 4 KiB file (%d alternating runs)" % reps, s,
        note=["rawfetch ÷ floor here is the per-process overhead that the large-file "
              "ratios above include once"])


def run_import(h: Harness) -> None:
    reps = 3 if h.quick else max(20, h.reps * 4)
    cmds = [("bare python", "pass"), ("import rawfetch", "import rawfetch"),
            ("rawfetch.download (lazy attr)", "import rawfetch; rawfetch.download"),
            ("import rawfetch.cli", "import rawfetch.cli"),
            ("import http.client", "import http.client")]
    cmds += [("import " + m, "import " + m) for m in ("urllib3", "requests") if h.have[m]]
    s = h.run_series("import", [Client(n, [PY, "-c", c]) for n, c in cmds], reps=reps)
    head = ["command", "wall ms", "Δ wall vs bare ms", "peak RSS MiB", "Δ RSS MiB",
            "-X importtime cumulative ms"]
    rows = [_import_row(s, n, code) for n, code in cmds]
    h.report.table("(e) import time and RSS (%d alternating runs each)" % reps, head, rows,
                   ["'-X importtime cumulative' is the top-level modules' import time from "
                    "one run (µs → ms), minus what a bare interpreter imports"])
    deltas = _wall_deltas(s, "import rawfetch")
    h.report.target("`import rawfetch` ≤ +10 ms over bare python", 1000 * median(deltas),
                    10.0, unit="ms", fmt="%.1f",
                    detail="bare %.1f ms; -X importtime %.1f ms"
                    % (1000 * s.med("bare python", "wall"), _importtime("import rawfetch")),
                    reason="a module imported eagerly: see -X importtime")


def _wall_deltas(s: Series, name: str) -> List[float]:
    return [x.wall - y.wall for x, y in zip(s.samples[name], s.samples["bare python"])
            if x and y]


def _import_row(s: Series, name: str, code: str) -> List[str]:
    bare = name == "bare python"
    it = float("nan") if bare else _importtime(code)
    rss = s.med(name, "rss")
    return [name, "%.1f" % (1000 * s.med(name, "wall")),
            "—" if bare else "%+.1f" % (1000 * median(_wall_deltas(s, name))),
            "%.1f" % (rss / 1024),
            "—" if bare else "%+.1f" % ((rss - s.med("bare python", "rss")) / 1024),
            "" if it != it else "%.1f" % it]


def _top_level_ms(code: str) -> float:
    """Sum of -X importtime's top-level self+children entries, start-up modules excluded."""
    r = subprocess.run([PY, "-X", "importtime", "-c", code], capture_output=True,
                       text=True, env=env_for_children(), cwd=child_cwd())
    total = 0
    for line in r.stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or "cumulative" in line or len(parts) < 3:
            continue
        name = parts[2]
        if name.startswith(" ") and not name.startswith("  "):      # top-level entry
            top = name.strip()
            if top not in ("encodings", "site") and not top.startswith("_"):
                total += int(parts[1])
    return total / 1000.0


def _importtime(code: str) -> float:
    """What `code` imports beyond interpreter start-up, in ms."""
    return _top_level_ms(code) - _top_level_ms("pass")


def _py_bytes(path: str) -> Tuple[int, int, int]:
    """(.py bytes, all bytes, .py files) under path, __pycache__ excluded."""
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


def run_footprint(h: Harness) -> None:
    rf = _py_bytes(os.path.join(rawfetch_tree(), "rawfetch"))
    rows = [["rawfetch", "%.1f" % (rf[0] / 1024), "%.1f" % (rf[1] / 1024), str(rf[2])]]
    sum_py = sum_all = 0
    missing = []
    for name in REQUESTS_STACK:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            missing.append(name)
            continue
        b = _py_bytes(list(spec.submodule_search_locations)[0])
        sum_py, sum_all = sum_py + b[0], sum_all + b[1]
        rows.append([name, "%.1f" % (b[0] / 1024), "%.1f" % (b[1] / 1024), str(b[2])])
    rows.append(["requests stack total", "%.1f" % (sum_py / 1024), "%.1f" % (sum_all / 1024),
                 ""])
    h.report.table("(f) installed footprint",
                   ["package", ".py KiB", "all files KiB (no __pycache__)", ".py files"], rows,
                   ["not installed: " + ", ".join(missing)] if missing else [])
    h.report.target("rawfetch package ≤ 100 KiB of .py", rf[0] / 1024, 100.0, unit="KiB",
                    fmt="%.1f", detail="requests stack %.0f KiB of .py" % (sum_py / 1024),
                    reason=SIZE_REASON)
