"""Both agents' stock-vs-rawfetch tables in one command, from the repository root:

    python3 -m tests.agents.table                    # docs/agents-ironic.md and docs/fuel.md
    python3 -m tests.agents.table ipa                # one of them: ipa or fuel
    python3 -m tests.agents.table fuel --only clean --print

Options after a single agent's name go to that agent's table (tests/agents/ipa_table.py:
--only, --out, --timeout; tests/agents/fuel_table.py: --only, --print). Both tables take
about 7 minutes together; a table that fails does not stop the other, and the command
then exits 1 naming it.
"""
from __future__ import annotations

import importlib
import sys
import traceback
from typing import List, Optional, Sequence, Tuple

TABLES = {"ipa": "tests.agents.ipa_table", "fuel": "tests.agents.fuel_table"}
USAGE = "usage: python3 -m tests.agents.table [ipa|fuel ...] [options of one table]"


def plan(argv: Sequence[str]) -> List[Tuple[str, List[str]]]:
    """(agent, its table's arguments) to run, in order; SystemExit(2) on a misuse."""
    agents = []
    for position, word in enumerate(argv):
        if word not in TABLES:
            rest = list(argv[position:])
            break
        if word not in agents:
            agents.append(word)
    else:
        rest = []
    if rest and rest[0] in ("-h", "--help") and not agents:
        print(__doc__.strip())
        raise SystemExit(0)
    if rest and len(agents) != 1:
        print("%s\noptions (%s) go to one table: name ipa or fuel first"
              % (USAGE, " ".join(rest)), file=sys.stderr)
        raise SystemExit(2)
    return [(agent, rest) for agent in agents or list(TABLES)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    failed = []
    for agent, arguments in plan(sys.argv[1:] if argv is None else argv):
        print("== %s table: %s %s" % (agent, TABLES[agent], " ".join(arguments)), flush=True)
        try:
            importlib.import_module(TABLES[agent]).main(arguments)
        except SystemExit as exited:
            if exited.code not in (None, 0):
                failed.append(agent)
        except Exception:  # noqa: BLE001  one table's failure must not lose the other's
            traceback.print_exc()
            failed.append(agent)
    if failed:
        print("failed: %s" % ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
