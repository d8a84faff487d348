"""A Redis backend: any number of API and worker processes on any machines share one queue.

Every change touching more than one key is one Lua script, kept in
`redis_scripts/*.lua` (the key layout and the ready-order encoding are
documented at the top of `lib.lua`), loaded with SCRIPT LOAD and run with
EVALSHA; redis-py loads a script again when Redis answers NOSCRIPT. Scripts keep
to moving tasks between structures and comparing tokens: transitions are
computed in Python by `Task` and handed over whole (one JSON field per task,
see redis_codec.py); scripts change only the few small fields a state change
needs, so their cost per task is a handful of commands whatever the payload.
`finish` is one call for every outcome of one event-loop tick: Python sends
each outcome and its cancelled variant and `finish.lua` picks one by the stored
task (the rule of `Task.settled_over`). Where another transition
depends on the stored task (cancel, requeue), Python reads the task with its
`rev`, computes, and `store.lua` writes only if `rev` is unchanged (else Python
reads and computes again), so no write is lost to a race.

Time comes from the injected clock and is passed into every script, never
read from Redis TIME, so tests move time instead of sleeping.

Every key of one prefix shares the hash tag `{prefix}`: on Redis Cluster a
prefix lives on one slot. That keeps listing and the global waiting bound
single-slot operations; deployments that outgrow one slot use several prefixes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import re
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.commands.core import AsyncScript

from task_queue._clock import Clock
from task_queue.backends import redis_codec as codec
from task_queue.backends.base import (
    Backend,
    IdleWorker,
    LeaseReport,
    Page,
    QueueStats,
    Submitted,
    TaskFilter,
    WorkerInfo,
    parse_cursor,
    reconnect_pause,
)
from task_queue.backends.redis_connect import RedisConnection, connect, redacted
from task_queue.errors import (
    BackendUnavailable,
    IdempotencyConflict,
    InvalidTransition,
    LeaseLost,
    QueueFull,
    TaskNotFound,
)
from task_queue.logs import get_logger
from task_queue.task import Task, TaskStatus, new_lease_token

log = get_logger("task_queue.backends.redis")

SCRIPTS = (
    "enqueue",
    "dequeue",
    "finish",
    "store",
    "progress",
    "heartbeat",
    "promote",
    "purge",
    "stats",
    "listing",
    "walk",
    "ratelimit",
    "unpark",
)
# Scripts whose calls of one tick become one call: each caller's arguments are a
# group of their own and the script answers one value per group.
MERGED = frozenset({"enqueue", "finish"})
# Scripts a client waits on (a submit, its HTTP rate limit): sent at once when the
# batcher is idle, and a tick of them sent in two halves when no other tick's are on
# their way. A worker's finishes keep gathering per tick, whole, even then: sent at
# once, a burst of finishes would cost Redis a script call more.
AT_ONCE = frozenset({"enqueue", "ratelimit"})
# A submit of this many tasks goes to Redis as a script call of its own, not merged
# into its tick's: its own work dwarfs a call's cost, and concurrent big submits
# then overlap, one caller building its batch while Redis stores another's.
OWN_CALL_TASKS = 64
# How long a parked worker may be handed tasks without parking again; it parks anew
# after every wait (at most IDLE_POLL_SECONDS), so this bounds what a worker that
# died while parked can be handed: those tasks come back when their lease expires.
PARK_SECONDS = 3.0
PROMOTE_BATCH = 1000  # tasks one script call promotes, so no call blocks Redis for long
# A purge decodes each task's document in Lua (its type and idempotency key live only
# there): a call takes PURGE_BATCH tasks (about 4 ms of Redis on the 2-core VM; 1,000
# took 14), and stops past PURGE_BYTES of documents, so big payloads or results cost
# more calls, not a long one (200 tasks of 500 KB held Redis for 0.36 s in one call).
PURGE_BATCH = 250
PURGE_BYTES = 1 << 20
LIST_CHUNK = 200  # tasks loaded per round trip while listing
# The most tasks of one status that listing reads from the status's own index, in
# one script call (an HMGET each but for pending: under 10 ms on a slow 2-core VM);
# above it, the status is common enough that walking every task finds a page soon.
LIST_BY_STATUS = 1_000
# A walk over every task (a list no index answers) looks at up to WALK_CALL tasks
# per walk.lua call when it filters there (an HMGET each, and an HGET of the
# document for a type, searching at most WALK_BYTES of them: a few ms), and at most
# WALK_BUDGET per list request. A request that spends its budget answers the matches
# found so far, fewer than asked or none, with a cursor to go on from, so no request
# walks a week of history (the dashboard asks every 2 s).
WALK_CALL = 1_000
WALK_BYTES = 2 << 20
WALK_BUDGET = 20_000
CAS_TRIES = 50  # reads-and-recomputes of one transition before giving up on contention

# Redis cannot be reached or cannot take writes (a replica after failover, a cluster
# that lost a slot's primary). Script errors are bugs and surface as they are.
_UNREACHABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.ClusterDownError,
    redis_errors.SlotNotCoveredError,
)


async def _answers(pipe: Any) -> list[Any]:
    """A pipeline's answers, each error in its place; a lost connection is raised.

    A cluster pipeline answers a lost connection per call instead of raising it.
    """
    answers: list[Any] = await pipe.execute(raise_on_error=False)
    if lost := next((a for a in answers if isinstance(a, _UNREACHABLE)), None):
        raise lost
    return answers


async def _answer(client: Any, command: Sequence[Any]) -> Any:
    """One command's answer, or its error as a pipeline would place it; a lost
    connection is raised."""
    try:
        return await client.execute_command(*command)
    except _UNREACHABLE:
        raise
    except redis_errors.ResponseError as exc:
        return exc


@dataclasses.dataclass(frozen=True, slots=True)
class _Lease:
    """One dequeue.lua call: its arguments, and how its answer becomes tasks."""

    worker_id: str
    at: float
    expires: float
    tokens: list[str]
    args: list[Any]

    def tasks(self, handed: Sequence[str], taken: Sequence[Any]) -> list[Task]:
        """The tasks handed to the worker while it was parked, then those leased here."""
        tasks = [codec.decode_handed(item, self.worker_id) for item in handed]
        tasks += [
            codec.leased(
                doc,
                progress,
                cancel,
                token=token,
                expires=self.expires,
                started=self.at,
                worker_id=self.worker_id,
            )
            for token, (doc, progress, cancel) in zip(self.tokens, taken, strict=False)
        ]
        return tasks


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMMENT = re.compile(r"--.*$", re.MULTILINE)  # no string in the scripts holds "--"
_DECLARES = re.compile(r"local (?:function ([A-Za-z0-9_]+)|([A-Za-z0-9_, ]+?) =)")


def _names(lua: str) -> set[str]:
    return set(_IDENTIFIER.findall(_COMMENT.sub("", lua)))


def _definitions(lib: str) -> tuple[str, list[tuple[set[str], str]]]:
    """lib.lua's opening comment, then its top-level definitions in order, each with
    the comment above it and the names it declares."""
    head: list[str] = []
    blocks: list[tuple[set[str], list[str]]] = []
    for line in lib.splitlines(keepends=True):
        declared = _DECLARES.match(line)
        if declared:
            lines = blocks[-1][1] if blocks else head
            comment = len(lines)  # the comment lines right above belong to this one
            while comment and lines[comment - 1].startswith("--"):
                comment -= 1
            names = declared[1] or declared[2]
            blocks.append(({n.strip() for n in names.split(",")}, [*lines[comment:], line]))
            del lines[comment:]
        else:
            (blocks[-1][1] if blocks else head).append(line)
    return "".join(head), [(names, "".join(lines)) for names, lines in blocks]


@functools.cache  # 13 scripts cost 3.5 ms to link; every backend open would pay it
def load_script(name: str) -> str:
    """A script's source with the helpers of lib.lua it reaches in front of it.

    Redis runs a script's whole source on every call, so every helper defined
    is a closure made, then collected, each time: all of lib.lua costs about
    39,000 instructions a call, an eighth of a lone submit's. A definition goes
    in when the script, or a definition that went in, names it.
    """
    folder = resources.files("task_queue.backends") / "redis_scripts"
    body = (folder / f"{name}.lua").read_text()
    head, definitions = _definitions((folder / "lib.lua").read_text())
    wanted, chosen = _names(body), []
    for names, text in reversed(definitions):  # a definition uses only those above it
        if names & wanted:
            chosen.append(text)
            wanted |= _names(text)
    return head + "".join(reversed(chosen)) + "\n" + body


# A script call waiting in the batcher: the script, its arguments, its caller's answer.
_Call = tuple[str, Sequence[Any], asyncio.Future[Any]]


class _Batcher:
    """Script calls made while others are on their way, sent to Redis together: one
    pipeline per event-loop tick (a lone call as a plain command).

    An AT_ONCE call made while the batcher is idle (nothing sent and unanswered,
    nothing gathered) is sent at once: waiting for the tick to end would cost a
    lone submit an event-loop turn and a task, about 50 µs of its way to Redis
    on this 2-core VM. A call made `ahead` is sent at once even when others
    gather. Any other call appends to `pending`; the first one of a tick starts
    a flush task, whose first step runs after every coroutine ready in this tick
    had its turn. The flush sends the calls as EVALSHAs in one non-transactional
    pipeline (each script stays atomic on its own; a tick of AT_ONCE calls with
    no other tick's on their way goes as two, see _flush) and hands every caller its
    own answer or its own error, so one caller's LeaseLost or script error
    touches no other. Calls of a MERGED script (whose arguments are independent
    groups, one answer per group) go as one call, which saves Redis a script
    invocation per task. Under load something is always on its way, so calls
    gather as they did before.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._pending: list[_Call] = []
        self._flushes: set[asyncio.Task[None]] = set()  # strong refs until done
        self._alone = 0  # calls sent at once and not yet answered

    async def call(self, name: str, args: Sequence[Any], *, ahead: bool = False) -> Any:
        if ahead or (
            name in AT_ONCE and not self._pending and not self._flushes and not self._alone
        ):
            return await self._send_alone(name, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((name, args, future))
        if len(self._pending) == 1:
            flush = asyncio.create_task(self._flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        return await future

    async def _send_alone(self, name: str, args: Sequence[Any]) -> Any:
        self._alone += 1
        try:
            [answer] = await self._backend._guard(lambda: self._run([(name, args)]))
        finally:
            self._alone -= 1
        if isinstance(answer, Exception):
            raise answer
        return answer[0] if name in MERGED else answer

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if len(batch) > 1 and len(self._flushes) == 1 and all(c[0] in AT_ONCE for c in batch):
            # Sent whole, the tick's callers would take turns with Redis as one
            # cohort: they build their calls while Redis idles, then wait while it
            # runs them all. In two halves on two connections, Redis runs the second
            # while this process takes the first's answers and those callers build
            # their next calls; the two cohorts then keep alternating (50 submitting
            # coroutines: about 1.5x the tasks/s, docs/benchmarks.md).
            half = len(batch) // 2
            await asyncio.gather(self._send(batch[:half]), self._send(batch[half:]))
        else:
            await self._send(batch)

    async def _send(self, batch: list[_Call]) -> None:
        calls: list[tuple[str, list[Any]]] = []
        places: list[tuple[int, int | None]] = []  # per caller: its call, its part of a merged one
        merged: dict[str, int] = {}  # name -> its call
        callers: Counter[str] = Counter()
        for name, args, _ in batch:
            if name in MERGED:
                if name not in merged:
                    merged[name] = len(calls)
                    calls.append((name, []))
                at = merged[name]
                places.append((at, callers[name]))
                callers[name] += 1
                calls[at][1].extend(args)
            else:
                places.append((len(calls), None))
                calls.append((name, list(args)))
        try:
            answers = await self._backend._guard(lambda: self._run(calls))
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # Redis unreachable, say: every caller gets the error
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (at, part), (*_, future) in zip(places, batch, strict=True):
            answer = answers[at]
            if future.done():  # the caller was cancelled
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer if part is None else answer[part])

    async def _run(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Answers in call order; calls answered NOSCRIPT (after a SCRIPT FLUSH or a
        Redis restart; the script did not run) are sent again once it is loaded."""
        backend = self._backend
        if len(calls) == 1:  # alone in its tick: a pipeline's bookkeeping costs ~25 µs
            answers = [await _answer(backend._client, backend._script_call(*calls[0]))]
        else:
            pipe = backend._client.pipeline(transaction=False)
            for name, args in calls:
                pipe.execute_command(*backend._script_call(name, args))
            answers = await _answers(pipe)
        missing = [i for i, a in enumerate(answers) if isinstance(a, redis_errors.NoScriptError)]
        if missing:
            for name in {calls[i][0] for i in missing}:
                await backend._client.script_load(backend._scripts[name].script)
            again = await self._run([calls[i] for i in missing])
            for i, answer in zip(missing, again, strict=True):
                answers[i] = answer
        return answers


class _Finals:
    """Hears of the tasks other processes make final, for this process's waits:
    finish.lua and store.lua PUBLISH their ids on P..finals, and one subscription,
    made by the first wait, hands them to Backend._made_final.

    Pub/sub is at most once: a notice published while the subscription is down (Redis
    restarting, a failover) is lost, so a wait still polls, and a notice only cuts its
    pause short.
    """

    def __init__(self, backend: RedisBackend) -> None:
        self._backend = backend
        self._reader: asyncio.Task[None] | None = None

    def listen(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        channel, failures = f"{self._backend._p}finals", 0
        while True:
            try:
                server = await self._backend._server()
                async with server.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(channel)
                    failures = 0
                    async for message in pubsub.listen():
                        self._backend._made_final(str(message["data"]).split("\n"))
                reason = "the subscription ended"
            except (BackendUnavailable, redis_errors.RedisError, OSError) as exc:
                reason = str(exc)
            failures += 1
            log.debug("no notices of final tasks for now: waits poll", error=reason)
            await asyncio.sleep(reconnect_pause(failures))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None


class RedisBackend(Backend):
    """Tasks in Redis, shared by every API and worker process that uses the same URL and prefix."""

    name = "redis"

    def __init__(
        self, url: str, *, clock: Clock | None = None, max_waiting: int = 1000, prefix: str = "tq"
    ) -> None:
        super().__init__(clock=clock, max_waiting=max_waiting)
        self.url = url
        self._shown_url = redacted(url)  # for messages and logs: no password in them
        self.prefix = prefix
        self._p = f"{{{prefix}}}:"
        self._counts = f"{self._p}counts"
        self._redis: aioredis.Redis | None = None
        self._connection: RedisConnection | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._batcher = _Batcher(self)
        self._finals = _Finals(self)
        # run_at of the first delayed task, as the last dequeue that found nothing saw
        # it: a wait for work ends by then (promotion happens in the next dequeue).
        self._next_due: float | None = None

    # -- plumbing -------------------------------------------------------------------

    @property
    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            raise BackendUnavailable(f"Redis backend {self._shown_url} is not open")
        return self._redis

    async def _guard(self, call: Callable[[], Any]) -> Any:
        """Run one Redis call; a connection failure becomes BackendUnavailable.

        Typed Any: redis-py annotates its commands as sync-or-async unions.
        """
        try:
            return await call()
        except _UNREACHABLE as exc:
            raise BackendUnavailable(f"Redis at {self._shown_url} is unavailable: {exc}") from exc

    async def _script(self, name: str, *args: Any) -> Any:
        script, prefix = self._scripts[name], self._p
        return await self._guard(lambda: script(keys=[self._counts], args=[prefix, *args]))

    async def _load(self, task_id: str) -> tuple[Task, str] | None:
        """The stored task and its rev, or None."""
        key = f"{self._p}task:{task_id}"
        raw: dict[str, str] = await self._guard(lambda: self._client.hgetall(key))
        return (codec.decode(raw), raw.get("rev", "0")) if raw else None

    async def _load_many(self, ids: Sequence[str]) -> list[Task]:
        async def fetch() -> list[dict[str, str]]:
            pipe = self._client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(f"{self._p}task:{task_id}")
            result: list[dict[str, str]] = await pipe.execute()
            return result

        return [codec.decode(raw) for raw in await self._guard(fetch) if raw] if ids else []

    async def _store(self, task: Task, rev: str, *, bounded: bool = False) -> str:
        limit = str(self.max_waiting) if bounded else ""
        args = codec.store_args(task, rev, new_lease_token(), limit)
        return str(await self._script("store", *args))

    def _full(self, waiting: int | str) -> QueueFull:
        return QueueFull(f"queue holds {waiting} waiting tasks (limit {self.max_waiting})")

    # -- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        if self._redis is not None:
            return
        # Never resends a command by itself (see redis_connect): callers decide.
        connection = connect(self.url)
        client = connection.client
        try:
            await connection.open()
        except redis_errors.RedisError as exc:
            await connection.aclose()
            raise BackendUnavailable(f"cannot reach Redis at {self._shown_url}: {exc}") from exc
        self._connection, self._redis = connection, client
        self._scripts = {name: client.register_script(load_script(name)) for name in SCRIPTS}
        # Loaded now, so a broken script fails start-up rather than the first submit;
        # after a SCRIPT FLUSH or a Redis restart redis-py loads them again on NOSCRIPT.
        for script in self._scripts.values():
            await self._guard(functools.partial(client.script_load, script.script))
        await self._warn_if_lossy()

    async def _warn_if_lossy(self) -> None:
        """Say loudly at start-up when this Redis may drop acknowledged tasks.

        An evicting maxmemory-policy deletes task keys under memory pressure;
        without AOF a restart loses the queue. Managed Redis may refuse CONFIG:
        then nothing can be checked and nothing is said.
        """
        server = await self._server()
        try:
            config: dict[str, str] = {}
            for name in ("maxmemory-policy", "appendonly"):
                config |= await self._guard(functools.partial(server.config_get, name))
        except redis_errors.ResponseError:
            return
        policy = config.get("maxmemory-policy", "noeviction")
        if policy != "noeviction":
            log.warning("redis may evict task keys", maxmemory_policy=policy, url=self._shown_url)
        if config.get("appendonly") != "yes":
            log.warning("redis persistence (appendonly) is off: a restart loses the queue")

    async def _server(self) -> aioredis.Redis:
        """The one server holding this prefix, for commands without keys (CONFIG, INFO)."""
        if self._connection is None:
            raise BackendUnavailable(f"Redis backend {self._shown_url} is not open")
        server: aioredis.Redis = await self._guard(
            functools.partial(self._connection.server_for, self._counts)
        )
        return server

    async def close(self) -> None:
        await self._finals.aclose()
        if self._connection is not None:
            await self._connection.aclose()
            self._connection = self._redis = None

    async def ping(self) -> dict[str, Any]:
        server = await self._server()
        info: dict[str, Any] = await self._guard(lambda: server.info("server"))
        return {"type": self.name, "prefix": self.prefix, "version": info.get("redis_version")}

    # -- writes ---------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[Task]) -> list[Submitted]:
        if not tasks:
            return []
        # All or none for this call; the small calls of one tick share one script call.
        now, stamp = repr(self.clock.now()), new_lease_token()
        args = [self.max_waiting, now, stamp, len(tasks), *codec.enqueue_args(tasks)]
        if len(tasks) >= OWN_CALL_TASKS:
            [answer] = await self._script("enqueue", *args)
        else:
            answer = await self._batcher.call("enqueue", args)
        if answer == 1:  # every task is new; _make skips a NamedTuple's Python __new__
            return list(map(Submitted._make, zip(tasks, itertools.repeat(True))))
        kind, detail = answer
        if kind == "conflict":
            raise IdempotencyConflict(
                f"idempotency key {detail!r} was used with a different request"
            )
        if kind == "full":
            raise self._full(detail)
        return [
            Submitted(codec.decode(codec.pairs(first)), False) if first else Submitted(task, True)
            for task, first in zip(tasks, detail, strict=True)
        ]

    async def dequeue(
        self,
        queues: Sequence[str],
        limit: int,
        *,
        worker_id: str,
        lease_seconds: float,
        idle: bool = False,
    ) -> list[Task]:
        if limit <= 0:
            return []
        lease = self._lease(queues, limit, worker_id, lease_seconds, parked_until="")
        # An idle worker's dequeue goes ahead of the finishes gathered in its tick,
        # which freed its slots: Redis answers it first and runs them while the
        # worker starts the new tasks. A busy worker's gathers with them: it has
        # tasks to run meanwhile, and fewer, bigger dequeues cost it less.
        handed, taken, due = await self._batcher.call("dequeue", lease.args, ahead=idle)
        self._next_due = codec.score_moment(due) if due else None
        return lease.tasks(handed, taken)

    def _lease(
        self,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_seconds: float,
        *,
        parked_until: str,
    ) -> _Lease:
        now = self.clock.now()
        names = list(dict.fromkeys(queues))  # a name twice would pop a stale head
        tokens = [new_lease_token() for _ in range(limit)]
        expires = now + lease_seconds
        args = [
            *codec.moment_args(now),
            *codec.moment_args(expires),
            *(worker_id, limit, new_lease_token(), repr(lease_seconds), parked_until),
            *(len(names), *names, *tokens),
        ]
        return _Lease(worker_id, now, expires, tokens, args)

    def _script_call(self, name: str, args: Sequence[Any]) -> tuple[Any, ...]:
        # EVALSHA as a plain command, not evalsha(): redis-py blocks that on cluster
        # pipelines, yet routes the command itself by its one key.
        return ("EVALSHA", self._scripts[name].sha, 1, self._counts, self._p, *args)

    async def finish(self, task: Task, token: str) -> None:
        """finish.lua (token check + `Task.settled_over`), in one call with the other
        finishes of this tick."""
        stored = await self._batcher.call("finish", codec.finish_args(task, token))
        if not stored:
            raise LeaseLost(f"task {task.id} is no longer leased with this token")
        # Even a retry may be stored final (a cancel asked meanwhile wins, in Lua): a
        # wait woken for nothing costs one read.
        self._made_final([task.id])

    async def _transition(
        self, task_id: str, change: Callable[[Task], Task], *, bounded: bool = False
    ) -> Task:
        """Read, compute with `change` (which may raise), compare-and-set; again on a race."""
        for _ in range(CAS_TRIES):
            found = await self._load(task_id)
            if found is None:
                raise TaskNotFound(task_id)
            new = change(found[0])
            outcome = await self._store(new, found[1], bounded=bounded)
            if outcome == "ok":
                if new.status.is_final:
                    self._made_final([task_id])
                return new
            if outcome == "gone":
                raise TaskNotFound(task_id)
            if outcome == "full":
                raise self._full(await self._waiting())
        raise BackendUnavailable(f"task {task_id} kept changing; change not stored")

    async def cancel(self, task_id: str) -> Task:
        now = self.clock.now()

        def change(task: Task) -> Task:
            if task.status.is_final:
                raise InvalidTransition(f"task {task_id} is {task.status} already")
            if task.status is TaskStatus.RUNNING:
                return task.cancel_request(now)
            return task.cancelled(now)

        return await self._transition(task_id, change)

    async def requeue(self, task_id: str) -> Task:
        now = self.clock.now()

        def change(task: Task) -> Task:
            if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise InvalidTransition(
                    f"only failed or cancelled tasks can be retried: {task.status}"
                )
            return task.requeued(now)

        return await self._transition(task_id, change, bounded=True)

    async def report_progress(self, task_id: str, token: str, progress: Any) -> None:
        value = orjson.dumps(progress)
        stored = await self._script("progress", task_id, token, value, repr(self.clock.now()))
        if not stored:
            raise LeaseLost(f"task {task_id} is no longer leased with this token")

    async def promote_due(self) -> int:
        now, total = codec.moment_args(self.clock.now()), 0
        while True:
            count = int(await self._script("promote", *now, PROMOTE_BATCH, new_lease_token()))
            total += count
            if count < PROMOTE_BATCH:
                return total

    async def heartbeat(
        self, worker: WorkerInfo, leases: Mapping[str, str], lease_seconds: float
    ) -> LeaseReport:
        now = self.clock.now()
        worker.last_heartbeat = now
        held = [item for pair in leases.items() for item in pair]
        doc = orjson.dumps(dataclasses.asdict(worker))
        lost, cancel = await self._script(
            "heartbeat", worker.id, doc, *codec.moment_args(now + lease_seconds), *held
        )
        return LeaseReport(frozenset(lost), frozenset(cancel))

    async def remove_worker(self, worker_id: str) -> None:
        await self._guard(lambda: self._client.hdel(f"{self._p}workers", worker_id))

    async def purge_finished(self, before: float) -> int:
        total, until = 0, codec.moment_score(before)
        while True:
            count, bounded = await self._script("purge", until, PURGE_BATCH, PURGE_BYTES)
            total += int(count)
            if not bounded:
                return total

    # -- reads ----------------------------------------------------------------------

    async def get(self, task_id: str) -> Task:
        found = await self._load(task_id)
        if found is None:
            raise TaskNotFound(task_id)
        return found[0]

    async def expired(self, limit: int) -> list[Task]:
        now = codec.moment_score(self.clock.now())
        key = f"{self._p}leased"
        ids: list[str] = await self._guard(
            lambda: self._client.zrangebyscore(key, "-inf", now, start=0, num=limit)
        )
        return await self._load_many(ids)

    async def workers(self) -> list[WorkerInfo]:
        now = self.clock.now()
        return [worker for worker in await self._all_workers() if worker.alive_at(now)]

    async def purge_workers(self) -> int:
        """A heartbeat that lands between the read and the delete is lost; that worker's
        next one (a third of a lease later) registers it again."""
        now = self.clock.now()
        dead = [worker.id for worker in await self._all_workers() if not worker.alive_at(now)]
        key = f"{self._p}workers"
        return int(await self._guard(lambda: self._client.hdel(key, *dead))) if dead else 0

    async def _all_workers(self) -> list[WorkerInfo]:
        raw: dict[str, str] = await self._guard(lambda: self._client.hgetall(f"{self._p}workers"))
        return [WorkerInfo(**orjson.loads(doc)) for doc in raw.values()]

    async def _waiting(self) -> int:
        return (await self.stats()).waiting

    async def stats(self) -> QueueStats:
        horizon = codec.moment_score(self.clock.now() - 60.0)
        statuses, flat, completed, failed, queues = await self._script("stats", horizon)
        by_status = {k: int(v) for k, v in codec.pairs(statuses).items() if int(v)}
        counts = codec.pairs(flat)
        by_type = {k[5:]: int(v) for k, v in counts.items() if k.startswith("type:") and int(v)}
        return QueueStats(
            waiting=sum(by_status.get(s, 0) for s in ("pending", "scheduled", "retrying")),
            by_status=by_status,
            by_type=by_type,
            processed=int(counts.get("processed", 0)),
            failed=int(counts.get("failed", 0)),
            finished_last_minute=int(completed) + int(failed),
            pending_by_queue={k: int(v) for k, v in codec.pairs(queues).items()},
        )

    async def wait_for_work(self, timeout: float, worker: IdleWorker) -> list[Task]:
        """Park the worker and block on its inbox: a task that becomes pending is handed
        to it there, leased already, in the one hop from the submit (lib.lua's feed).

        The park is dequeue.lua with a parked-until, sent in one pipeline with the
        BLPOP: a task that arrived since the caller's last dequeue is taken by the
        park itself, which then ends the BLPOP at once. The wait ends early when a
        delayed task falls due, so the next dequeue promotes it.
        """
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - self.clock.now())
        if timeout < 0.001 or worker.free_slots <= 0:  # BLPOP would take 0 as "forever"
            return []
        until = repr(self.clock.now() + PARK_SECONDS)
        worker_id = worker.worker_id
        lease = self._lease(
            worker.queues, worker.free_slots, worker_id, worker.lease_seconds, parked_until=until
        )

        async def park_and_wait() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.execute_command(*self._script_call("dequeue", lease.args))
            pipe.blpop([f"{self._p}inbox:{worker_id}"], timeout)
            return await _answers(pipe)

        parked, popped = await self._guard(park_and_wait)
        if isinstance(popped, Exception):
            raise popped
        tasks = [codec.decode_handed(popped[1], worker_id)] if popped and popped[1] else []
        if isinstance(parked, redis_errors.NoScriptError):  # Redis restarted: nothing parked
            source = self._scripts["dequeue"].script
            await self._guard(functools.partial(self._client.script_load, source))
        elif isinstance(parked, Exception):
            raise parked
        else:
            self._next_due = codec.score_moment(parked[2]) if parked[2] else None
            tasks = lease.tasks(parked[0], parked[1]) + tasks
        return tasks

    async def stop_waiting(self, worker_id: str) -> list[Task]:
        handed = await self._script("unpark", worker_id)
        return [codec.decode_handed(item, worker_id) for item in handed]

    async def until_final(self, task_id: str, timeout: float) -> None:
        self._finals.listen()
        await super().until_final(task_id, timeout)

    async def list_tasks(self, filter: TaskFilter, limit: int, cursor: str | None) -> Page:
        """Newest first by submit sequence; the cursor is the sequence to go on below.

        A status holding at most LIST_BY_STATUS tasks is read from its own index
        in one script call, so the dashboard's "failed" costs a read of the
        failed tasks, not a walk past a week of completed ones. Otherwise every
        task is walked, newest first, matching the filters in Redis (walk.lua),
        until the page is full or the walk's budget is spent: a page may then
        come short, or empty, with a cursor to go on from.
        """
        if limit <= 0:
            return Page([], None)
        below = None if cursor is None else parse_cursor(cursor)
        few = None if filter.status is None else await self._of_status(filter, below, limit)
        stretches = self._walk(filter, below, limit) if few is None else _whole(few)
        found: list[tuple[Task, int]] = []
        reached: int | None = None
        async with contextlib.aclosing(stretches):
            async for stretch, lowest in stretches:
                reached = lowest
                for at in range(0, len(stretch), LIST_CHUNK):
                    chunk = stretch[at : at + LIST_CHUNK]
                    tasks = {t.id: t for t in await self._load_many([i for i, _ in chunk])}
                    for task_id, seq in chunk:
                        task = tasks.get(task_id)
                        if task is not None and _matches(task, filter):
                            found.append((task, seq))
                    if len(found) > limit:
                        page = found[:limit]
                        return Page([task for task, _ in page], str(page[-1][1]))
        return Page([task for task, _ in found], None if reached is None else str(reached))

    async def _walk(
        self, filter: TaskFilter, below: int | None, limit: int
    ) -> AsyncGenerator[tuple[list[tuple[str, int]], int | None], None]:
        """The tasks below sequence `below` that may match `filter`, newest first, a
        stretch at a time, each with the lowest sequence the walk has looked at:
        None once it passed the oldest task. It stops there or at WALK_BUDGET."""
        status = "" if filter.status is None else filter.status.value
        kind, queue = filter.type or "", filter.queue or ""
        named = codec.type_text(kind) if kind else ""
        # Unfiltered, every task looked at matches: the page and one more will do.
        count = WALK_CALL if status or queue or kind else limit + 1
        looked_at = 0
        while True:
            bound = "" if below is None else below
            args = (status, queue, kind, named, bound, count, WALK_BYTES)
            flat = await self._script("walk", *args)
            ended, lowest = flat[0] == 1, int(flat[1])
            looked_at += count
            matches = _sequenced(flat[2:])
            if ended:
                yield matches, None
                return
            yield matches, lowest
            if looked_at >= WALK_BUDGET:
                return
            below = lowest

    async def _of_status(
        self, filter: TaskFilter, below: int | None, limit: int
    ) -> list[tuple[str, int]] | None:
        """The tasks of `filter.status` (and queue) below sequence `below`, newest first,
        from the status's own index; None when it holds more than LIST_BY_STATUS.

        All of them when a type is asked for, which only a task's document holds;
        else the page and one more.
        """
        count = LIST_BY_STATUS if filter.type else limit + 1
        bound = "" if below is None else below
        flat = await self._script(
            "listing", filter.status, filter.queue or "", bound, LIST_BY_STATUS, count
        )
        return None if flat is None else _sequenced(flat)

    async def take_token(self, client: str, rate: float, burst: float) -> tuple[bool, float, float]:
        """Take one token from `client`'s bucket, shared by every process on this prefix.

        Not part of Backend: only the HTTP API's rate limiter calls it. `client`
        names the bucket and must not be a secret (hash API keys first). The
        answer: whether a token was taken, the tokens left, and the seconds until
        the next one (0 when taken). Rides in the tick's pipeline like every script.
        Unlike the others, the script reads Redis TIME instead of the injected
        clock: processes on several machines age one bucket (see ratelimit.lua).
        """
        taken, tokens, wait = await self._batcher.call("ratelimit", [client, rate, burst])
        return taken == 1, float(tokens), float(wait)


def _sequenced(flat: Sequence[str]) -> list[tuple[str, int]]:
    """A listing script's {id1, seq1, id2, seq2, ...} as (id, sequence) pairs."""
    return [(task_id, int(seq)) for task_id, seq in codec.pairs(flat).items()]


async def _whole(
    few: list[tuple[str, int]],
) -> AsyncGenerator[tuple[list[tuple[str, int]], int | None], None]:
    """An index's whole answer as the one stretch of a walk that reached the end."""
    yield few, None


def _matches(task: Task, filter: TaskFilter) -> bool:
    return (
        (filter.status is None or task.status is filter.status)
        and (filter.type is None or task.type == filter.type)
        and (filter.queue is None or task.queue == filter.queue)
    )
