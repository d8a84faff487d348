"""Submit an e-mail task to a running server (`make run`) and wait for its result.

.venv/bin/python examples/quickstart.py
"""

import os

import task_queue

URL = os.environ.get("TASK_QUEUE_URL", "http://localhost:8080")

with task_queue.HttpClient(URL) as client:
    task = client.submit(
        "email",
        {"recipient": "ada@example.com", "subject": "Hello", "body": "Sent through task-queue."},
    )
    print(f"submitted {task.id}: {task.status}")
    done = client.wait(task.id, timeout=30)
    print(f"final status: {done.status}")
    print(f"result: {done.result}")
