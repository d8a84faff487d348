"""Built-in task types; importing this package registers them in the default registry."""

from task_queue.processors import emails

__all__ = ["emails"]
