"""How much a client may send and how long it may take: every cap of the HTTP server in one place.

Each one bounds what a single client can make a process hold (memory, a
connection, a socket slot) so a slow or hostile client cannot starve the rest.
docs/api.md explains each one and what it protects.
"""

from __future__ import annotations

# A request body over this is refused with 413 before it is read whole.
MAX_BODY_BYTES = 1024 * 1024
# The request line and headers together; over it, 431 and the connection closes.
MAX_HEAD_BYTES = 64 * 1024
# From a connection's first byte (or its previous response) to the end of the
# headers: a client sending headers byte by byte is cut off after this.
HEAD_TIMEOUT_SECONDS = 10.0
# Reading the whole body once the headers are in; over it, 408.
BODY_TIMEOUT_SECONDS = 30.0
# An idle keep-alive connection is closed after this (uvicorn's timeout_keep_alive).
KEEP_ALIVE_SECONDS = 5
# Open connections per process; the next one is answered 503 and closed. Long
# polls each hold one, so this is far above WORKER_COUNT.
MAX_CONNECTIONS = 1024
# JSON nesting needs no cap of its own here: orjson refuses documents nested
# deeper than 1024 levels (400), a task's payload may nest
# client.MAX_PAYLOAD_DEPTH levels (422), and every other field is a scalar.
# ?wait= is capped at client.MAX_WAIT_SECONDS (422 above).

# Connections the kernel queues before the process accepts them.
BACKLOG = 2048
# Tasks in one batch submit (413 above).
MAX_BATCH = 1000
# Tasks in one page of GET /tasks (422 above).
MAX_LIST_LIMIT = 500
