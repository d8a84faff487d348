"""task-queue: a distributed task queue for Python."""
