"""REDIS_URL beyond one server: Sentinel and Cluster URLs, and what only those topologies need.

The conformance suite runs on both topologies already (the `backend` fixture);
these tests cover the URL forms, the no-resend rule on every topology, scripts
and hand-overs to parked workers across cluster nodes, and one prefix living on one node.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis
from structlog.testing import capture_logs

from task_queue import client as client_module
from task_queue._clock import ManualClock
from task_queue.backends.redis import OWN_CALL_TASKS, RedisBackend
from task_queue.backends.redis_connect import (
    RedisAddress,
    RedisConnection,
    _HiredisConnection,
    connect,
    parse_redis_url,
    redacted,
)
from task_queue.client import AsyncClient
from task_queue.errors import BackendUnavailable, ConfigError
from task_queue.task import Task, TaskStatus
from tests.backends.parking import park
from tests.backends.redis_server import RedisServer
from tests.backends.redis_topologies import RedisCluster, RedisSentinel
from tests.local import wait_for

LEASE = 30.0


def make(clock: ManualClock) -> Task:
    return Task.new("noop", {}, now=clock.now())


# URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://s1:26379,s2/mymaster/2",
            RedisAddress(
                "redis+sentinel://s1:26379,s2/mymaster/2",
                "sentinel",
                nodes=(("s1", 26379), ("s2", 26379)),
                service="mymaster",
                db=2,
            ),
        ),
        (
            "rediss+sentinel://app:p%40ss@[::1]:5000/cache?sentinel_password=s3cret",
            RedisAddress(
                "rediss+sentinel://app:p%40ss@[::1]:5000/cache?sentinel_password=s3cret",
                "sentinel",
                tls=True,
                nodes=(("::1", 5000),),
                username="app",
                password="p@ss",
                service="cache",
                sentinel_auth={"password": "s3cret"},
            ),
        ),
        (
            "redis+cluster://:pw@n1:7000,n2:7001,n3",
            RedisAddress(
                "redis+cluster://:pw@n1:7000,n2:7001,n3",
                "cluster",
                nodes=(("n1", 7000), ("n2", 7001), ("n3", 6379)),
                password="pw",
            ),
        ),
        (
            "rediss+cluster://n1:7000/0",
            RedisAddress("rediss+cluster://n1:7000/0", "cluster", tls=True, nodes=(("n1", 7000),)),
        ),
        ("redis://localhost:6379/0", RedisAddress("redis://localhost:6379/0", "server")),
        ("rediss://:pw@cache:6380/1", RedisAddress("rediss://:pw@cache:6380/1", "server", True)),
        ("unix:///run/redis.sock?db=1", RedisAddress("unix:///run/redis.sock?db=1", "server")),
    ],
)
def test_each_url_form_names_its_topology_nodes_and_credentials(
    url: str, expected: RedisAddress
) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://localhost:6379", "unknown scheme 'http'"),
        ("localhost:6379", "unknown scheme ''"),
        ("redis+sentinel://s1:26379", "service name is missing"),
        ("redis+sentinel://s1:26379/", "service name is missing"),
        ("redis+sentinel://s1:26379/mymaster/zero", "database 'zero' is not a number"),
        ("redis+sentinel://s1:26379/mymaster/0/extra", "nothing after"),
        ("redis+sentinel:///mymaster", "no host:port given"),
        ("redis+sentinel://s1:port/mymaster", "port 'port' of s1"),
        ("redis+cluster://n1:70000", "port '70000' of n1"),
        ("redis+cluster://n1:7000,:7001", "host missing"),
        ("redis+cluster://n1:7000/3", "database 0 only"),
        ("redis+cluster://n1:7000?socket_timeout=1", "unknown option 'socket_timeout'"),
        ("redis://localhost:port/0", "Port could not be cast"),
    ],
)
def test_unusable_url_is_a_config_error_naming_redis_url(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_redis_url(url)
    assert str(error.value).startswith("REDIS_URL=")
    assert says in str(error.value)


def test_passwords_never_reach_an_error_message() -> None:
    url = "redis+cluster://app:hunter2@n1:7000/9"
    with pytest.raises(ConfigError) as error:
        parse_redis_url(url)
    assert "hunter2" not in str(error.value)
    shown = redacted("redis+sentinel://:pw@s1/m?sentinel_password=pw2&sentinel_username=u")
    assert shown == "redis+sentinel://:***@s1/m?sentinel_password=***&sentinel_username=u"


# Every topology -----------------------------------------------------------------------


@pytest.fixture(params=["cluster", "sentinel"])
def topology_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"redis_{request.param}").url
    return url


@pytest.fixture
async def topology_backend(topology_url: str, clock: ManualClock) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(topology_url, clock=clock, prefix=f"t-{uuid.uuid4().hex}")
    await backend.open()
    yield backend
    await backend.close()


@pytest.fixture(params=["redis_server", "redis_cluster", "redis_sentinel"])
async def connection(request: pytest.FixtureRequest) -> AsyncIterator[RedisConnection]:
    """A client for each topology's URL (its `address.topology` says which)."""
    server: RedisServer | RedisCluster | RedisSentinel = request.getfixturevalue(request.param)
    connection = connect(server.url)
    yield connection
    await connection.aclose()


async def test_no_topology_lets_redis_py_send_a_command_again(connection: RedisConnection) -> None:
    await connection.open()
    client = connection.client
    if connection.address.topology == "cluster":
        retry = client.retry  # the cluster's own loop, around every node's connection
    else:
        retry = client.connection_pool.connection_kwargs["retry"]
    assert retry.get_retries() == 0


async def test_every_topology_packs_commands_with_hiredis(connection: RedisConnection) -> None:
    """redis-py's asyncio connections pack in Python, a microsecond per argument."""
    client = connection.client
    await client.set("{packed}:k", "v")  # the cluster learns its nodes
    assert await client.get("{packed}:k") == "v"
    if connection.address.topology == "cluster":
        classes = [node.connection_class for node in client.get_nodes()]
    else:
        classes = [client.connection_pool.connection_class]
    assert classes
    assert all(issubclass(c, _HiredisConnection) for c in classes)


async def test_scripts_flushed_from_every_server_are_loaded_again(
    topology_url: str, topology_backend: RedisBackend, clock: ManualClock
) -> None:
    def flush_scripts() -> None:
        for port in _data_ports(topology_url):
            with redis.Redis(port=port) as node:
                node.script_flush()

    # Each way a script call is sent loads the script again after a NOSCRIPT:
    # a big submit on its own (AsyncScript), ...
    flush_scripts()
    big = await topology_backend.enqueue([make(clock) for _ in range(OWN_CALL_TASKS)])
    assert all(s.created for s in big)
    # ... the calls of one tick in a pipeline (a cluster pipeline on a cluster), ...
    flush_scripts()
    submitted, leased = await asyncio.gather(
        topology_backend.enqueue([make(clock)]),
        topology_backend.dequeue(["default"], 3, worker_id="w", lease_seconds=LEASE),
    )
    assert submitted[0].created
    assert [t.status for t in leased] == [TaskStatus.RUNNING] * 3
    # ... and a call alone in its tick, as a plain EVALSHA.
    flush_scripts()
    [alone] = await topology_backend.dequeue(["default"], 1, worker_id="w", lease_seconds=LEASE)
    assert alone.status is TaskStatus.RUNNING


def _role(port: int) -> str:
    with redis.Redis(port=port, decode_responses=True) as node:
        return str(node.info("replication")["role"])


def _data_ports(url: str) -> list[int]:
    """The redis-server ports holding data behind a test URL (not the sentinel's)."""
    address = parse_redis_url(url)
    if address.topology == "cluster":
        return [port for _, port in address.nodes]
    with redis.Redis(port=address.nodes[0][1], decode_responses=True) as sentinel:
        _, port = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", address.service)
    return [int(port)]


@pytest.mark.parametrize("topology_url", ["server", "cluster", "sentinel"], indirect=True)
async def test_a_parked_worker_is_handed_the_task_leased_by_the_submit_itself(
    topology_url: str, topology_backend: RedisBackend, clock: ManualClock
) -> None:
    submitter = RedisBackend(topology_url, clock=clock, prefix=topology_backend.prefix)
    await submitter.open()
    try:
        waiting = await park(topology_backend, "w")
        [submitted] = await submitter.enqueue([make(clock)])
        [handed] = await asyncio.wait_for(waiting, 5)
    finally:
        await submitter.close()
    assert handed.id == submitted.task.id
    assert (handed.status, handed.attempts, handed.worker_id) == (TaskStatus.RUNNING, 1, "w")
    assert handed.lease_expires_at == pytest.approx(clock.now() + LEASE)
    assert await topology_backend.get(handed.id) == handed
    done = handed.completed({"ok": 1}, clock.now())
    await topology_backend.finish(done, handed.lease_token or "")
    assert (await topology_backend.get(handed.id)).status is TaskStatus.COMPLETED


@pytest.mark.parametrize("topology_url", ["server", "cluster", "sentinel"], indirect=True)
async def test_a_wait_hears_a_finish_made_through_another_connection(
    topology_url: str,
    topology_backend: RedisBackend,
    clock: ManualClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a minute between reads, only the notice on P..finals ends the wait."""
    monkeypatch.setattr(client_module, "WAIT_POLL", (60.0, 60.0))
    worker = RedisBackend(topology_url, clock=clock, prefix=topology_backend.prefix)
    await worker.open()
    watcher = connect(topology_url)
    await watcher.open()
    try:
        [submitted] = await worker.enqueue([make(clock)])
        waiting = asyncio.create_task(AsyncClient(topology_backend).wait(submitted.task.id, 50))
        server = await watcher.server_for(f"{{{topology_backend.prefix}}}:counts")
        async with asyncio.timeout(10):  # until the waiter's subscription is on
            while True:
                if (await server.pubsub_numsub(f"{{{topology_backend.prefix}}}:finals"))[0][1]:
                    break
                await asyncio.sleep(0.01)
        [leased] = await worker.dequeue([], 1, worker_id="w", lease_seconds=LEASE)
        await worker.finish(leased.completed(None, clock.now()), leased.lease_token or "")
        assert (await asyncio.wait_for(waiting, 30)).status is TaskStatus.COMPLETED
    finally:
        await worker.close()
        await watcher.aclose()


async def test_start_up_reads_the_persistence_settings_of_the_server_holding_the_prefix(
    topology_url: str, clock: ManualClock
) -> None:
    backend = RedisBackend(topology_url, clock=clock, prefix=f"t-{uuid.uuid4().hex}")
    with capture_logs() as logs:
        await backend.open()
    try:
        assert any("appendonly" in entry["event"] for entry in logs)
        assert (await backend.ping())["version"]
    finally:
        await backend.close()


# Cluster ------------------------------------------------------------------------------


async def test_each_prefix_lives_on_one_cluster_node_and_prefixes_spread_over_all(
    redis_cluster: RedisCluster, clock: ManualClock
) -> None:
    prefixes = [f"spread-{uuid.uuid4().hex}" for _ in range(24)]
    for prefix in prefixes:
        backend = RedisBackend(redis_cluster.url, clock=clock, prefix=prefix)
        await backend.open()
        try:
            await backend.enqueue([make(clock)])
        finally:
            await backend.close()

    nodes_of: defaultdict[str, set[int]] = defaultdict(set)
    for port in redis_cluster.ports:
        with redis.Redis(port=port, decode_responses=True) as node:
            for key in node.scan_iter(match="{spread-*"):
                nodes_of[key[1 : key.index("}")]].add(port)
    assert set(nodes_of) == set(prefixes)
    assert all(len(ports) == 1 for ports in nodes_of.values())
    # 24 random prefixes all on one of three nodes: about 1 in 10^11.
    assert set().union(*nodes_of.values()) == set(redis_cluster.ports)


async def test_cluster_that_lost_a_primary_is_unavailable_to_every_prefix(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Refused connections, then CLUSTERDOWN on the surviving nodes: both are BackendUnavailable
    (503, a worker's later try), never an error that escapes as a bug."""
    cluster = RedisCluster(tmp_path, node_timeout_ms=500)
    backends: dict[int, RedisBackend] = {}
    try:
        while len(backends) < 2:  # one prefix on the node to lose, one on a survivor
            backend = RedisBackend(cluster.url, clock=clock, prefix=f"t-{uuid.uuid4().hex}")
            await backend.open()
            port = (await backend._server()).connection_pool.connection_kwargs["port"]
            if port in cluster.ports[:2] and port not in backends:
                backends[port] = backend
            else:
                await backend.close()
        lost, survivor = cluster.ports[0], cluster.ports[1]
        cluster.processes[0].kill()
        cluster.processes[0].wait()

        with pytest.raises(BackendUnavailable):
            await backends[lost].enqueue([make(clock)])
        wait_for(lambda: cluster.state(survivor) == "fail", 10, "the survivors to see CLUSTERDOWN")
        for backend in backends.values():
            with pytest.raises(BackendUnavailable):
                await backend.enqueue([make(clock)])
            with pytest.raises(BackendUnavailable):
                await backend.dequeue(["default"], 1, worker_id="w", lease_seconds=LEASE)
    finally:
        for backend in backends.values():
            await backend.close()
        cluster.stop()


# Sentinel -----------------------------------------------------------------------------


@pytest.mark.parametrize("sentinel_link", ["kept", "cut"])
async def test_after_a_sentinel_failover_the_backend_works_on_the_new_primary(
    tmp_path: Path, clock: ManualClock, sentinel_link: str
) -> None:
    """The old primary accepts writes until the sentinel demotes it, seconds after the
    switch, and loses them then. At the sentinel's announcement calls in flight there
    fail (BackendUnavailable, never resent); the next ones reach the promoted replica,
    and parked workers are handed tasks again. A backend whose link to the sentinel
    broke listens again by itself."""
    sentinel = RedisSentinel(tmp_path, replica=True)
    old_primary = sentinel.primary_port()
    worker = RedisBackend(sentinel.url, clock=clock, prefix="failover")
    submitter = RedisBackend(sentinel.url, clock=clock, prefix="failover")
    try:
        await worker.open()
        await submitter.open()
        [before] = await submitter.enqueue([make(clock)])
        in_flight = await park(worker, "idle", queues=["elsewhere"])
        with capture_logs() as logs:
            if sentinel_link == "cut":
                sentinel.cut_subscribers()
            promoted = sentinel.failover()
            with pytest.raises(BackendUnavailable):
                await asyncio.wait_for(in_flight, 30)
            assert _role(old_primary) == "master"  # ended by the switch, not by the demotion
            # Each backend hears of the switch on its own: the submitter may hear it after
            # the worker, most of all when its link was cut, and until then it writes to
            # the old primary (the loss window docs/reliability.md names).
            for _ in range(3000):
                if sum("new primary" in entry["event"] for entry in logs) == 2:
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the submitter never heard of the new primary")

        async def enqueue_once_reachable() -> Task:
            for _ in range(100):
                try:
                    [submitted] = await submitter.enqueue([make(clock)])
                    return submitted.task
                except BackendUnavailable:
                    await asyncio.sleep(0.05)  # the sentinel's news reaches each backend
            raise AssertionError("no submit reached the new primary")

        after = await enqueue_once_reachable()
        with redis.Redis(port=promoted) as new_primary:
            assert new_primary.exists(f"{{failover}}:task:{after.id}")
        assert (await submitter.ping())["version"]
        assert sentinel.primary_port() == promoted
        leased = await worker.dequeue(["default"], 5, worker_id="w", lease_seconds=LEASE)
        assert {t.id for t in leased} == {before.task.id, after.id}
        waiting = await park(worker, "w")
        handed = await enqueue_once_reachable()
        assert [t.id for t in await asyncio.wait_for(waiting, 5)] == [handed.id]
    finally:
        await worker.close()
        await submitter.close()
        sentinel.stop()
