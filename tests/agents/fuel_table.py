"""The stock-vs-rawfetch table in docs/fuel.md: every scenario of tests/agents/fuel_env.py
through fuel-agent 11.0.0's own code, once as installed and once switched to rawfetch by
the documented line. Run from the repository root (~3.5 minutes; as root it adds the
loop-device and EIO rows):

    python3 -m tests.agents.fuel_table [--print]
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from typing import List, Optional

from tests.agents.fuel_env import (BY_NAME, ON_LOOP_DEVICE, ROOT, SCENARIOS, Outcome,
                                   Scenario, build_venv, failing_device, problems, run,
                                   zero_device, _detach, _losetup)

DOC = os.path.join(ROOT, "docs", "fuel.md")
BEGIN, END = "<!-- fuel-table begins -->", "<!-- fuel-table ends -->"
TABLE_CAP = 30.0    # s; a stock run still going then is reported as unbounded
COMMAND = "python3 -m tests.agents.fuel_table"


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


def rows(python: str, where: str) -> List[str]:
    lines = []
    for scenario in SCENARIOS:
        lines.append(row(python, scenario, "file", os.path.join(where, "disk.img"), "chain"))
    if os.geteuid() == 0:
        lines.extend(device_rows(python, where))
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


def device_rows(python: str, where: str) -> List[str]:
    backing = os.path.join(where, "loop-backing")
    with open(backing, "wb") as handle:
        handle.truncate(8 << 20)
    device = _losetup(backing)
    try:
        lines = [row(python, BY_NAME[name], "loop dev", device, "manager", device)
                 for name in ON_LOOP_DEVICE]
    finally:
        _detach(device)
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


def table(python: str) -> str:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fuel-table-") as where:
        body = rows(python, where)
    header = [BEGIN,
              "Made by `%s` on %s (%.0f s), fuel-agent 11.0.0, Python %s. Each cell: "
              "whether the row's demand was met, the exception fuel-agent's caller saw, "
              "the requests the server saw, the seconds taken." % (
                  COMMAND, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  time.monotonic() - started, sys.version.split()[0]),
              "",
              "| scenario | target | demand (bytes; error; requests) | stock fuel-agent "
              "| fuel-agent + rawfetch |",
              "|---|---|---|---|---|"]
    met = {mode: sum(1 for line in body if line.split(" | ")[3 + i].startswith("met"))
           for i, mode in enumerate(("stock", "rawfetch"))}
    footer = ["", "Demands met: stock %d/%d, rawfetch %d/%d." % (
        met["stock"], len(body), met["rawfetch"], len(body)), END]
    return "\n".join(header + body + footer)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="fuel-venv-") as where:
        text = table(build_venv(where))
    if "--print" in sys.argv:
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
