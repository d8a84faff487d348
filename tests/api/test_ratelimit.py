"""The token bucket's arithmetic, on a clock that moves only when told."""

from __future__ import annotations

import pytest

from task_queue._clock import ManualClock
from task_queue.api.ratelimit import Decision, Limit, TokenBuckets


def buckets(clock: ManualClock, rate: float = 10.0) -> TokenBuckets:
    return TokenBuckets(Limit(rate), now=clock.now)


def test_a_new_client_gets_a_burst_of_twice_the_rate_then_is_refused(clock: ManualClock) -> None:
    limiter = buckets(clock)
    taken = [limiter.take("ip:a").allowed for _ in range(25)]
    assert taken == [True] * 20 + [False] * 5


def test_tokens_come_back_at_the_rate_and_never_past_the_burst(clock: ManualClock) -> None:
    limiter = buckets(clock)
    for _ in range(20):
        limiter.take("ip:a")
    clock.advance(0.35)  # 3.5 tokens
    assert [limiter.take("ip:a").allowed for _ in range(4)] == [True, True, True, False]
    clock.advance(3600)
    assert limiter.take("ip:a").tokens == 19


def test_a_refusal_says_how_long_until_the_next_token(clock: ManualClock) -> None:
    limiter = buckets(clock, rate=4.0)
    for _ in range(8):
        limiter.take("ip:a")
    clock.advance(0.1)  # 0.4 of a token
    refused = limiter.take("ip:a")
    assert not refused.allowed
    assert refused.wait == pytest.approx(0.15)
    clock.advance(0.15)
    assert limiter.take("ip:a").allowed


def test_clients_have_buckets_of_their_own(clock: ManualClock) -> None:
    limiter = buckets(clock, rate=1.0)
    assert [limiter.take("ip:a").allowed for _ in range(3)] == [True, True, False]
    assert limiter.take("ip:b").allowed


def test_buckets_idle_long_enough_to_be_full_are_forgotten(clock: ManualClock) -> None:
    limiter = buckets(clock, rate=10.0)  # full again 2 s after the last take
    for client in ("ip:a", "ip:b", "ip:c"):
        limiter.take(client)
    clock.advance(1.5)
    limiter.take("ip:c")
    clock.advance(1.0)
    limiter.take("ip:d")
    assert len(limiter) == 2  # a and b were full; c was used 1 s ago
    assert limiter.take("ip:a").tokens == 19  # forgetting a full bucket changes nothing


def test_a_rate_under_one_half_still_lets_one_request_through(clock: ManualClock) -> None:
    limiter = buckets(clock, rate=0.2)
    assert [limiter.take("ip:a").allowed for _ in range(2)] == [True, False]
    clock.advance(5)
    assert limiter.take("ip:a").allowed


def test_headers_follow_the_draft_06_fields() -> None:
    limit = Limit(100.0)
    headers = dict(limit.headers(Decision(True, 149.6, 0.0)))
    assert headers == {
        b"ratelimit-limit": b"200",
        b"ratelimit-remaining": b"149",
        b"ratelimit-reset": b"1",  # 50.4 tokens to refill at 100/s
        b"ratelimit-policy": b"100;w=1;burst=200",
    }
    assert dict(Limit(0.5).headers(Decision(True, 0.0, 0.0)))[b"ratelimit-policy"] == (
        b"1;w=2;burst=1"
    )


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    limit = Limit(100.0)
    assert limit.retry_after(Decision(False, 0.99, 0.0001)) == 1
    assert limit.retry_after(Decision(False, -0.5, 2.2)) == 3
