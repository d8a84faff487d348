"""Queue backends behind one interface (`base.Backend`); `create` picks one from settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from task_queue.errors import ConfigError

if TYPE_CHECKING:
    from task_queue._clock import Clock
    from task_queue.backends.base import Backend
    from task_queue.config import Settings


def create(settings: Settings, *, clock: Clock | None = None) -> Backend:
    """The backend the settings ask for, not yet opened."""
    kind = settings.backend
    if kind == "memory":
        from task_queue.backends.memory import MemoryBackend

        return MemoryBackend(clock=clock, max_waiting=settings.queue_size)
    if kind == "sqlite":
        from task_queue.backends.sqlite import SQLiteBackend

        return SQLiteBackend(settings.database_path, clock=clock, max_waiting=settings.queue_size)
    if kind == "redis":
        from task_queue.backends.redis import RedisBackend

        if not settings.redis_url:
            raise ConfigError("QUEUE_BACKEND=redis needs REDIS_URL, e.g. redis://localhost:6379/0")
        return RedisBackend(settings.redis_url, clock=clock, max_waiting=settings.queue_size)
    raise ConfigError(f"QUEUE_BACKEND={kind!r}: this backend is not available in this release")
