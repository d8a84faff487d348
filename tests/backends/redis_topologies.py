"""A real 3-node Redis Cluster and a real Sentinel with its primary, for the whole test session.

Like `redis_server`: real redis-server processes on free loopback ports, no
persistence, stopped at teardown. Tests keep apart by key prefix; with a fresh
prefix per test, prefixes land on the slots of all three cluster nodes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.backends.redis_server import (
    REDIS_SERVER,
    START_TIMEOUT,
    RedisServer,
    free_port,
    in_temporary_dir,
)
from tests.debian import require
from tests.local import wait_for

REDIS_CLI = "/usr/bin/redis-cli"
SENTINEL_SERVICE = "mymaster"


def _wait(check: Callable[[], bool], what: str) -> None:
    """Poll a server that may still refuse connections: an error is "not yet"."""
    wait_for(check, START_TIMEOUT, what, ignoring=(redis.RedisError,))


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _start(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [REDIS_SERVER, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


class RedisCluster:
    """Three primaries sharing the 16384 slots; `url` is a redis+cluster:// URL naming them all."""

    def __init__(self, workdir: Path, size: int = 3, node_timeout_ms: int = 15_000) -> None:
        _needs_redis()  # here, not in a fixture: tests build clusters of their own too
        self.ports = [free_port() for _ in range(size)]
        self.processes: list[subprocess.Popen[bytes]] = []
        for port in self.ports:
            self.processes.append(
                _start(
                    "--port", str(port),
                    "--cluster-port", str(free_port()),  # not port + 10000, which may be > 65535
                    "--bind", "127.0.0.1",
                    "--cluster-enabled", "yes",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                    "--appendonly", "no",
                    "--save", "",
                    "--dir", str(workdir),
                )
            )  # fmt: skip
        self.url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)
        try:
            for port in self.ports:
                _wait(lambda port=port: self._answers(port), f"node {port}")
            nodes = [f"127.0.0.1:{p}" for p in self.ports]
            create = ["--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"]
            subprocess.run(
                [REDIS_CLI, *create],
                check=True,
                capture_output=True,
                timeout=START_TIMEOUT,
            )
            for port in self.ports:
                _wait(lambda port=port: self._state_ok(port), f"cluster_state:ok on {port}")
        except BaseException:
            self.stop()
            raise

    def _node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, decode_responses=True, socket_timeout=1)

    def _answers(self, port: int) -> bool:
        with self._node(port) as node:
            return bool(node.ping())

    def state(self, port: int) -> str:
        """`ok`, or `fail` once the nodes agree that a slot has no primary."""
        with self._node(port) as node:
            info: dict[str, str] = node.execute_command("CLUSTER INFO")  # parsed by redis-py
            return info["cluster_state"]

    def _state_ok(self, port: int) -> bool:
        return self.state(port) == "ok"

    def stop(self) -> None:
        for process in self.processes:
            _stop(process)


class RedisSentinel:
    """A primary and one sentinel watching it as `mymaster`; `url` is a redis+sentinel:// URL.

    With `replica`, a replica too, so `failover()` can promote it.
    """

    def __init__(self, workdir: Path, *, replica: bool = False) -> None:
        _needs_redis()
        self.primary = RedisServer(workdir)
        self.replicas: list[subprocess.Popen[bytes]] = []
        if replica:
            self._start_replica(workdir / "replica")
        self.port = free_port()
        config = workdir / "sentinel.conf"  # sentinel rewrites its config: a file of its own
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.primary.port} 1\n"
        )
        self.process = _start(str(config), "--sentinel")
        self.url = f"redis+sentinel://127.0.0.1:{self.port}/{SENTINEL_SERVICE}/0"
        try:
            _wait(self._knows_primary, "the sentinel to report the primary")
        except BaseException:
            self.stop()
            raise

    def _start_replica(self, workdir: Path) -> None:
        workdir.mkdir()
        with redis.Redis(port=self.primary.port) as primary:
            primary.config_set("repl-diskless-sync-delay", 0)  # 5 s by default
        port = free_port()
        self.replicas.append(
            _start(
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--replicaof", "127.0.0.1", str(self.primary.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
            )
        )  # fmt: skip

        def in_sync() -> bool:
            with redis.Redis(port=port, decode_responses=True, socket_timeout=1) as node:
                return node.info("replication").get("master_link_status") == "up"

        _wait(in_sync, "the replica to sync")

    def primary_port(self) -> int:
        with redis.Redis(port=self.port, decode_responses=True, socket_timeout=1) as sentinel:
            _, port = sentinel.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
        return int(port)

    def failover(self) -> int:
        """Promote the replica; its port, once the sentinel names it the primary.

        Every write made before is on the replica first (WAIT): the tests are of
        the clients, not of asynchronous replication's loss window.
        """
        before = self.primary_port()
        with redis.Redis(port=before) as primary:
            primary.set("sentinel-test:replicated", 1)  # WAIT waits for this client's writes
            if primary.wait(1, 10_000) != 1:
                raise AssertionError("the replica did not acknowledge the writes so far")

        def started() -> bool:
            with redis.Redis(port=self.port, socket_timeout=1) as sentinel:
                try:
                    return bool(sentinel.execute_command("SENTINEL FAILOVER", SENTINEL_SERVICE))
                except redis.ResponseError as exc:
                    if "NOGOODSLAVE" in str(exc):  # the sentinel has not vetted the replica yet
                        return False
                    raise

        _wait(started, "the sentinel to start a failover")
        _wait(lambda: self.primary_port() != before, "the sentinel to name a new primary")
        return self.primary_port()

    def cut_subscribers(self) -> None:
        """Close every connection subscribed to the sentinel's announcements."""
        with redis.Redis(port=self.port, socket_timeout=1) as sentinel:
            if not sentinel.execute_command("CLIENT KILL", "TYPE", "pubsub"):
                raise AssertionError("nobody was subscribed to the sentinel")

    def _knows_primary(self) -> bool:
        with redis.Redis(port=self.port, decode_responses=True, socket_timeout=1) as sentinel:
            # Not sentinel_master(): on a plain client it passes an option its parser refuses.
            state = sentinel.execute_command("SENTINEL MASTER", SENTINEL_SERVICE)
        return bool(state["is_master"]) and not state["is_sdown"]

    def stop(self) -> None:
        _stop(self.process)
        for replica in self.replicas:
            _stop(replica)
        self.primary.stop()


def _needs_redis() -> None:
    require(REDIS_SERVER, "redis-server")
    require(REDIS_CLI, "redis-tools")


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A 3-node Redis Cluster for the whole test session; tests keep apart by key prefix."""
    with in_temporary_dir("tq-redis-cluster-", RedisCluster) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A primary behind one sentinel for the whole test session; tests keep apart by prefix."""
    with in_temporary_dir("tq-redis-sentinel-", RedisSentinel) as sentinel:
        yield sentinel
