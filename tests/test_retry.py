"""retry.Budget.decide: the one answer after a failed attempt -- retry here (after a
backoff that ends before max_time), hand over to mirror M, or give up. Sans-IO: no
sleeps, no sockets; the end-to-end behaviour is in test_resume/test_rack/test_storm."""
from __future__ import annotations

import pytest

from rawfetch import errors as E
from rawfetch.mirrors import MirrorSet
from rawfetch.options import Options
from rawfetch.retry import (GIVE_UP, HAND_OVER, MAX_RETRY_AFTER, RETRY, Budget,
                            FINAL_ERRORS, share)

A, B, C = "http://a/img", "http://b/img", "http://c/img"


def budget(**options) -> Budget:
    return Budget(Options(**{"retry_jitter": False, "retry_delay": 1.0,
                             "retry_max_delay": 8.0, **options}))


def fail(job: Budget, mirrors: MirrorSet, error: E.FetchError):
    """One attempt that failed with `error`: recorded, then decided."""
    job.count += 1
    job.record(error, 0, 0)
    return job.decide(error, mirrors)


def reset() -> E.FetchError:
    return E.ReceiveError("connection reset")


@pytest.mark.parametrize("final", FINAL_ERRORS + (E.DeadlineExceeded,))
def test_a_final_error_gives_up_at_once_even_with_mirrors_and_retries_left(final):
    mirrors = MirrorSet(A, [B, C])
    decision = fail(budget(retries=10), mirrors, final("final", retryable=True))
    assert decision.action == GIVE_UP and decision.note == ""
    assert mirrors.current == A


def test_a_transient_failure_retries_here_with_an_exponential_capped_backoff():
    job, mirrors = budget(retries=10), MirrorSet(A)
    delays = [fail(job, mirrors, reset()) for _ in range(6)]
    assert [d.action for d in delays] == [RETRY] * 6
    assert [d.delay for d in delays] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert mirrors.current == A


def test_jitter_stays_under_the_ceiling():
    job, mirrors = budget(retries=50, retry_jitter=True), MirrorSet(A)
    delays = [fail(job, mirrors, reset()).delay for _ in range(40)]
    assert all(0.0 <= d <= 8.0 for d in delays) and len(set(delays)) > 1


def test_retry_after_is_a_floor_capped_at_two_minutes():
    job, mirrors = budget(retries=3), MirrorSet(A)
    told = E.HTTPStatusError("HTTP 503", status=503, retry_after=10 * 3600)
    decision = fail(job, mirrors, told)
    assert decision.action == RETRY and decision.delay == MAX_RETRY_AFTER   # + no jitter


def test_no_backoff_past_max_time_gives_up_saying_why():
    job, mirrors = budget(retries=10, retry_delay=30.0, retry_max_delay=30.0,
                          max_time=5.0), MirrorSet(A)
    decision = fail(job, mirrors, reset())
    assert decision.action == GIVE_UP
    assert "no time left for another attempt within max_time" in decision.note


def test_the_retries_spent_gives_up_counting_every_attempt():
    job, mirrors = budget(retries=2), MirrorSet(A)
    assert [fail(job, mirrors, reset()).action for _ in range(2)] == [RETRY, RETRY]
    decision = fail(job, mirrors, reset())
    assert decision.action == GIVE_UP and decision.note == " (gave up after 3 attempts)"


def test_a_mirror_that_failed_for_good_hands_over_at_once_and_never_comes_back():
    job, mirrors = budget(retries=10), MirrorSet(A, [B])
    not_found = E.HTTPStatusError("HTTP 404", status=404)
    decision = fail(job, mirrors, not_found)
    assert decision == (HAND_OVER, 0.0, B, "") and mirrors.current == B
    # B flaky for longer than its share: A is dead, so B stays and backs off
    for _ in range(share(10, 2) + 2):
        assert fail(job, mirrors, reset()).action == RETRY
    assert mirrors.current == B
    assert fail(job, mirrors, E.HTTPStatusError("HTTP 404", status=404)).action == GIVE_UP


def test_a_flaky_mirror_hands_over_after_its_share_and_the_turn_wraps_around():
    job, mirrors = budget(retries=5), MirrorSet(A, [B, C])   # share: (5 + 1) // 3 = 2
    actions = [(fail(job, mirrors, reset()).action, mirrors.current) for _ in range(6)]
    assert actions == [(RETRY, A), (HAND_OVER, B), (RETRY, B), (HAND_OVER, C),
                       (RETRY, C), (GIVE_UP, C)]


def test_no_handover_once_the_budget_is_spent():
    job, mirrors = budget(retries=0), MirrorSet(A, [B])
    decision = fail(job, mirrors, reset())
    assert decision.action == GIVE_UP and mirrors.current == A
