"""REDIS_URL to a client: one Redis server, a primary found through Sentinel, or a Redis Cluster.

URL forms (docs/configuration.md has the full table):

- `redis://`, `rediss://`, `unix://`: one server, parsed by redis-py itself;
- `redis+sentinel://[user:pass@]host:port[,host:port...]/service[/db]`
  (`rediss+sentinel://` for TLS): the primary of `service`, asked of the
  sentinels; the user and password are the primary's, the sentinels' own come
  from the `sentinel_username` and `sentinel_password` query parameters;
- `redis+cluster://[user:pass@]host:port[,host:port...]` (`rediss+cluster://`):
  a Redis Cluster found from these startup nodes.

Whatever the topology, redis-py never sends a command again by itself
(`Retry(NoBackoff(), 0)`, cluster included): a script may have run before the
connection broke, and an enqueue run twice would store a task twice. Only
redirections (MOVED, ASK, TRYAGAIN) are followed, as Redis did not run the
command that got one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import hiredis
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from task_queue.backends.base import reconnect_pause
from task_queue.errors import ConfigError
from task_queue.logs import get_logger

log = get_logger("task_queue.backends.redis")

Topology = Literal["server", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[Topology, bool]] = {
    "redis": ("server", False),
    "rediss": ("server", True),
    "unix": ("server", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_DEFAULT_PORTS: dict[Topology, int] = {"server": 6379, "sentinel": 26379, "cluster": 6379}
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})


@dataclass(frozen=True)
class RedisAddress:
    """What a REDIS_URL names, checked before anything connects."""

    url: str
    topology: Topology
    tls: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    username: str | None = None
    password: str | None = None
    service: str = ""
    db: int = 0
    sentinel_auth: dict[str, str] = field(default_factory=dict)


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"REDIS_URL={redacted(url)!r}: {why}")


def redacted(url: str) -> str:
    """The URL with its passwords replaced, fit for logs and error messages."""
    url = re.sub(r"(password=)[^&#]*", r"\1***", url)
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{hosts}"


def _node(url: str, text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, port = text[1:].partition("]")
        port = port.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not host:
        raise _bad(url, f"host missing in {text!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(url, f"port {port!r} of {host} is not a port number")
    return host, int(port)


def parse_redis_url(url: str) -> RedisAddress:
    """The parsed REDIS_URL; a ConfigError naming REDIS_URL when it cannot be used."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in _SCHEMES:
        forms = ", ".join(f"{name}://" for name in _SCHEMES)
        raise _bad(url, f"unknown scheme {scheme!r}: use one of {forms}")
    topology, tls = _SCHEMES[scheme]
    if topology == "server":
        try:  # redis-py's own parsing, so these URLs mean exactly what they meant before
            aioredis.connection.parse_url(url)
        except ValueError as exc:
            raise _bad(url, str(exc)) from None
        return RedisAddress(url, topology, tls)

    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, colon, password = userinfo.partition(":")
    if not hosts:
        raise _bad(url, "no host:port given")
    nodes = tuple(_node(url, text.strip(), _DEFAULT_PORTS[topology]) for text in hosts.split(","))
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    allowed = _SENTINEL_OPTIONS if topology == "sentinel" else frozenset()
    if unknown := sorted(set(options) - allowed):
        raise _bad(url, f"unknown option {unknown[0]!r} (allowed: {sorted(allowed) or 'none'})")
    segments = [unquote(s) for s in parts.path.split("/") if s]
    service, db_text = "", ""
    if topology == "sentinel":
        if not segments:
            raise _bad(url, "the Sentinel service name is missing: .../mymaster[/db]")
        service, *rest = segments
        db_text = rest[0] if len(rest) == 1 else ""
        if len(rest) > 1:
            raise _bad(url, "the path is /service_name[/db], nothing after")
    elif segments not in ([], ["0"]):
        raise _bad(url, "a Redis Cluster has database 0 only: no path after the nodes")
    if db_text and not db_text.isdigit():
        raise _bad(url, f"database {db_text!r} is not a number")
    return RedisAddress(
        url,
        topology,
        tls,
        nodes,
        username=unquote(username) or None,
        password=unquote(password) if colon else None,
        service=service,
        db=int(db_text or 0),
        sentinel_auth={k.removeprefix("sentinel_"): v for k, v in options.items()},
    )


class _HiredisConnection:
    """A connection that packs commands with hiredis's C packer, as redis-py's sync
    client does, and tells the pool whether it is fit for a command without a read.

    redis-py's asyncio connection packs in Python, about a microsecond per
    argument; a worker's finish of a few tasks has dozens of arguments, so
    packing cost more than the script took to run in Redis.
    """

    _parser: Any

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0].encode() if isinstance(args[0], str) else args[0]
        return [hiredis.pack_command((*name.split(), *args[1:]))]  # "SCRIPT LOAD" is two

    async def can_read_destructive(self) -> bool:
        """Whether this idle connection holds unread bytes or was closed: the pool
        then opens it again rather than let the next command read a stale answer.

        redis-py 6 finds out with a read under a zero timeout before every
        command, which costs an event-loop turn: about 60 µs of every submit's
        way to Redis on this 2-core VM. What it would learn is already in the
        parser's and the stream's buffers and in the stream's EOF and error
        (redis-py 8 checks the same way).
        """
        stream = self._parser._stream
        return bool(
            self._parser._reader.has_data()
            or stream._buffer
            or stream.at_eof()
            or stream.exception() is not None
        )


def _hiredis_class(base: type[Any]) -> type[Any]:
    return type(f"Hiredis{base.__name__}", (_HiredisConnection, base), {})


def use_hiredis(client: aioredis.Redis) -> None:
    """Make every connection `client` opens from now on a _HiredisConnection."""
    pool = client.connection_pool
    pool.connection_class = _hiredis_class(pool.connection_class)


class _Cluster(RedisCluster):
    """A RedisCluster whose connections pack with hiredis, and whose failure to learn
    the cluster's layout is a ConnectionError.

    redis-py raises a bare RedisClusterException when no startup node answers
    or the slots are not all covered (a node down, a failover under way): the
    same outage as a refused connection, and the backend treats it as one.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # RedisCluster takes no connection class: every node it learns is built from
        # this dict (shared with its NodesManager); the startup nodes exist already.
        hiredis_class = _hiredis_class(self.connection_kwargs["connection_class"])
        self.connection_kwargs["connection_class"] = hiredis_class
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = hiredis_class

    async def initialize(self) -> _Cluster:
        try:
            await super().initialize()
        except redis_errors.RedisClusterException as exc:
            raise redis_errors.ConnectionError(str(exc)) from exc
        return self


def _no_resend() -> Retry:
    return Retry(NoBackoff(), 0)


SWITCH_CHANNEL = "+switch-master"


class _FailoverWatch:
    """Moves a Sentinel-managed pool to the new primary as soon as a sentinel announces it.

    redis-py asks the sentinels only when it opens a connection, so the ones
    it holds keep talking to the old primary. That one goes on accepting
    writes until the sentinels demote it, about ten seconds later, and every
    task stored there meanwhile is gone when it resyncs from the new primary.
    On each sentinel's +switch-master (Jedis's sentinel pool listens for it too)
    every connection is closed at once, those in use included: a call in
    flight on the old primary fails, so it is never acknowledged and lost.
    """

    def __init__(self, sentinel: Sentinel, service: str, pool: SentinelConnectionPool) -> None:
        self._service = service
        self._pool = pool
        self._sentinel = sentinel
        self._listeners = [asyncio.create_task(self._listen(s)) for s in sentinel.sentinels]

    async def _listen(self, sentinel: aioredis.Redis) -> None:
        """Follow one sentinel's announcements; after any failure, subscribe anew after a
        reconnect pause, and ask for the primary once subscribed again."""
        failures = 0
        while True:
            try:
                async with sentinel.pubsub() as pubsub:
                    await pubsub.subscribe(SWITCH_CHANNEL)
                    async for message in pubsub.listen():
                        if message["type"] == "subscribe":  # a switch missed meanwhile
                            await self._move_to(await self._sentinel.discover_master(self._service))
                            failures = 0
                        elif message["type"] == "message":
                            name, _, _, host, port = message["data"].split()
                            if name == self._service:
                                await self._move_to((host, int(port)))
            except redis_errors.RedisError:
                failures += 1
                await asyncio.sleep(reconnect_pause(failures))

    async def _move_to(self, primary: tuple[str, int]) -> None:
        old, self._pool.master_address = self._pool.master_address, primary
        if old is not None and old != primary:
            log.warning(
                "sentinel named a new primary: connections to the old one closed",
                service=self._service,
                old=f"{old[0]}:{old[1]}",
                new=f"{primary[0]}:{primary[1]}",
            )
            await self._pool.disconnect()

    async def aclose(self) -> None:
        for listener in self._listeners:
            listener.cancel()
        await asyncio.gather(*self._listeners, return_exceptions=True)


class RedisConnection:
    """A client for one REDIS_URL, whatever the topology, and what the backend needs beside it.

    `client` is typed `redis.asyncio.Redis` for every topology: the backend uses
    only commands that `RedisCluster` offers with the same signatures (keyed
    commands, EVALSHA, SCRIPT LOAD, pipelines), and reaches a single server for
    the rest (CONFIG, INFO, SUBSCRIBE) through `server_for`.
    """

    def __init__(self, address: RedisAddress) -> None:
        self.address = address
        self._cluster: RedisCluster | None = None
        self._sentinel: Sentinel | None = None
        self._watch: _FailoverWatch | None = None
        self._servers: dict[str, aioredis.Redis] = {}
        self.client: aioredis.Redis
        auth = {"username": address.username, "password": address.password}
        common: dict[str, Any] = {"decode_responses": True, "retry": _no_resend()}
        self._node_kwargs = {**common, **auth, "ssl": address.tls}
        if address.topology == "server":
            self.client = aioredis.Redis.from_url(address.url, **common)
            use_hiredis(self.client)
        elif address.topology == "sentinel":
            sentinel_kwargs = {**common, "ssl": address.tls, **address.sentinel_auth}
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                address.nodes, sentinel_kwargs=sentinel_kwargs, **common, **auth, ssl=address.tls
            )
            self.client = self._sentinel.master_for(address.service, db=address.db)
            use_hiredis(self.client)
        else:
            self._cluster = _Cluster(
                startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
                decode_responses=True,
                retry=_no_resend(),
                username=address.username,
                password=address.password,
                ssl=address.tls,
            )
            self.client = cast(aioredis.Redis, self._cluster)

    async def open(self) -> None:
        """Reach the server (the primary, the cluster) once, a RedisError if it cannot be;
        behind Sentinel, then follow the sentinels' announcements of a new primary.

        redis-py's message for a primary no sentinel names prints each
        sentinel client with its settings, passwords included: replaced here.
        """
        try:
            await self.client.ping()
        except MasterNotFoundError:
            nodes = ",".join(f"{host}:{port}" for host, port in self.address.nodes)
            service = self.address.service
            raise MasterNotFoundError(
                f"no sentinel at {nodes} named a healthy primary for {service!r}"
            ) from None
        if self._sentinel is not None and self._watch is None:
            pool = cast(SentinelConnectionPool, self.client.connection_pool)
            self._watch = _FailoverWatch(self._sentinel, self.address.service, pool)

    async def server_for(self, key: str) -> aioredis.Redis:
        """A client of the one server that holds `key`: on a cluster, the primary of its slot.

        Commands without keys (CONFIG GET, INFO) and subscriptions need one
        server; the slot owner is the one whose settings matter to this prefix.
        Asked anew each call, so a subscription made after a failover follows
        the slot to its new primary.
        """
        if self._cluster is None:
            return self.client
        await self._cluster.initialize()
        node = self._cluster.get_node_from_key(key)
        if node is None:
            raise redis_errors.SlotNotCoveredError(f"no cluster node holds the slot of {key}")
        server = self._servers.get(node.name)
        if server is None:
            server = aioredis.Redis(host=node.host, port=int(node.port), **self._node_kwargs)
            self._servers[node.name] = server
        return server

    async def aclose(self) -> None:
        if self._watch is not None:
            await self._watch.aclose()
            self._watch = None
        clients: Sequence[Any] = [
            self.client,
            *self._servers.values(),
            *(self._sentinel.sentinels if self._sentinel else []),
        ]
        for client in clients:
            await client.aclose()
        self._servers.clear()


def connect(url: str) -> RedisConnection:
    """A client for REDIS_URL, not yet connected; ConfigError when the URL cannot be used."""
    return RedisConnection(parse_redis_url(url))
