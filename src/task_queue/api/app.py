"""The FastAPI application factory."""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from task_queue import __version__
from task_queue.api import errors, routes, schemas
from task_queue.api.middleware import RequestLog
from task_queue.client import AsyncClient
from task_queue.config import Settings


def create_app(client: AsyncClient, settings: Settings) -> FastAPI:
    """An app serving `client`'s backend; whoever runs it opens and closes that backend."""
    app = FastAPI(
        title="task-queue",
        version=__version__,
        description=schemas.API_DESCRIPTION,
    )
    app.state.client = client
    app.state.settings = settings
    app.state.started = time.monotonic()
    errors.install(app)
    app.include_router(routes.router)
    schemas.add_request_schemas(app)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials="*" not in settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Location", "Retry-After", "X-Request-ID"],
    )
    app.add_middleware(RequestLog)
    return app
