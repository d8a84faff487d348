"""The rate limit's shared buckets: one Lua script, Redis's clock, keys that expire."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from task_queue.backends.redis import RedisBackend
from tests.backends.redis_server import RedisServer


@pytest.fixture(params=["redis_server", "redis_cluster"])
async def backends(request: pytest.FixtureRequest) -> AsyncIterator[list[RedisBackend]]:
    """Two backends on one prefix of a real Redis: two API processes' view of it."""
    url: str = request.getfixturevalue(request.param).url
    prefix = f"t-{uuid.uuid4().hex}"
    pair = [RedisBackend(url, prefix=prefix), RedisBackend(url, prefix=prefix)]
    for backend in pair:
        await backend.open()
    yield pair
    for backend in pair:
        await backend.close()


async def test_a_burst_is_shared_by_every_backend_on_the_prefix(
    backends: list[RedisBackend],
) -> None:
    # 0.01 tokens a second: nothing refills during the test.
    first, second = backends
    answers = [await b.take_token("ip:a", 0.01, 10.0) for b in (first, second) * 6]
    assert [taken for taken, _, _ in answers] == [True] * 10 + [False] * 2
    assert [round(tokens) for _, tokens, _ in answers[:10]] == list(range(9, -1, -1))
    _, tokens, wait = answers[-1]
    assert wait == pytest.approx((1 - tokens) / 0.01)


async def test_calls_of_one_tick_each_take_their_own_token(backends: list[RedisBackend]) -> None:
    answers = await asyncio.gather(*(backends[0].take_token("ip:b", 0.01, 5.0) for _ in range(8)))
    assert sorted(taken for taken, _, _ in answers) == [False] * 3 + [True] * 5


async def test_tokens_refill_by_redis_time(backends: list[RedisBackend]) -> None:
    first, _ = backends
    assert [(await first.take_token("ip:c", 50.0, 1.0))[0] for _ in range(2)] == [True, False]
    _, _, wait = await first.take_token("ip:c", 50.0, 1.0)
    await asyncio.sleep(wait + 0.01)  # Redis's clock cannot be moved: 20 ms of it
    assert (await first.take_token("ip:c", 50.0, 1.0))[0]


async def redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def test_a_bucket_key_expires_once_it_would_be_full(redis_server: RedisServer) -> None:
    prefix = f"t-{uuid.uuid4().hex}"
    backend = RedisBackend(redis_server.url, prefix=prefix)
    async with aioredis.Redis.from_url(redis_server.url) as client:
        await backend.open()
        try:
            before = await redis_ms(client)
            await backend.take_token("key:abc", 10.0, 20.0)
            after = await redis_ms(client)
        finally:
            await backend.close()
        expires = await client.execute_command("PEXPIRETIME", f"{{{prefix}}}:rate:key:abc")
    # One token short of full at 10/s, plus a second's margin, from the script's TIME.
    assert before + 1100 <= expires <= after + 1100
