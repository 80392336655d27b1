#!/usr/bin/env python3
"""rawfetch's bench suite against its peers (issues 6 and 15): one command.

    python3 bench/run.py                       # full: writes docs/benchmarks.md
    python3 bench/run.py --quick --out /tmp/x.md   # CI smoke: tiny sizes, 1 round, seconds
    python3 bench/run.py --only pipeline --out /tmp/p.md
    python3 bench/run.py --size 1G --reps 3 --only plain,tls --out /tmp/b.md

Starts nginx on loopback (generated config, ephemeral ports, sendfile on, plus a TLS
server block with a trustme certificate) serving generated files, and runs rawfetch side
by side with curl, wget, requests, urllib3, http.client and the "Python floors", each as
a whole process, measuring wall, CPU and peak RSS (harness.py, launch.c). Scenarios live
in bench/scenarios/, one module each, registered in SCENARIOS below; report.py writes
the markdown. Missing peers (curl, wget, requests, urllib3, trustme, a C compiler) are
skipped with a note.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import HERE, REPO, human, parse_size  # noqa: E402
from harness import Harness, log  # noqa: E402
from report import today, versions  # noqa: E402
from scenarios import (baseline, delta, footprint, pieces, pipeline, plain,  # noqa: E402
                       prototypes, recovery, rss, sha256, storm, tls, xzparallel)

# Every scenario, in the order a full run takes them. Explicit: a name maps to a function.
SCENARIOS: Dict[str, Callable[[Harness], None]] = {
    "plain": plain.run,
    "tls": tls.run,
    "sha256": sha256.run,
    "pipeline": pipeline.run,
    "xzparallel": xzparallel.run,
    "rss": rss.run,
    "startup": footprint.run_startup,
    "import": footprint.run_import,
    "footprint": footprint.run_footprint,
    "storm": storm.run,
    "recovery": recovery.run,
    "prototypes": prototypes.run,
    "pieces": pieces.run,
    "delta": delta.run,
    "baseline": baseline.run,     # only with --baseline-tree: this tree against another
}
QUICK = {"size": "8M", "big_size": "32M", "reps": 1, "storm_reps": 1, "proto_reps": 1,
         "storm_every": "2M", "image_size": "4M"}
FULL = {"size": "1G", "big_size": "4G", "reps": 5, "storm_reps": 3, "proto_reps": 7,
        "storm_every": "64M", "image_size": "768M"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="rawfetch bench suite against its peers")
    p.add_argument("--quick", action="store_true",
                   help="CI smoke: tiny sizes, 1 round, no docs write unless --out")
    p.add_argument("--size", help="test file size (default 1G; quick 8M)")
    p.add_argument("--big-size", help="RSS check size (default 4G; quick 32M)")
    p.add_argument("--reps", type=int, help="rounds (default 5; quick 1)")
    p.add_argument("--storm-reps", type=int, help="storm rounds (default 3; quick 1)")
    p.add_argument("--proto-reps", type=int, help="prototype rounds (default 7; quick 1)")
    # quick: 2 MiB per connection, so each attempt still moves >= 1 MiB (uncharged retries)
    p.add_argument("--storm-every", help="bytes per connection before a cut (default 64M; "
                   "quick 2M)")
    p.add_argument("--image-size", help="raw image size for the pipeline scenario "
                   "(default 768M; quick 4M)")
    p.add_argument("--image-cache", default=os.path.join(HERE, "out"),
                   help="where generated images are kept (default bench/out, git-ignored)")
    p.add_argument("--rawfetch-tree", default=REPO, metavar="DIR",
                   help="measure the rawfetch/ package of this checkout (default: the one "
                   "bench/ is in), e.g. a clone of another branch")
    p.add_argument("--baseline-tree", metavar="DIR",
                   help="scenario baseline: the same commands from this checkout's rawfetch/ "
                   "too, side by side in alternating rounds (e.g. the tree before a refactor)")
    p.add_argument("--only", help="comma list of: " + ",".join(SCENARIOS))
    p.add_argument("--skip", default="", help="comma list of scenarios to skip")
    p.add_argument("--out", help="markdown report (default docs/benchmarks.md; quick: none)")
    p.add_argument("--findings", default=os.path.join(HERE, "findings.md"),
                   help="markdown appended to the report (default bench/findings.md)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir")
    return p


def settle(args: argparse.Namespace) -> None:
    """Fill in the defaults of the chosen mode; sizes become byte counts."""
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("size", "big_size", "storm_every", "image_size"):
        setattr(args, key, parse_size(str(getattr(args, key))))
    args.image_cache = os.path.abspath(args.image_cache)    # nginx follows symlinks to it
    if not os.path.isfile(os.path.join(args.rawfetch_tree, "rawfetch", "__init__.py")):
        raise SystemExit("bench: no rawfetch/ package in %s" % args.rawfetch_tree)
    if args.baseline_tree and not os.path.isfile(
            os.path.join(args.baseline_tree, "rawfetch", "__init__.py")):
        raise SystemExit("bench: no rawfetch/ package in %s" % args.baseline_tree)


def wanted(p: argparse.ArgumentParser, args: argparse.Namespace) -> List[str]:
    names = [s for s in (args.only.split(",") if args.only else SCENARIOS)
             if s and s not in args.skip.split(",")]
    bad = [s for s in names if s not in SCENARIOS]
    if bad:
        p.error("unknown scenario(s): %s" % ", ".join(bad))
    return names


def run_all(h: Harness, names: Sequence[str]) -> str:
    """Run the scenarios; return the report's markdown."""
    started = time.time()
    h.setup()
    for name in names:
        log("scenario %s" % name)
        SCENARIOS[name](h)
    args = h.args
    findings = None
    if args.findings and os.path.exists(args.findings):
        with open(args.findings) as f:
            findings = f.read()
    assert h.nginx is not None
    context = {"command": h.command, "date": today(), "elapsed": time.time() - started,
               "versions": versions(h.nginx.version()),
               "sizes": "Sizes: %s generated file (pseudo-random), %s sparse file for the "
                        "RSS check, %s raw image for the pipeline; %d rounds (storm: %d, "
                        "prototypes: %d)." % (human(h.size), human(h.big),
                                              human(args.image_size), h.reps,
                                              args.storm_reps, args.proto_reps)}
    return h.report.markdown(context, findings)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = p.parse_args(argv)
    settle(args)
    names = wanted(p, args)
    if shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        sys.stderr.write("bench: nginx is not installed (apt-get install -y nginx-light)\n")
        return 2
    out = args.out or (None if args.quick else os.path.join(REPO, "docs", "benchmarks.md"))
    started = time.time()
    h = Harness(args)
    h.command = " ".join(["python3 bench/run.py"] + argv)
    try:
        text = run_all(h, names)
    finally:
        h.close()
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(text)
        log("wrote %s" % out)
    print("\n".join(h.report.summary_lines()))
    log("done in %.0f s" % (time.time() - started))
    if h.failures:
        sys.stderr.write("bench: rawfetch or bench-owned clients failed:\n  %s\n"
                         % "\n  ".join(h.failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
