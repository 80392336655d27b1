"""fuel-agent 11.0.0 from PyPI, switched to rawfetch with the one line docs/fuel.md gives,
driven through its own Chain / Manager.do_copyimage() against the fault server: the bytes
on the target, the exception class fuel-agent's caller sees, the requests the server saw.
The venv is built once per session (tests/agents/fuel_env.py); the stock-vs-rawfetch table
in docs/fuel.md comes from `python3 -m tests.agents.fuel_table`."""
from __future__ import annotations

import os

import pytest

from tests.agents.fuel_env import (ADOPTION_LINE, BY_NAME, ON_LOOP_DEVICE, ROOT, SCENARIOS,
                                   eio_device, fuel_python, loop_device, problems, run,
                                   zero_device)

pytestmark = [pytest.mark.agents, pytest.mark.timeout(400)]  # the first test builds the venv
__all__ = ["eio_device", "fuel_python", "loop_device"]   # fixtures, used by name below

# INFO lines a job may add to fuel-agent's log: a few per attempt (measured: 4 for a
# clean job, 5-7 per retry), never per second of transfer.
INFO_LINES_PER_ATTEMPT = 8


@pytest.mark.parametrize("name", [scenario.name for scenario in SCENARIOS])
def test_fuel_agent_chain_onto_a_file(fuel_python, name, tmp_path):
    scenario = BY_NAME[name]
    outcome = run(fuel_python, scenario, "rawfetch", str(tmp_path / "disk.img"))
    assert outcome.result["httpurl"] == "rawfetch.compat.fuel.HttpUrl"
    assert problems(scenario, outcome) == []
    # attempts: those the server saw, or all allowed when connections were refused
    attempts = max(len(outcome.requests), scenario.conf["http_max_retries"] + 1)
    assert outcome.result["rawfetch_info_lines"] <= INFO_LINES_PER_ATTEMPT * attempts


@pytest.mark.parametrize("name", ON_LOOP_DEVICE)
def test_fuel_agent_do_copyimage_onto_a_loop_device(fuel_python, loop_device, name):
    scenario = BY_NAME[name]
    zero_device(loop_device)
    outcome = run(fuel_python, scenario, "rawfetch", loop_device, via="manager")
    assert problems(scenario, outcome) == []


def test_trickle_does_not_flood_the_agents_info_log(fuel_python, tmp_path):
    """progress events are DEBUG: a trickle that takes seconds adds a handful of INFO
    lines (connect, request, response, error, resume, done), not four a second."""
    scenario = BY_NAME["trickle 2 B/s, http_request_timeout=1"]
    outcome = run(fuel_python, scenario, "rawfetch", str(tmp_path / "disk.img"))
    assert problems(scenario, outcome) == []
    assert outcome.result["rawfetch_info_lines"] <= 15, outcome.result


def test_fsync_eio_on_the_device_fails_the_copy(fuel_python, eio_device):
    """A loop device whose backing tmpfs is full: writes are buffered, fsync answers EIO.
    Stock fuel-agent raises the OSError; with rawfetch the caller gets LocalWriteError
    (errno 5), never a silent success with a wrong disk."""
    scenario = BY_NAME["clean"]
    stock = run(fuel_python, scenario, "stock", eio_device, via="manager")
    assert stock.error_class == "OSError" and stock.result["errno"] == 5, stock.result
    outcome = run(fuel_python, scenario, "rawfetch", eio_device, via="manager")
    assert outcome.error_class == "LocalWriteError", outcome.result
    assert outcome.result["errno"] == 5 and "Input/output error" in outcome.result["message"]
    assert len(outcome.requests) == 1


def test_the_adoption_line_is_the_one_documented():
    with open(os.path.join(ROOT, "docs", "fuel.md"), encoding="utf-8") as handle:
        assert ADOPTION_LINE in handle.read()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        assert ADOPTION_LINE in handle.read()
