"""Built-in task types; importing this package registers them in the default registry."""

from task_queue.processors import emails, images, webhooks

__all__ = ["emails", "images", "webhooks"]
