"""Built-in task types. Each module registers its type in the default registry when
imported, which the registry does at the type's first lookup (see Registry)."""

BUILT_IN_TYPES = {
    "data_processing": "task_queue.processors.data",
    "email": "task_queue.processors.emails",
    "image_resize": "task_queue.processors.images",
    "webhook": "task_queue.processors.webhooks",
}
