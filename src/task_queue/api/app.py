"""The FastAPI application factory."""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from task_queue import __version__
from task_queue.api import dashboard, errors, routes, schemas
from task_queue.api.guard import Guard
from task_queue.api.middleware import RequestLog
from task_queue.client import AsyncClient
from task_queue.config import Settings
from task_queue.metrics import Metrics


def create_app(client: AsyncClient, settings: Settings, metrics: Metrics) -> FastAPI:
    """An app serving `client`'s backend; whoever runs it opens and closes that backend.

    Loads the deferred task types first: their first submits would otherwise wait
    for the imports (a worker, which may never run them, does not).
    """
    client.registry.load_deferred()
    app = FastAPI(
        title="task-queue",
        version=__version__,
        description=schemas.API_DESCRIPTION,
    )
    app.state.client = client
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.started = time.monotonic()
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(routes.root)
    app.include_router(dashboard.router)
    schemas.add_request_schemas(app)
    # The last added runs first: RequestLog sees every answer, CORS decorates the
    # Guard's 401 and 429 too and answers preflights before the Guard sees them.
    app.add_middleware(Guard, settings=settings, backend=client.backend)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        # Credentials only for origins named one by one: `*` with credentials would
        # let every site call the API with the user's cookies.
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=[
            "Location",
            "Retry-After",
            "X-Request-ID",
            "WWW-Authenticate",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
            "RateLimit-Policy",
        ],
    )
    app.add_middleware(RequestLog, metrics=metrics)
    return app
