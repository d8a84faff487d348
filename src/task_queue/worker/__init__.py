"""The worker process: a pool that runs tasks, and the small loops that keep it honest."""
