"""Built-in task types; importing this package registers them in the default registry."""

from task_queue.processors import data, emails, images, webhooks

__all__ = ["data", "emails", "images", "webhooks"]
