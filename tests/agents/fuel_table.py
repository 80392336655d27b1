"""The stock-vs-rawfetch table in docs/fuel.md: every scenario of tests/agents/fuel_env.py
through fuel-agent 11.0.0's own code, once as installed and once switched to rawfetch by
the documented line. Run from the repository root (~3.5 minutes; as root it adds the
loop-device and EIO rows; or both agents' tables: python3 -m tests.agents.table):

    python3 -m tests.agents.fuel_table [--only NAME ...] [--print]
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from typing import List, Optional, Sequence

from tests.agents.fuel_env import (BY_NAME, ON_LOOP_DEVICE, ROOT, SCENARIOS, Outcome,
                                   Scenario, build_venv, failing_device, problems, run,
                                   zero_device, _detach, _losetup)

DOC = os.path.join(ROOT, "docs", "fuel.md")
BEGIN, END = "<!-- fuel-table begins -->", "<!-- fuel-table ends -->"
TABLE_CAP = 30.0    # s; a stock run still going then is reported as unbounded
COMMAND = "python3 -m tests.agents.fuel_table"
BOTH = "python3 -m tests.agents.table"     # this table and docs/agents-ironic.md, together


def cell(scenario: Scenario, outcome: Outcome) -> str:
    """'met' or what was missed, then the error fuel-agent's caller saw, requests, time."""
    missed = problems(scenario, outcome)
    if outcome.capped:
        return "**missed**: still running after %d s (%d requests)" % (
            outcome.capped, len(outcome.requests))
    error = outcome.error_class or "no error"
    if outcome.result.get("errno"):
        error += " (errno %d)" % outcome.result["errno"]
    facts = "%s; %d req; %.1f s" % (error, len(outcome.requests), outcome.result["elapsed"])
    if not missed:
        return "met: " + facts
    return "**missed** (%s): %s" % ("; ".join(m.split(" (")[0] for m in missed), facts)


def want(scenario: Scenario) -> str:
    target = "the image" if scenario.want_bytes is not None else "-"
    low, high = scenario.want_requests
    requests = str(low) if low == high else "%d-%d" % (low, high)
    return "%s; %s; %s req" % (target, scenario.want_error or "no error", requests)


def rows(python: str, where: str, only: Sequence[str] = ()) -> List[str]:
    """Every scenario (or those named in `only`) on a file, then as root on a loop device;
    the fsync EIO row only in a full table."""
    lines = []
    for scenario in SCENARIOS:
        if not only or scenario.name in only:
            lines.append(row(python, scenario, "file", os.path.join(where, "disk.img"),
                             "chain"))
    if os.geteuid() == 0:
        lines.extend(device_rows(python, where, only))
    return lines


def row(python: str, scenario: Scenario, label: str, target: str, via: str,
        device: Optional[str] = None) -> str:
    cells = []
    for mode in ("stock", "rawfetch"):
        if device is not None:
            zero_device(device)
        elif os.path.exists(target):
            os.unlink(target)
        outcome = run(python, scenario, mode, target, via=via, cap=TABLE_CAP)
        cells.append(cell(scenario, outcome))
    print("%-8s %-45s %s" % (label, scenario.name, " | ".join(cells)), file=sys.stderr)
    return "| %s | %s | %s | %s | %s |" % (scenario.name, label, want(scenario), *cells)


def device_rows(python: str, where: str, only: Sequence[str] = ()) -> List[str]:
    backing = os.path.join(where, "loop-backing")
    with open(backing, "wb") as handle:
        handle.truncate(8 << 20)
    device = _losetup(backing)
    try:
        lines = [row(python, BY_NAME[name], "loop dev", device, "manager", device)
                 for name in ON_LOOP_DEVICE if not only or name in only]
    finally:
        _detach(device)
    if only:
        return lines
    failing = failing_device(tempfile.mkdtemp(prefix="fuel-eio-"))
    try:
        eio = BY_NAME["clean"]
        cells = [run(python, eio, mode, failing, via="manager", cap=TABLE_CAP)
                 for mode in ("stock", "rawfetch")]
        lines.append("| fsync EIO (loop device on a full tmpfs) | loop dev | an error | %s |"
                     % " | ".join(eio_cell(outcome) for outcome in cells))
    finally:
        _detach(failing)
    return lines


def eio_cell(outcome: Outcome) -> str:
    error = outcome.error_class or "no error"
    facts = "%s (errno %s); %d req" % (error, outcome.result.get("errno"),
                                       len(outcome.requests))
    return ("met: " if outcome.result.get("errno") == 5 else "**missed**: ") + facts


def table(python: str, only: Sequence[str] = ()) -> str:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuel-table-") as where:
        body = rows(python, where, only)
    header = [BEGIN,
              "Made by `%s` on %s (%.0f s), fuel-agent 11.0.0, Python %s. Each cell: "
              "whether the row's demand was met, the exception fuel-agent's caller saw, "
              "the requests the server saw, the seconds taken. `%s` regenerates this "
              "table and docs/agents-ironic.md together." % (
                  COMMAND, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  time.monotonic() - started, sys.version.split()[0], BOTH),
              "",
              "| scenario | target | demand (bytes; error; requests) | stock fuel-agent "
              "| fuel-agent + rawfetch |",
              "|---|---|---|---|---|"]
    met = {mode: sum(1 for line in body if line.split(" | ")[3 + i].startswith("met"))
           for i, mode in enumerate(("stock", "rawfetch"))}
    footer = ["", "Demands met: stock %d/%d, rawfetch %d/%d." % (
        met["stock"], len(body), met["rawfetch"], len(body)), END]
    return "\n".join(header + body + footer)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--print", action="store_true",
                        help="print the table instead of writing it into docs/fuel.md")
    parser.add_argument("--only", nargs="*", default=[], metavar="NAME",
                        help="scenario names (default: all, and the fsync EIO row)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in BY_NAME]
    if unknown:
        parser.error("no scenario %s (known: %s)" % (", ".join(map(repr, unknown)),
                                                      ", ".join(map(repr, BY_NAME))))
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fuel-venv-") as where:
        text = table(build_venv(where), args.only)
    if args.print:
        print(text)
        return
    with open(DOC, encoding="utf-8") as handle:
        doc = handle.read()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if not pattern.search(doc):
        raise SystemExit("%s has no %s ... %s block" % (DOC, BEGIN, END))
    with open(DOC, "w", encoding="utf-8") as handle:
        handle.write(pattern.sub(lambda _: text, doc))
    print("table written to %s" % DOC)


if __name__ == "__main__":
    main()
