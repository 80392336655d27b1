"""The herd, CI size: 30 nodes at once in each mode of tools/herd.py, with what an operator
relies on asserted. The 200-node table in README "Operations notes" is `tools/herd.py`.

The herd runs on the virtual clock (tests/vclock.py): the origin's hold, the splay, the
rate limit and the busy master's Retry-After cost no real time, and every time the
tests read (completions, request times) is virtual. Squid is a real process: its mode
runs on the real clock, and so does the real-clock twin of the splay test (slow)."""
from __future__ import annotations

from typing import Callable, Dict

import pytest

from tools.herd import (HerdConfig, ModeResult, main, parse_mode, peak_burst, peak_rate,
                        percentile, run_mode)

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
CONFIG = HerdConfig(clients=30, size=1 * MiB, hold=0.3, splay=5.0, limit_rate=1 * MiB,
                    max_inflight=6)


@pytest.fixture(scope="module")
def herd_runs() -> Dict[str, ModeResult]:
    return {}


@pytest.fixture
def herd(herd_runs: Dict[str, ModeResult], vclock) -> Callable[[str], ModeResult]:
    """Each mode runs once per module (on the virtual clock of the first test that
    reads it), however many tests read its row."""
    return _runner(herd_runs, "")


@pytest.fixture
def real_herd(herd_runs: Dict[str, ModeResult]) -> Callable[[str], ModeResult]:
    """The same on the real clock (kept apart from the virtual runs)."""
    return _runner(herd_runs, "real ")


def _runner(results: Dict[str, ModeResult], clock: str) -> Callable[[str], ModeResult]:
    def run(mode: str) -> ModeResult:
        if clock + mode not in results:
            results[clock + mode] = run_mode(mode, CONFIG)
        if results[clock + mode].skipped:
            pytest.skip(results[clock + mode].skipped)
        return results[clock + mode]

    return run


@pytest.mark.parametrize("mode", ["direct", "splay", "limit", "hash"])
def test_every_node_is_byte_exact_and_costs_the_origin_one_copy(herd, mode):
    result = herd(mode)
    assert result.errors == [] and result.exact == CONFIG.clients
    assert result.origin_requests == CONFIG.clients
    assert result.origin_bytes == CONFIG.clients * CONFIG.size


@pytest.mark.squid
def test_through_squid_the_origin_serves_at_most_two_images(real_herd):
    result = real_herd("squid")
    assert result.errors == [] and result.exact == CONFIG.clients
    assert result.origin_bytes <= 2 * CONFIG.size, result
    assert result.origin_requests <= 2, result


def test_hash_spreads_the_nodes_over_both_mirrors(herd):
    result = herd("hash")
    assert sum(result.per_mirror) == CONFIG.clients
    for clients in result.per_mirror:
        assert 0.3 * CONFIG.clients <= clients <= 0.7 * CONFIG.clients, result.per_mirror


def test_splay_lowers_the_peak_at_the_origin(herd):
    """Released together, the nodes' requests overlap at the origin (each held 0.3 s);
    with a 5 s splay they arrive spread out."""
    _splay_lowers_the_peak(herd)
    splayed = herd("splay")       # virtual: every node waited within [0, splay)
    assert max(splayed.completions) < CONFIG.splay + 10 * CONFIG.hold, splayed


@pytest.mark.slow
def test_splay_lowers_the_peak_at_the_origin_real_clock(real_herd):
    _splay_lowers_the_peak(real_herd)


def _splay_lowers_the_peak(herd) -> None:
    direct, splayed = herd("direct"), herd("splay")
    assert splayed.exact == CONFIG.clients
    assert splayed.peak_concurrent < direct.peak_concurrent, (splayed, direct)
    assert splayed.first_wave < direct.first_wave


def test_limit_rate_paces_every_node(herd):
    """The bucket starts empty: no node can finish before size / rate (x 0.9 slack); on
    the virtual clock nothing but the pacing and the origin's hold takes time, so none
    finishes later than that plus the hold either."""
    result = herd("limit")
    assert result.exact == CONFIG.clients
    assert result.completions[0] >= 0.9 * CONFIG.size / CONFIG.limit_rate
    assert result.completions[-1] <= CONFIG.size / CONFIG.limit_rate + CONFIG.hold + 0.1


def test_a_busy_master_sheds_load_and_every_node_still_finishes(herd):
    result = herd("busy")
    assert result.exact == CONFIG.clients and result.errors == []
    assert result.peak_concurrent <= CONFIG.max_inflight     # it never served more
    assert result.busy_503 > 0
    assert result.origin_requests == CONFIG.clients + result.busy_503


def test_markdown_report_is_written(tmp_path, capsys):
    out = tmp_path / "herd.md"
    code = main(["--clients", "3", "--modes", "direct,hash", "--size", "64K",
                 "--hold", "0", "--markdown", str(out)])
    assert code == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| mode | clients | byte-exact |")
    assert rows[1].startswith("| direct | 3 | 3 | 3 | ")
    assert rows[2].startswith("| hash | 3 | 3 | 3 | ")
    assert capsys.readouterr().out.count("| direct | 3 | 3 |") == 1


def test_unknown_mode_is_refused():
    assert parse_mode("direct") == frozenset()
    assert parse_mode("squid+splay") == {"squid", "splay"}
    with pytest.raises(ValueError, match="unknown mode"):
        parse_mode("squid+fast")


def test_peak_burst_counts_the_highest_wave():
    assert peak_burst([0.0, 0.05, 0.09, 0.5, 0.55], window=0.1) == 3
    assert peak_burst([], window=0.1) == 0


def test_peak_rate_spreads_each_response_over_its_life():
    # 10 MiB over [0, 2) and 4 MiB over [1, 2): the second second carried 5 + 4 MiB
    assert peak_rate([(0.0, 2.0, 10 * MiB), (1.0, 2.0, 4 * MiB)], bucket=1.0) == 9 * MiB
    assert peak_rate([], bucket=1.0) == 0.0


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 201)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (100.0, 198.0)
    assert percentile([3.0], 0.99) == 3.0 and percentile([], 0.5) is None
