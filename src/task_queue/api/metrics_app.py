"""The HTTP app of a `worker` process alone: GET /metrics on METRICS_PORT.

Kept apart from app.py so that a worker loads Starlette only, not FastAPI and
the API's routes, which took about a quarter of a second of its start-up.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from task_queue.backends.base import Backend
from task_queue.metrics import CONTENT_TYPE, Metrics


def create_metrics_app(backend: Backend, metrics: Metrics) -> Starlette:
    """GET /metrics alone: a worker's counters live in its own process."""

    async def scrape(request: Request) -> Response:
        return Response(await metrics.render(backend), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/metrics", scrape)])
