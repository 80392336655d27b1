"""Run the real `rawfetch` command for the squid tier: exit code, stderr, events.

Why a subprocess: the tier checks what an operator's node does, environment variables
included; a run is killed at CLIENT_TIMEOUT so a hang is reported, never waited for.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional

from tests.realnet.netns import owner_env
from tests.realnet.servers import ROOT

PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY", "no_proxy", "NO_PROXY")
CLIENT_TIMEOUT = 120.0   # s; every client run is killed by then (a hang is a failure)


def client_env(env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """This checkout on PYTHONPATH, no proxy variables unless `env` sets them."""
    base = {k: v for k, v in os.environ.items() if k not in PROXY_VARIABLES}
    base.update(env or {})
    base.update(PYTHONPATH=ROOT, PYTHONDONTWRITEBYTECODE="1")
    return owner_env(base)


@dataclass
class Run:
    """One run of the real command: exit code, stderr and its --log-json events."""
    returncode: int
    stderr: str
    events: List[Dict[str, object]]

    def named(self, name: str) -> List[Dict[str, object]]:
        return [e for e in self.events if e["event"] == name]


def run_rawfetch(*args: str, env: Optional[Dict[str, str]] = None, log: str = "") -> Run:
    """`python3 -m rawfetch ARGS` with no proxy variables unless `env` sets them."""
    argv = [sys.executable, "-m", "rawfetch", *args] + (["--log-json", log] if log else [])
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          env=client_env(env), timeout=CLIENT_TIMEOUT)
    events = []
    if log and os.path.exists(log):
        with open(log) as handle:
            events = [json.loads(line) for line in handle if line.strip()]
    return Run(proc.returncode, proc.stderr.decode(errors="replace"), events)
