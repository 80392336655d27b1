"""`python3 -m tests.agents.table`: one command for both agents' stock-vs-rawfetch tables.
The tables themselves take minutes and need the agents from PyPI (the agents tier); this
checks, without them, which table runs with which arguments, and that both docs name it."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.agents import fuel_table, ipa_table, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = "python3 -m tests.agents.table"


def test_no_agent_named_runs_both_tables_in_order():
    assert table.plan([]) == [("ipa", []), ("fuel", [])]
    assert table.plan(["fuel", "ipa", "fuel"]) == [("fuel", []), ("ipa", [])]


def test_options_after_one_agent_go_to_its_table():
    assert table.plan(["fuel", "--only", "clean", "--print"]) == [
        ("fuel", ["--only", "clean", "--print"])]
    fuel = fuel_table.parse_args(["--only", "clean", "--print"])
    assert fuel.only == ["clean"] and fuel.print
    ipa = ipa_table.parse_args(["--only", "clean", "--out", "x.md", "--timeout", "5"])
    assert ipa.only == ["clean"] and str(ipa.out) == "x.md" and ipa.timeout == 5


@pytest.mark.parametrize("argv", [["--only", "clean"], ["ipa", "fuel", "--print"]])
def test_options_without_exactly_one_agent_are_a_usage_error(argv, capsys):
    with pytest.raises(SystemExit) as exited:
        table.plan(argv)
    assert exited.value.code == 2 and "name ipa or fuel first" in capsys.readouterr().err


def test_an_unknown_fuel_scenario_is_refused_before_any_install():
    done = subprocess.run([sys.executable, "-m", "tests.agents.table", "fuel", "--only", "nope"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert done.returncode == 1
    assert "no scenario 'nope'" in done.stderr and "failed: fuel" in done.stderr


def test_both_docs_and_the_generators_name_the_one_command():
    for doc in ("agents-ironic.md", "fuel.md"):
        with open(os.path.join(ROOT, "docs", doc), encoding="utf-8") as handle:
            assert COMMAND + "`" in handle.read(), doc
    assert ipa_table.BOTH == fuel_table.BOTH == COMMAND
    assert "`%s` regenerates" % COMMAND in ipa_table.render([], 20.0)
