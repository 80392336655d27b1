"""The agents tier (marker `agents`): each agent is installed from PyPI into its own venv,
built once per version and cached under the temp dir, so one session (and later ones)
build it once. When pip cannot reach the index the tier skips, saying so; any other
install failure fails the test. Each agent brings its own fixtures (ipa_env.py,
fuel_env.py); this file holds only what they share: build_venv() and venv_or_skip()."""
from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import pytest

VENV_ROOT = Path(tempfile.gettempdir()) / "rawfetch-agent-venvs"
PIP_TIMEOUT = 600          # s; a cold install of an agent and its dependencies
# What pip prints when the index cannot be reached (DNS, refused, no route, proxy down,
# and the resolver's verdict when it saw no index at all).
OFFLINE_SIGNS = ("NewConnectionError", "Temporary failure in name resolution",
                 "Network is unreachable", "Max retries exceeded", "ProxyError",
                 "No matching distribution found", "Could not find a version that satisfies",
                 "ConnectTimeoutError", "ReadTimeoutError")


WRONG_PYTHON_SIGN = "require a different python version"   # pip's note on Requires-Python


class VenvUnavailable(Exception):
    """The agent cannot be installed here, for a reason outside the project: skip."""


class IndexUnreachable(VenvUnavailable):
    """pip could not reach the package index."""


class WrongPython(VenvUnavailable):
    """The pinned agent does not support this interpreter (its Requires-Python)."""


def build_venv(name: str, installs: Sequence[Sequence[str]]) -> Path:
    """The python of a venv named `name` holding `installs` (each one `pip install`
    argument list, run in order: e.g. [["--no-deps", "agent==1.0"], ["requests"]]).
    Cached by name, installs and this interpreter's version; concurrent builders wait
    on a lock instead of building twice."""
    spec = json.dumps([name, [list(args) for args in installs], sys.version_info[:2]])
    root = VENV_ROOT / ("%s-%s" % (name, hashlib.sha256(spec.encode()).hexdigest()[:12]))
    python = root / "bin" / "python"
    VENV_ROOT.mkdir(parents=True, exist_ok=True)
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / ".complete").exists():
            return python
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        for args in installs:
            _pip(python, args)
        (root / ".complete").write_text(spec)
    return python


def _pip(python: Path, args: Sequence[str]) -> None:
    command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
               *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT)
    if done.returncode == 0:
        return
    output = (done.stdout + done.stderr).strip()
    last = output.splitlines()[-1] if output else "(no output)"
    if WRONG_PYTHON_SIGN in output:
        raise WrongPython("pip install %s: not for Python %d.%d (%s)"
                          % (" ".join(args), sys.version_info[0], sys.version_info[1], last))
    if any(sign in output for sign in OFFLINE_SIGNS):
        raise IndexUnreachable("PyPI unreachable: pip install %s failed: %s"
                               % (" ".join(args), last))
    raise RuntimeError("pip install %s failed (exit %d):\n%s"
                       % (" ".join(args), done.returncode, output[-4000:]))


def venv_or_skip(name: str, installs: Sequence[Sequence[str]]) -> Path:
    """build_venv(), or skip the test with the reason when PyPI is unreachable (or the
    agent does not support this Python)."""
    try:
        return build_venv(name, installs)
    except VenvUnavailable as exc:
        pytest.skip(str(exc))
