"""The suite's one set of timing options: short retries and bounded waits for tests.

Every value here is what a test may wait when nothing goes wrong on purpose; a test about
one timeout sets that timeout itself (`quick(idle_timeout=STALL_IDLE)`), so the bound it
asserts is visible beside the assertion. QUICK is for the API (request/open/download),
QUICK_ARGV the same for the command line. Both are read-only: a test cannot change them
for the next one.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Dict, List, Mapping

RETRY_DELAY = 0.01      # s; backoff base: a retry storm costs milliseconds, still backs off
RETRY_MAX_DELAY = 0.05  # s; backoff cap: ten retries stay well under a second
IDLE_TIMEOUT = 2.0      # s; loopback never idles this long unless the test stalls it
CONNECT_TIMEOUT = 2.0   # s; a loopback connect answers in microseconds or is refused
DNS_TIMEOUT = 2.0       # s; names here are pinned or "localhost"
STALL_IDLE = 0.3        # s; idle_timeout for tests that stall the server on purpose
CLI_IDLE_TIMEOUT = 1.0  # s; a subprocess runs on the real clock: a stray stall costs this

QUICK: Mapping[str, Any] = MappingProxyType(dict(
    retry_delay=RETRY_DELAY, retry_max_delay=RETRY_MAX_DELAY, idle_timeout=IDLE_TIMEOUT,
    connect_timeout=CONNECT_TIMEOUT, dns_timeout=DNS_TIMEOUT))


def quick(**overrides: Any) -> Dict[str, Any]:
    """QUICK with a test's own values on top (a fresh dict: safe to extend)."""
    return dict(QUICK, **overrides)


def argv(**overrides: Any) -> List[str]:
    """The command-line flags for quick(**overrides): `idle_timeout=0.3` -> `--idle-timeout 0.3`."""
    flags: List[str] = []
    for name, value in quick(**overrides).items():
        flags += ["--" + name.replace("_", "-"), "%g" % value]
    return flags


QUICK_ARGV = tuple(argv(idle_timeout=CLI_IDLE_TIMEOUT))

# On the virtual clock an elapsed time lands on the bound that ended the wait: a test
# asserts `bound - TICK <= elapsed < bound + STEP`. TICK is float rounding (virtual
# seconds are floats far from zero, jumps land on a binary grid at or after a deadline);
# STEP is far below every timeout here, so a timer that fired late or twice fails.
TICK = 1e-9
STEP = 0.01
