"""The caching tier of issue 11: 30 concurrent rawfetch commands, one 64 MiB object, one
squid with collapsed_forwarding. Every node ends byte-exact and the origin serves at most
two copies of the object (README "Operations notes" quotes the measured figure)."""
from __future__ import annotations

import pytest

from tests.squid.cachetier import MiB, measure

pytestmark = [pytest.mark.squid, pytest.mark.slow, pytest.mark.timeout(600)]

CLIENTS = 30
SIZE = 64 * MiB


def test_a_rack_through_one_squid_costs_the_origin_at_most_two_copies():
    stats = measure(CLIENTS, SIZE)
    assert stats["exit_codes"] == [0] * CLIENTS
    assert stats["exact"] == CLIENTS
    assert stats["origin_bytes"] <= 2 * SIZE, stats
    assert stats["origin_requests"] <= 2, stats
    collapsed = stats["squid_codes"].get("TCP_CF_MISS/200", 0)  # type: ignore[union-attr]
    assert collapsed >= CLIENTS - 2, stats          # joined the one fetch in flight
