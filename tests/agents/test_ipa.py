"""ironic-python-agent 13.0.0's own download code with rawfetch adopted as docs/ironic.md
says, against the fault server: on the agent's file path (_download_image) and its raw
stream onto a loop device (_stream_raw_image_onto_device). Each run asserts the bytes
on disk by digest, the exception class the agent's caller sees, and the requests the
server saw (tests/agents/ipa_scenarios.py)."""
from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Iterator

import pytest

from tests.agents import ipa_env
from tests.agents.ipa_scenarios import BODY, BY_NAME, OLD_DISK, SCENARIOS, check
from tests.faultserver import FaultServer
from tests.ironic_origin import image_origin

# the first test also builds the venv from PyPI (cold: pip's downloads), hence 300 s;
# every agent run inside is bounded by ipa_env.RUN_TIMEOUT
pytestmark = [pytest.mark.agents, pytest.mark.timeout(300)]


@pytest.fixture(scope="session")
def ipa_python() -> Path:
    return ipa_env.ipa_python()


@pytest.fixture
def origin() -> Iterator[FaultServer]:
    with image_origin(BODY) as srv:
        yield srv


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A 4 MiB loop device full of old bytes (a disk with a previous install)."""
    if not ipa_env.can_loop():
        pytest.skip("a loop device needs root and losetup")
    with ipa_env.loop_device(tmp_path / "disk.img", OLD_DISK) as device:
        yield device


def adopted(result: dict) -> None:
    """rawfetch really ran inside the agent, and its error class is in the agent's text."""
    assert result["rawfetch_loaded"], "the adoption step did not load rawfetch"
    assert result["error"] is None or "rawfetch " in result["message"], result["message"]


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_file_path(name: str, ipa_python: Path, origin: FaultServer, tmp_path: Path) -> None:
    scenario = BY_NAME[name]
    case = scenario.setup(origin)
    work = tmp_path / "agent"
    result = ipa_env.run_agent(ipa_python, work, rawfetch=True, image_info=case.image_info,
                               conf=case.conf)
    adopted(result)
    check(scenario, origin, result, str(work / case.image_info["id"]), device=False)


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_loop_device(name: str, ipa_python: Path, origin: FaultServer, tmp_path: Path,
                     loop_device: str) -> None:
    scenario = BY_NAME[name]
    case = scenario.setup(origin)
    tail = open(loop_device, "rb").read()[len(BODY):]
    result = ipa_env.run_agent(ipa_python, tmp_path / "agent", rawfetch=True,
                               image_info=case.image_info, conf=case.conf, device=loop_device)
    adopted(result)
    check(scenario, origin, result, loop_device, device=True)
    with open(loop_device, "rb") as disk:
        assert disk.read()[len(BODY):] == tail, "bytes past the image were touched"


def code_lines(text: str) -> list:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_the_adoption_step_is_the_documented_one() -> None:
    """The tier adopts rawfetch with exactly the lines README and docs/ironic.md give."""
    source = inspect.getsource(ipa_env.adopt_rawfetch)
    body = code_lines(source.split('"""')[2])
    for doc in ("README.md", "docs/ironic.md"):
        text = (ipa_env.WORKTREE / doc).read_text()
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
        adoption = [b for b in blocks if "standby.ImageDownload =" in b]
        assert len(adoption) == 1 and code_lines(adoption[0]) == body, doc
