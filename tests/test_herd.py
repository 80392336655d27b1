"""Herd behaviour: many nodes against one master that sheds load with 503 + Retry-After.
The full-size run (200 nodes) with its numbers is `python3 tools/herd.py` (README)."""
from __future__ import annotations

import pytest

from tools.herd import peak_burst, simulate

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("jitter", [True, False])
def test_every_node_finishes_byte_exact_against_a_busy_master(jitter):
    stats = simulate(clients=60, max_inflight=6, jitter=jitter, size=64 * 1024, hold=0.05)
    assert stats["exact"] == 60
    assert stats["peak_served"] <= 6          # the master never served more than it allowed
    assert stats["busy_503"] > 0 and stats["requests"] == 60 + stats["busy_503"]


def test_peak_burst_counts_the_highest_wave():
    assert peak_burst([0.0, 0.05, 0.09, 0.5, 0.55], window=0.1) == 3
    assert peak_burst([], window=0.1) == 0
